//! Who is attached to a channel: a table of up to 30 endpoints in the control block, and the
//! verified view each endpoint keeps of its peers (see `liveness`).
//!
//! ```text
//! 320  u32 senders ever attached   324  u32 receivers ever attached   328  8 bytes reserved
//! 336  30 entries of 16 bytes: u64 state = pid (bits 32-63) | generation (2-31) | role (0-1),
//!      u64 process start time (0 until written)
//! ```
//!
//! An endpoint claims an entry with one compare-and-swap of the state word, which records the
//! claiming process and bumps the generation, takes its lock byte and registers itself; it
//! frees the entry when dropped — by the process that claimed it only, so a child that
//! inherited an endpoint across fork does not free its parent's — and frees it even if
//! someone else wrote to it meanwhile, as long as it still names this process in this role.
//!
//! The table says where to look; whether a peer is there is decided by `liveness`. Each
//! endpoint pins the peers it has verified and watches those processes. A side is
//! *disconnected* once it has had a peer — one it verified, or one the table says was attached
//! when it attached or attached since (the attach counters) — and no verified peer is left;
//! until then its peer is *absent*, which no wait without a deadline waits out (see the
//! channel module's docs on waiting for a peer). A process the table names but that cannot
//! be verified leaves the peer *unconfirmed*: waits give it the grace period, no longer. So a
//! hostile write can turn a wait into an error, or keep one going while a verified peer's
//! process lives (by naming it after it left), never while no verified process is there.
//!
//! Single-producer/single-consumer channels use fixed entries (0 for the sender, 1 for the
//! receiver), so that two processes cannot both become the sender; an entry whose process died
//! is taken over.

use std::ops::Range;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::control::{Control, ENDPOINTS_OFFSET};
use super::liveness::{Witness, lock_byte};
use crate::error::{Error, ErrorKind, Result};
use crate::shm::ProcessIdentity;
use crate::shm::locks::{ByteLock, FileKey};

const ENTRIES: usize = 30;
const FIRST_ENTRY: usize = ENDPOINTS_OFFSET + 16;
const FREE: u64 = 0;
const ROLE_BITS: u64 = 0b11;
const GENERATION_BITS: u64 = ((1 << 30) - 1) << 2;
/// How often a waiting endpoint looks at its peers' processes.
const CHECK_INTERVAL: Duration = Duration::from_millis(10);
/// How often a pinned peer that lost its lock is looked up in /proc/PID/maps.
const MAPS_INTERVAL: Duration = Duration::from_secs(1);

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

/// How long a call without a deadline waits for a peer that has not attached yet.
pub const PEER_GRACE: Duration = Duration::from_secs(2);

/// Whether a wait may go on, given where the peers stand: never once they are gone; while
/// none has attached yet, until the call's deadline, or for [`PEER_GRACE`] from the start of
/// a call without one.
#[derive(Debug, Clone, Copy)]
pub(super) struct Patience {
    deadline: Option<Instant>,
    grace_end: Instant,
}

impl Patience {
    pub(super) fn new(deadline: Option<Instant>) -> Patience {
        Patience {
            deadline,
            grace_end: Instant::now() + PEER_GRACE,
        }
    }

    pub(super) fn may_wait(&self, peer: Peer) -> bool {
        match peer {
            Peer::Present => true,
            Peer::Gone => false,
            Peer::Absent | Peer::Unconfirmed => {
                self.deadline.is_some() || Instant::now() < self.grace_end
            }
        }
    }
}

/// Where an endpoint stands with its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Peer {
    /// A verified peer is attached and its process lives.
    Present,
    /// There was a verified peer, and none is left.
    Gone,
    /// No peer has been verified yet.
    Absent,
    /// No verified peer is there, but the table names a live process as one that could not
    /// be verified (yet): waits treat it as absent, non-blocking calls as not gone.
    Unconfirmed,
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

/// A peer this endpoint verified: its entry, and the process as it was when verified.
#[derive(Debug, Clone, Copy)]
struct Pinned<'c> {
    index: usize,
    identity: ProcessIdentity,
    /// Its entry's state word, for the per-message look.
    state: &'c AtomicU64,
    /// Whether the entry named it when it was verified (by its lock, an entry may name it
    /// differently: zeroed by a hostile write, or under its pid in another namespace).
    named_when_pinned: bool,
    /// When /proc/PID/maps was last read for it, on the coarse clock (see `refresh`).
    maps_looked: Duration,
}

impl Pinned<'_> {
    /// Whether its entry still names it on the peer side.
    fn named(&self, peer: Role) -> bool {
        let state = self.state.load(Ordering::Relaxed);
        role_of(state) == peer as u64 && pid_of(state) == self.identity.pid
    }
}

/// An attached endpoint; on drop it detaches and wakes everyone waiting on the channel, so
/// that the other side learns at once.
#[derive(Debug)]
pub(super) struct Endpoint<'c> {
    state_word: &'c AtomicU64,
    /// The state this endpoint wrote when it claimed its entry.
    claimed: u64,
    role: Role,
    /// The entries a peer can hold: one for channels with one endpoint per side, all others.
    peer_entries: Range<usize>,
    witness: Witness<'c>,
    lock: ByteLock,
    pinned: Vec<Pinned<'c>>,
    /// Entries (index and state word) whose named process was seen not to map the segment:
    /// not looked up in /proc again while the entry stays as it was.
    absent: Vec<(usize, u64)>,
    /// At the last look, the table named a live process as a peer that could not be
    /// verified: perhaps a peer whose lock a close dropped, perhaps a forgery.
    unconfirmed: bool,
    /// Calls of the per-message look, to take this endpoint's lock again now and then.
    looks: u32,
    /// Whether this endpoint verified a peer, or the table said it had one (a peer attached
    /// when it attached, or counted since, as of the last look).
    had_peer: bool,
    /// The peer side's attach counter, and its value when this endpoint attached.
    peer_attaches: &'c AtomicU32,
    baseline: u32,
    /// The peer side's attach counter at the last look.
    attaches_seen: u32,
    /// When to look again, on the coarse monotonic clock (see [`crate::sync::coarse_now`]).
    next_check: Duration,
    control: Control<'c>,
    doorbell: Option<&'c OwnedFd>,
}

impl Drop for Endpoint<'_> {
    fn drop(&mut self) {
        let me = ProcessIdentity::current().pid;
        // Only the claiming process frees the entry, not a child that inherited it by fork.
        if pid_of(self.claimed) != me {
            return;
        }
        let freed = next_state(self.claimed, 0, FREE);
        if self
            .state_word
            .compare_exchange(self.claimed, freed, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            // Someone wrote to the entry meanwhile. While it still names this process in this
            // role, nobody took it over (that needs this process dead): it is still ours.
            let current = self.state_word.load(Ordering::Acquire);
            if pid_of(current) == me && role_of(current) == self.role as u64 {
                let _ = self.state_word.compare_exchange(
                    current,
                    next_state(current, 0, FREE),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                );
            }
        }
        self.control.wake_everyone(self.doorbell);
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

impl Entry<'_> {
    /// The process holding the entry whose state is `state`, as the entry says.
    fn owner(&self, state: u64) -> ProcessIdentity {
        ProcessIdentity {
            pid: pid_of(state),
            start_time: self.start.load(Ordering::Acquire),
        }
    }

    /// Claims entry `index` for `role` if it is free, or held (in any role) by a process that
    /// died — and, whatever the table says, if no process holds either of its lock bytes (a
    /// hostile write that frees a live endpoint's entry does not let a second one in).
    /// Returns the state written.
    fn claim(
        &self,
        index: usize,
        role: Role,
        me: ProcessIdentity,
        witness: &Witness<'_>,
    ) -> Option<u64> {
        let current = self.state.load(Ordering::Acquire);
        let held = [Role::Sender, Role::Receiver]
            .into_iter()
            .any(|side| witness.holder(lock_byte(side as u64, index)).is_some());
        // Without a lock on either byte, an owner is gone when its process died, or when it
        // is this very process (whose own endpoints the lock registry would show), or when it
        // no longer maps the segment (it exec'd another program).
        let gone = |owner: ProcessIdentity| {
            !owner.is_alive() || owner.pid == me.pid || witness.unmapped_by(owner.pid)
        };
        let claimable = !held && (role_of(current) == FREE || gone(self.owner(current)));
        let claimed = next_state(current, me.pid, role as u64);
        (claimable
            && self
                .state
                .compare_exchange(current, claimed, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok())
        .then_some(claimed)
    }

    /// The pid the entry names in `role`, if it names one.
    fn named(&self, role: Role) -> Option<u32> {
        let state = self.state.load(Ordering::Acquire);
        (role_of(state) == role as u64 && pid_of(state) != 0).then_some(pid_of(state))
    }
}

fn attach_counter<'c>(control: &Control<'c>, role: Role) -> Result<&'c AtomicU32> {
    control
        .segment
        .atomic(ENDPOINTS_OFFSET + (role as usize - 1) * 4)
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
    let (candidates, peer_entries) = match (fixed, role) {
        (false, _) => (0..ENTRIES, 0..ENTRIES),
        (true, Role::Sender) => (
            FIXED_SENDER..FIXED_SENDER + 1,
            FIXED_RECEIVER..FIXED_RECEIVER + 1,
        ),
        (true, Role::Receiver) => (
            FIXED_RECEIVER..FIXED_RECEIVER + 1,
            FIXED_SENDER..FIXED_SENDER + 1,
        ),
    };
    let fd = control.segment.fd();
    let witness = Witness {
        fd,
        key: FileKey::of(fd)?,
    };
    let me = ProcessIdentity::current();
    for index in candidates {
        let entry = entry(control, index)?;
        let byte = lock_byte(role as u64, index);
        // Taking the entry's lock first makes the claim one process's at a time.
        let taken = ByteLock::take(fd, witness.key, byte, || {
            entry.claim(index, role, me, &witness)
        })?;
        let Some((lock, claimed)) = taken else {
            continue;
        };
        entry.start.store(me.start_time, Ordering::Release);
        attach_counter(control, role)?.fetch_add(1, Ordering::AcqRel);
        let peer_attaches = attach_counter(control, role.other())?;
        let baseline = peer_attaches.load(Ordering::Acquire);
        // A peer the table names now, live or dead, counts as one this endpoint had: a
        // receiver that attaches after its sender crashed takes what it left, then learns
        // that it is gone (`wait_for_peer` waits for the next one).
        let mut had_peer = false;
        for index in peer_entries.clone() {
            had_peer |= self::entry(control, index)?.named(role.other()).is_some();
        }
        let mut endpoint = Endpoint {
            state_word: entry.state,
            claimed,
            role,
            peer_entries,
            witness,
            lock,
            pinned: Vec::new(),
            absent: Vec::new(),
            unconfirmed: false,
            looks: 0,
            had_peer,
            peer_attaches,
            baseline,
            attaches_seen: baseline,
            next_check: crate::sync::coarse_now(),
            control: *control,
            doorbell,
        };
        endpoint.refresh()?;
        // Whoever waits for a peer (`wait_for_peer`, a bounded receive) looks again now.
        control.wake_everyone(doorbell);
        return Ok(endpoint);
    }
    Err(match fixed {
        true => Error::new(
            ErrorKind::AlreadyExists,
            "attach",
            format!(
                "this single-{0} channel already has a live {0}",
                role.name()
            ),
        ),
        false => Error::new(
            ErrorKind::OutOfMemory,
            "attach",
            format!("all {ENTRIES} endpoint entries of this channel are in use"),
        ),
    })
}

impl Endpoint<'_> {
    /// Looks at the peers again: takes this endpoint's lock again (a close elsewhere in the
    /// process may have dropped it), lets go of pinned peers that are gone, and pins peers
    /// that have appeared and can be verified.
    fn refresh(&mut self) -> Result<()> {
        self.lock.retake(self.witness.fd);
        // Read before the scan: a peer counted here took its lock before it counted itself,
        // so the scan finds it unless it has left again.
        let attaches = self.peer_attaches.load(Ordering::Acquire);
        let peer = self.role.other();
        let mut kept = Vec::with_capacity(self.pinned.len());
        let now = crate::sync::coarse_now();
        for mut pinned in self.pinned.drain(..) {
            let byte = lock_byte(peer as u64, pinned.index);
            let pid = pinned.identity.pid;
            let there = if pinned.identity == ProcessIdentity::current() {
                self.witness.holds(pid, byte)
            } else if !pinned.identity.is_alive() {
                false
            } else if self.witness.holds(pid, byte) {
                true
            } else if !pinned.named(peer) {
                false
            } else if now.saturating_sub(pinned.maps_looked) >= MAPS_INTERVAL {
                // Named, but without its lock: lost by a close, or gone with an exec.
                pinned.maps_looked = now;
                !self.witness.unmapped_by(pid)
            } else {
                true
            };
            if there {
                kept.push(pinned);
            }
        }
        self.pinned = kept;
        self.unconfirmed = false;
        for index in self.peer_entries.clone() {
            if self.pinned.iter().any(|pinned| pinned.index == index) {
                continue;
            }
            let byte = lock_byte(peer as u64, index);
            let entry = entry(&self.control, index)?;
            let state = entry.state.load(Ordering::Acquire);
            if self.absent.contains(&(index, state)) && self.witness.holder(byte).is_none() {
                continue;
            }
            let named = entry.named(peer);
            let Some(pid) = self.witness.holder(byte).or(named) else {
                continue;
            };
            match self.witness.verify(pid, byte) {
                Some(true) => {}
                // Named, but neither locked nor mapped: gone (an exec, a forged entry).
                Some(false) => {
                    self.absent.retain(|&(seen, _)| seen != index);
                    self.absent.push((index, state));
                    continue;
                }
                None => {
                    self.unconfirmed |=
                        ProcessIdentity::of(pid).is_some_and(|process| process.is_alive());
                    continue;
                }
            }
            let identity = match pid == ProcessIdentity::current().pid {
                true => Some(ProcessIdentity::current()),
                false => ProcessIdentity::of(pid),
            };
            if let Some(identity) = identity {
                self.pinned.push(Pinned {
                    index,
                    identity,
                    state: entry.state,
                    named_when_pinned: named == Some(pid),
                    maps_looked: crate::sync::coarse_now(),
                });
                self.had_peer = true;
            }
        }
        self.had_peer |= attaches != self.baseline;
        self.attaches_seen = attaches;
        Ok(())
    }

    /// Fails unless the calling process attached this endpoint: a child that inherited it
    /// across fork would race its parent for the same ring positions and corrupt the channel.
    pub(super) fn attached_here(&self, operation: &'static str) -> Result<()> {
        let me = ProcessIdentity::current().pid;
        let owner = pid_of(self.claimed);
        if owner == me {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::InvalidInput,
            operation,
            format!(
                "this {} belongs to process {owner}, which attached it; this process ({me}) \
                 inherited it across fork",
                self.role.name()
            ),
        )
        .with_hint(
            "attach an endpoint of this process's own (the channel's sender() or receiver())",
        ))
    }

    /// Where this endpoint stands with its peers. Looks again at most every 10 ms, or at
    /// once when the table says a pinned peer left or a peer attached.
    pub(super) fn peer(&mut self) -> Result<Peer> {
        let now = crate::sync::coarse_now();
        let attached = self.peer_attaches.load(Ordering::Acquire) != self.attaches_seen;
        let peer = self.role.other();
        let left = attached
            || self
                .pinned
                .iter()
                .any(|pinned| pinned.named_when_pinned && !pinned.named(peer));
        if now >= self.next_check || left {
            self.next_check = now + CHECK_INTERVAL;
            self.refresh()?;
        }
        Ok(self.standing())
    }

    fn standing(&self) -> Peer {
        if !self.pinned.is_empty() {
            Peer::Present
        } else if self.unconfirmed {
            Peer::Unconfirmed
        } else if self.had_peer {
            Peer::Gone
        } else {
            Peer::Absent
        }
    }

    /// Whether this endpoint had a peer and none is left.
    pub(super) fn peer_gone(&mut self) -> Result<bool> {
        Ok(self.peer()? == Peer::Gone)
    }

    /// For the per-message check of a sender: a load and a read of the coarse clock while a
    /// pinned peer's entry still names it (a peer that died without leaving is noticed at the
    /// next look, at most [`CHECK_INTERVAL`] later), or while no peer was ever seen and none
    /// has attached since; otherwise the look of [`peer`](Self::peer), which also notices a
    /// peer that attached and left between two messages. Every 256th call also takes this
    /// endpoint's lock again, in case a close elsewhere in the process dropped it.
    pub(super) fn peer_detached(&mut self) -> Result<bool> {
        self.looks = self.looks.wrapping_add(1);
        if self.looks.is_multiple_of(256) {
            self.lock.retake(self.witness.fd);
        }
        let peer = self.role.other();
        if self
            .pinned
            .iter()
            .any(|pinned| pinned.named_when_pinned && pinned.named(peer))
            && crate::sync::coarse_now() < self.next_check
        {
            return Ok(false);
        }
        let attached = self.peer_attaches.load(Ordering::Acquire) != self.attaches_seen;
        if !attached && self.standing() == Peer::Absent {
            return Ok(false);
        }
        self.peer_gone()
    }

    /// Waits until a verified peer is attached, or one has attached since the call began, at
    /// most until `deadline`.
    pub(super) fn wait_for_peer(
        &mut self,
        deadline: Instant,
        operation: &'static str,
    ) -> Result<()> {
        // A peer that attaches during the wait counts even if it is gone again by the time
        // this endpoint looks (it may have sent and left): what it left is in the queue.
        self.attached_here(operation)?;
        let attaches_before = self.peer_attaches.load(Ordering::Acquire);
        loop {
            self.refresh()?;
            // A truncated segment reads as zeros: no peer is what a wait would find there.
            self.control.segment.check()?;
            if !self.pinned.is_empty() || self.attaches_seen != attaches_before {
                return Ok(());
            }
            let slept = match self.role {
                Role::Sender => self.control.sleep_as_sender(|| Ok(false), Some(deadline)),
                Role::Receiver => self.control.sleep_as_receiver(|| Ok(false), Some(deadline)),
            };
            if let Err(error) = slept {
                return Err(match error.kind() {
                    ErrorKind::Timeout => Error::new(
                        ErrorKind::Timeout,
                        operation,
                        format!("no {} attached in time", self.role.other().name()),
                    ),
                    _ => error,
                });
            }
        }
    }
}

/// The error a disconnected endpoint reports: every peer it had is gone, or (`Absent`) it
/// never had one, and waiting for one needs a deadline.
pub(super) fn disconnected(operation: &'static str, endpoint: &Endpoint<'_>) -> Error {
    let peer = endpoint.role.other().name();
    match endpoint.standing() {
        Peer::Absent => Error::new(
            ErrorKind::Disconnected,
            operation,
            format!(
                "no {peer} attached to this channel within {} s",
                PEER_GRACE.as_secs()
            ),
        )
        .with_hint(format!(
            "wait_for_peer(timeout) waits longer for a {peer} to attach; calls with a timeout \
             wait for one until their deadline"
        )),
        Peer::Unconfirmed => Error::new(
            ErrorKind::Disconnected,
            operation,
            format!(
                "a {peer} is named in the channel, but it could not be verified within {} s",
                PEER_GRACE.as_secs()
            ),
        )
        .with_hint(
            "a peer of another user is verified by its lock, which it loses for a while when it \
             closes a descriptor of the segment's file; or the entry was forged",
        ),
        _ => Error::new(
            ErrorKind::Disconnected,
            operation,
            format!("every {peer} of this channel is gone"),
        ),
    }
}
