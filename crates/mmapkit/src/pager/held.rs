//! The pins the calling thread holds, so that a call that would wait for the thread itself
//! — an exclusive pin on a page it has pinned, a read of a page it pins exclusively, a flush
//! of a region where it holds an exclusive pin — fails with `WouldBlock` instead of waiting
//! for ever.
//!
//! Guards stay on the thread that took them (neither [`SharedPage`](super::SharedPage) nor
//! [`ExclusivePage`](super::ExclusivePage) is `Send`), so each entry is dropped where it was
//! made. A guard that is forgotten (`mem::forget`) keeps its entry, as its pin stays.

use std::cell::RefCell;

use crate::{Error, ErrorKind};

/// One pin of this thread: the region's id, the page, and whether it is the exclusive pin.
type Held = (u64, usize, bool);

thread_local! {
    static HELD: RefCell<Vec<Held>> = const { RefCell::new(Vec::new()) };
}

/// Notes a pin this thread took. During the thread's teardown (a guard kept in another
/// thread-local) the record is gone and nothing is noted: no self-wait can follow.
pub(super) fn note(region: u64, page: usize, exclusive: bool) {
    let _ = HELD.try_with(|held| held.borrow_mut().push((region, page, exclusive)));
}

/// Forgets the pins this thread noted in `region`, which has ended (its forgotten guards'
/// pins were dropped with it).
pub(super) fn forget_region(region: u64) {
    let _ = HELD.try_with(|held| held.borrow_mut().retain(|entry| entry.0 != region));
}

/// Forgets one pin this thread is dropping (also during the thread's teardown, when the
/// record may already be gone).
pub(super) fn release(region: u64, page: usize, exclusive: bool) {
    let _ = HELD.try_with(|held| {
        let mut held = held.borrow_mut();
        if let Some(at) = held
            .iter()
            .rposition(|&entry| entry == (region, page, exclusive))
        {
            held.swap_remove(at);
        }
    });
}

/// The strongest pin this thread holds on `page`: `Some(true)` exclusive, `Some(false)`
/// shared.
fn pinned_here(region: u64, page: usize) -> Option<bool> {
    HELD.try_with(|held| {
        held.borrow()
            .iter()
            .filter(|entry| entry.0 == region && entry.1 == page)
            .map(|entry| entry.2)
            .max()
    })
    .ok()
    .flatten()
}

/// Whether this thread holds an exclusive pin in the region.
pub(super) fn holds_exclusive(region: u64) -> bool {
    HELD.try_with(|held| {
        held.borrow()
            .iter()
            .any(|entry| entry.0 == region && entry.2)
    })
    .unwrap_or(false)
}

/// Fails if taking `page` (`exclusive`ly, or to read it) would wait for a pin of this
/// thread's own: an exclusive pin needs every other pin gone, a read or a shared pin needs
/// the exclusive one gone.
pub(super) fn check_self_wait(
    operation: &'static str,
    region: u64,
    page: usize,
    exclusive: bool,
) -> crate::Result<()> {
    let conflict = match pinned_here(region, page) {
        Some(true) => true,
        Some(false) => exclusive,
        None => false,
    };
    if !conflict {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::WouldBlock,
        operation,
        format!("this thread holds a pin on page {page} that the call would wait for"),
    )
    .with_hint("drop the page's guard first"))
}
