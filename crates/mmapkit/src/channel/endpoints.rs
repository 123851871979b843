//! Who is attached to a channel: a table of up to 30 endpoints in the control block, so that
//! each side can tell whether the other is still there.
//!
//! ```text
//! 320  u32 senders ever attached   324  u32 receivers ever attached   328  8 bytes reserved
//! 336  30 entries of 16 bytes: u64 state = pid (bits 32-63) | generation (2-31) | role (0-1),
//!      u64 process start time (0 until written)
//! ```
//!
//! An endpoint claims an entry with one compare-and-swap of the state word, which records the
//! claiming process and bumps the generation; every later change of the entry changes the
//! generation too, so a stale view of an entry can never be swapped in twice (no ABA). The
//! entry is freed when the endpoint is dropped — by the process that claimed it only, so a
//! child that inherited an endpoint across fork does not free its parent's.
//!
//! A process killed with SIGKILL frees nothing, so "attached" also means "its process is alive"
//! (pid and start time, see [`ProcessIdentity`]; a pid alone until the start time is written);
//! that check reads /proc and is made only on slow paths. A side is *disconnected* once it has
//! had a peer — one attached when it attached, or one that attached since — and no peer is
//! left. An endpoint that has never had a peer (a receiver started before any sender, or
//! re-attached after the last one left) waits instead.
//!
//! Single-producer/single-consumer channels use fixed entries (0 for the sender, 1 for the
//! receiver), so that two processes cannot both become the sender; an entry whose process died
//! is taken over.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::control::{Control, ENDPOINTS_OFFSET};
use crate::error::{Error, ErrorKind, Result};
use crate::shm::ProcessIdentity;

const ENTRIES: usize = 30;
const FIRST_ENTRY: usize = ENDPOINTS_OFFSET + 16;
const FREE: u64 = 0;
const ROLE_BITS: u64 = 0b11;
const GENERATION_BITS: u64 = ((1 << 30) - 1) << 2;

/// Which side an endpoint is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Sender = 1,
    Receiver = 2,
}

impl Role {
    fn other(self) -> Role {
        match self {
            Role::Sender => Role::Receiver,
            Role::Receiver => Role::Sender,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Role::Sender => "sender",
            Role::Receiver => "receiver",
        }
    }
}

/// The next state of an entry whose current state is `state`: `role` held by `pid`, with the
/// generation moved on.
fn next_state(state: u64, pid: u32, role: u64) -> u64 {
    let generation = (state & GENERATION_BITS).wrapping_add(1 << 2) & GENERATION_BITS;
    u64::from(pid) << 32 | generation | role
}

fn role_of(state: u64) -> u64 {
    state & ROLE_BITS
}

fn pid_of(state: u64) -> u32 {
    (state >> 32) as u32
}

/// An attached endpoint; on drop it detaches and wakes everyone waiting on the channel, so
/// that the other side learns at once.
#[derive(Debug)]
pub(super) struct Endpoint<'c> {
    state_word: &'c AtomicU64,
    /// The state this endpoint wrote when it claimed its entry.
    claimed: u64,
    role: Role,
    /// For channels with one endpoint per side: the entry the peer uses.
    peer_entry: Option<usize>,
    /// For channels with one endpoint per side: the peer entry's state word, for a check cheap
    /// enough to make on every send.
    peer_state: Option<&'c AtomicU64>,
    /// The peer side's attach counter, and its value when this endpoint attached.
    peer_attaches: &'c AtomicU32,
    baseline: u32,
    /// Whether a peer was attached when this endpoint attached.
    had_peer: bool,
    control: Control<'c>,
    doorbell: Option<&'c OwnedFd>,
}

impl Drop for Endpoint<'_> {
    fn drop(&mut self) {
        // Only the claiming process frees the entry (not a child that inherited it by fork),
        // and only if nobody has taken it over since.
        if pid_of(self.claimed) == ProcessIdentity::current().pid {
            let freed = next_state(self.claimed, 0, FREE);
            let _ = self.state_word.compare_exchange(
                self.claimed,
                freed,
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
            self.control.wake_everyone(self.doorbell);
        }
    }
}

struct Entry<'c> {
    state: &'c AtomicU64,
    start: &'c AtomicU64,
}

fn entry<'c>(control: &Control<'c>, index: usize) -> Result<Entry<'c>> {
    let offset = FIRST_ENTRY + index * 16;
    Ok(Entry {
        state: control.segment.atomic(offset)?,
        start: control.segment.atomic(offset + 8)?,
    })
}

fn attach_counter<'c>(control: &Control<'c>, role: Role) -> Result<&'c AtomicU32> {
    control
        .segment
        .atomic(ENDPOINTS_OFFSET + (role as usize - 1) * 4)
}

impl Entry<'_> {
    /// The process holding the entry whose state is `state`.
    fn owner(&self, state: u64) -> ProcessIdentity {
        ProcessIdentity {
            pid: pid_of(state),
            start_time: self.start.load(Ordering::Acquire),
        }
    }

    /// Claims the entry for `role` if it is free, or held (in any role) by a process that
    /// died. Returns the state written.
    fn claim(&self, role: Role, me: ProcessIdentity) -> Option<u64> {
        let current = self.state.load(Ordering::Acquire);
        let claimable = role_of(current) == FREE || !self.owner(current).is_alive();
        let claimed = next_state(current, me.pid, role as u64);
        (claimable
            && self
                .state
                .compare_exchange(current, claimed, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok())
        .then_some(claimed)
    }
}

/// Zeroes the table (the creator, before publishing the segment).
pub(super) fn init(control: &Control<'_>) -> Result<()> {
    for role in [Role::Sender, Role::Receiver] {
        attach_counter(control, role)?.store(0, Ordering::Relaxed);
    }
    for index in 0..ENTRIES {
        let entry = entry(control, index)?;
        entry.state.store(FREE, Ordering::Relaxed);
        entry.start.store(0, Ordering::Relaxed);
    }
    Ok(())
}

/// Entries of the sender and the receiver of a single-producer, single-consumer channel.
pub(super) const FIXED_SENDER: usize = 0;
pub(super) const FIXED_RECEIVER: usize = 1;

/// Attaches an endpoint of `role`: in its fixed entry when `fixed` (one endpoint per side),
/// else in any free entry.
pub(super) fn attach<'c>(
    control: &Control<'c>,
    role: Role,
    fixed: bool,
    doorbell: Option<&'c OwnedFd>,
) -> Result<Endpoint<'c>> {
    let (fixed_entry, peer_entry) = match (fixed, role) {
        (false, _) => (None, None),
        (true, Role::Sender) => (Some(FIXED_SENDER), Some(FIXED_RECEIVER)),
        (true, Role::Receiver) => (Some(FIXED_RECEIVER), Some(FIXED_SENDER)),
    };
    let candidates = match fixed_entry {
        Some(index) => index..index + 1,
        None => 0..ENTRIES,
    };
    let me = ProcessIdentity::current();
    for index in candidates {
        let entry = entry(control, index)?;
        let Some(claimed) = entry.claim(role, me) else {
            continue;
        };
        entry.start.store(me.start_time, Ordering::Release);
        attach_counter(control, role)?.fetch_add(1, Ordering::AcqRel);
        let peer_state = match peer_entry {
            Some(index) => Some(self::entry(control, index)?.state),
            None => None,
        };
        let peer_attaches = attach_counter(control, role.other())?;
        let baseline = peer_attaches.load(Ordering::Acquire);
        let mut had_peer = false;
        for index in 0..ENTRIES {
            had_peer |= role_of(self::entry(control, index)?.state.load(Ordering::Acquire))
                == role.other() as u64;
        }
        return Ok(Endpoint {
            state_word: entry.state,
            claimed,
            role,
            peer_entry,
            peer_state,
            peer_attaches,
            baseline,
            had_peer,
            control: *control,
            doorbell,
        });
    }
    Err(match fixed_entry {
        Some(_) => Error::new(
            ErrorKind::AlreadyExists,
            "attach",
            format!(
                "this single-{0} channel already has a live {0}",
                role.name()
            ),
        ),
        None => Error::new(
            ErrorKind::OutOfMemory,
            "attach",
            format!("all {ENTRIES} endpoint entries of this channel are in use"),
        ),
    })
}

impl Endpoint<'_> {
    /// Whether this endpoint has had a peer: one present at attach time, or one since.
    fn has_had_peer(&self) -> bool {
        self.had_peer || self.peer_attaches.load(Ordering::Acquire) != self.baseline
    }

    /// For one-endpoint-per-side channels: whether this endpoint had a peer and it detached
    /// (two loads; a killed peer is only noticed by [`peer_gone`]).
    pub(super) fn peer_detached(&self) -> bool {
        self.peer_state.is_some_and(|state| {
            role_of(state.load(Ordering::Relaxed)) == FREE && self.has_had_peer()
        })
    }
}

/// Whether the other side of `endpoint` is gone: it had a peer, and no entry of the peer's
/// role is left — or, with `check_processes`, none of those left belongs to a live process.
pub(super) fn peer_gone(
    control: &Control<'_>,
    endpoint: &Endpoint<'_>,
    check_processes: bool,
) -> Result<bool> {
    let peer = endpoint.role.other();
    if !endpoint.has_had_peer() {
        return Ok(false);
    }
    let entries = match endpoint.peer_entry {
        Some(index) => index..index + 1,
        None => 0..ENTRIES,
    };
    for index in entries {
        let entry = entry(control, index)?;
        let state = entry.state.load(Ordering::Acquire);
        if role_of(state) == peer as u64 && (!check_processes || entry.owner(state).is_alive()) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The error a disconnected endpoint reports.
pub(super) fn disconnected(operation: &'static str, endpoint: &Endpoint<'_>) -> Error {
    Error::new(
        ErrorKind::Disconnected,
        operation,
        format!(
            "every {} of this channel is gone",
            endpoint.role.other().name()
        ),
    )
}
