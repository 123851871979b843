//! Who is attached to a channel: a table of up to 30 endpoints in the control block, so that
//! each side can tell whether the other is still there.
//!
//! ```text
//! 320  u32 senders ever attached   324  u32 receivers ever attached   328  8 bytes reserved
//! 336  30 entries of 16 bytes: u32 role (0 free, 1 sender, 2 receiver, 3 being claimed),
//!      u32 pid, u64 process start time
//! ```
//!
//! An endpoint claims an entry when it attaches and frees it when dropped. A process killed
//! with SIGKILL frees nothing, so "attached" also means "its process is alive" (pid and start
//! time, see [`ProcessIdentity`]); that check reads /proc and is made only on slow paths.
//! A side is *disconnected* once it has had a peer — one attached when it attached, or one
//! that attached since — and no peer is left. An endpoint that has never had a peer (a
//! receiver started before any sender, or re-attached after the last one left) waits instead.
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
const FREE: u32 = 0;
const CLAIMING: u32 = 3;

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

/// An attached endpoint; on drop it detaches and wakes everyone waiting on the channel, so
/// that the other side learns at once.
#[derive(Debug)]
pub(super) struct Endpoint<'c> {
    role_word: &'c AtomicU32,
    role: Role,
    /// For channels with one endpoint per side: the entry the peer uses.
    peer_entry: Option<usize>,
    /// For channels with one endpoint per side: the peer entry's role word, for a check cheap
    /// enough to make on every send.
    peer_role: Option<&'c AtomicU32>,
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
        self.role_word.store(FREE, Ordering::Release);
        self.control.wake_everyone(self.doorbell);
    }
}

struct Entry<'c> {
    role: &'c AtomicU32,
    pid: &'c AtomicU32,
    start: &'c AtomicU64,
}

fn entry<'c>(control: &Control<'c>, index: usize) -> Result<Entry<'c>> {
    let offset = FIRST_ENTRY + index * 16;
    Ok(Entry {
        role: control.segment.atomic(offset)?,
        pid: control.segment.atomic(offset + 4)?,
        start: control.segment.atomic(offset + 8)?,
    })
}

fn attach_counter<'c>(control: &Control<'c>, role: Role) -> Result<&'c AtomicU32> {
    control
        .segment
        .atomic(ENDPOINTS_OFFSET + (role as usize - 1) * 4)
}

impl Entry<'_> {
    fn owner(&self) -> ProcessIdentity {
        ProcessIdentity {
            pid: self.pid.load(Ordering::Relaxed),
            start_time: self.start.load(Ordering::Relaxed),
        }
    }

    /// Claims the entry if it is free, or held by `role` in a process that died.
    fn claim(&self, role: Role) -> bool {
        let current = self.role.load(Ordering::Acquire);
        let claimable = current == FREE || (current == role as u32 && !self.owner().is_alive());
        claimable
            && self
                .role
                .compare_exchange(current, CLAIMING, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }
}

/// Zeroes the table (the creator, before publishing the segment).
pub(super) fn init(control: &Control<'_>) -> Result<()> {
    for role in [Role::Sender, Role::Receiver] {
        attach_counter(control, role)?.store(0, Ordering::Relaxed);
    }
    for index in 0..ENTRIES {
        entry(control, index)?.role.store(FREE, Ordering::Relaxed);
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
    let candidates: Vec<usize> = match fixed_entry {
        Some(index) => vec![index],
        None => (0..ENTRIES).collect(),
    };
    for index in candidates {
        let entry = entry(control, index)?;
        if entry.claim(role) {
            let me = ProcessIdentity::current();
            entry.pid.store(me.pid, Ordering::Relaxed);
            entry.start.store(me.start_time, Ordering::Relaxed);
            entry.role.store(role as u32, Ordering::Release);
            attach_counter(control, role)?.fetch_add(1, Ordering::AcqRel);
            let peer_role = match peer_entry {
                Some(index) => Some(self::entry(control, index)?.role),
                None => None,
            };
            let peer_attaches = attach_counter(control, role.other())?;
            let baseline = peer_attaches.load(Ordering::Acquire);
            let mut had_peer = false;
            for index in 0..ENTRIES {
                had_peer |= self::entry(control, index)?.role.load(Ordering::Acquire)
                    == role.other() as u32;
            }
            return Ok(Endpoint {
                role_word: entry.role,
                role,
                peer_entry,
                peer_role,
                peer_attaches,
                baseline,
                had_peer,
                control: *control,
                doorbell,
            });
        }
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
        self.peer_role
            .is_some_and(|role| role.load(Ordering::Relaxed) == FREE && self.has_had_peer())
    }
}

/// Whether the other side of `endpoint` is gone: it attached at least once, and no entry of
/// its role is left — or, with `check_processes`, none of those left belongs to a live process.
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
        match entry.role.load(Ordering::Acquire) {
            CLAIMING => return Ok(false),
            role if role == peer as u32 && (!check_processes || entry.owner().is_alive()) => {
                return Ok(false);
            }
            _ => {}
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
