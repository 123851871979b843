/*
 * libmmapkit: mmapkit's memory mappings, shared-memory segments, robust locks and channels
 * for C, C++ and every language with a C FFI.
 *
 * Conventions
 * - Handles are opaque (mmapkit_mapping_t *, ...): created by the library's constructors,
 *   destroyed by its *_close / *_unmap functions, never freed by the caller. Destroying
 *   NULL does nothing. A handle that is NULL, garbage, of another type or already destroyed
 *   is MMAPKIT_EINVAL, never a crash: every call looks its handle up first.
 * - Every function (but the four error/version getters) returns an int status: MMAPKIT_OK
 *   (0), or a negative MMAPKIT_E* code, one per kind of error of the Rust library's
 *   ErrorKind. Results come back through out-pointers, which must not be NULL; a failed
 *   constructor sets its out-handle to NULL.
 * - mmapkit_last_error_message() is the sentence that says why the last call of this thread
 *   failed (operation, path, offset, OS error): valid until the next mmapkit call on this
 *   thread. mmapkit_last_error_errno() is the OS errno behind it, or 0.
 * - No Rust panic crosses the boundary: one is caught and returned as MMAPKIT_EINTERNAL.
 * - NULL pointers and lengths that do not fit the object are errors; lengths are checked
 *   against the mapping, segment or message before the caller's buffer is touched. A buffer
 *   shorter than the length passed with it is the caller's bug, as in every C API.
 * - Offsets in mappings and segments are size_t; a length of MMAPKIT_TO_END means "to the
 *   end". Timeouts are int64_t milliseconds: negative waits as long as it takes, 0 does not
 *   wait (MMAPKIT_EWOULDBLOCK).
 * - Peers: a channel end whose process execs another program is gone about a second later
 *   (MMAPKIT_EDISCONNECTED) when /proc/PID/maps can be read (the same user, or root), and
 *   stays attached until that program ends otherwise. The same holds for a mutex holder
 *   that execs: its lock is taken over (MMAPKIT_EOWNERDIED) about a second later.
 * - Threads: mapping, segment, channel, semaphore and event handles may be used by several
 *   threads at once; a sender or receiver is one party (threads sharing one take turns); a
 *   mutex's lock belongs to the thread that took it. Each thread keeps a little state (its
 *   last error, the handles it used last), freed when it exits; a thread whose first call
 *   is made from a pthread key destructor, after glibc has run the thread's destructors,
 *   leaves that state behind (about 200 bytes).
 * - Waits: a call that waits on a sender or receiver holds it for 10 ms at a time, so
 *   mmapkit_sender_close / mmapkit_receiver_close from another thread ends the wait within
 *   one slice (the wait returns MMAPKIT_EINVAL, "closed") and detaches the end before it
 *   returns. Threads sharing an end take turns; a timeout covers the wait for the end too
 *   (a timeout of 0 on an end another thread is using is MMAPKIT_EWOULDBLOCK), so a call
 *   returns within a few milliseconds of its deadline. A wait without a timeout for a peer
 *   that never attached gives up after 2 s (MMAPKIT_EDISCONNECTED, "no peer attached"):
 *   pass a timeout to wait longer for a peer that is slow to start. A sender killed with
 *   SIGKILL does not ring a pollable channel's doorbell: poll the doorbell with a timeout,
 *   and call mmapkit_receiver_recv with a timeout of 0 when it expires, which reports
 *   MMAPKIT_EDISCONNECTED once the sender is gone.
 * - Cancellation: calls are not cancellation points, and pthread_cancel never aborts one: a
 *   thread cancelled inside a call is cancelled at its next cancellation point after the
 *   call returns. A call waiting without a timeout is therefore not ended by pthread_cancel
 *   (close the end from another thread, or wait with a timeout). As with most of libc, no
 *   call may be made with asynchronous cancellation (PTHREAD_CANCEL_ASYNCHRONOUS) enabled.
 * - fork: handles stay valid in the child for mappings and segments (a fork waits for
 *   mapping calls in progress in other threads to end); a sender or receiver
 *   belongs to the process that attached it, and the child's calls on an inherited one are
 *   MMAPKIT_EINVAL (attach the child's own), in a child of _Fork too (which, in a
 *   multi-threaded program, may make no call at all: POSIX allows it only
 *   async-signal-safe functions, and another thread may have held a lock of the library). Handles are numbers that are never reused, so a
 *   handle used after it was destroyed is MMAPKIT_EINVAL even when a new object exists.
 * - Guarded access: mmapkit_mapping_read_at/write_at and segment reads report a truncated
 *   file as MMAPKIT_ETRUNCATED instead of dying of SIGBUS. A thread that blocks SIGBUS, or a
 *   program that installs its own SIGBUS handler after mmapkit's first use, loses that.
 *   Each segment and channel takes one of 1024 shield slots of the process while it is
 *   open: the 1025th at once is MMAPKIT_ENOMEM.
 * - The header needs C99 (stdint.h, // comments) or C++.
 */

#ifndef MMAPKIT_H
#define MMAPKIT_H

/* Generated by cbindgen from crates/mmapkit-c (tests/header.rs checks it is current; MMAPKIT_BLESS=1 rewrites it). Do not edit. */

#include <stddef.h>
#include <stdint.h>

// A length meaning "to the end" of the mapping or segment, in range arguments.
#define MMAPKIT_TO_END 18446744073709551615ull

// A timeout meaning "wait as long as it takes" (any negative value does).
#define MMAPKIT_FOREVER -1

// The channel has a doorbell descriptor for poll/epoll (`mmapkit_channel_doorbell_fd`).
#define MMAPKIT_CHANNEL_POLLABLE 1

// Map for writing (files: opened read-write; shared writes reach the file).
#define MMAPKIT_MAP_WRITE 1

// Copy-on-write: writes stay in this process (the default for anonymous memory).
#define MMAPKIT_MAP_PRIVATE (1 << 1)

// Shared: writes are seen by every mapping of the file, and anonymous memory is shared with
// children forked later (the default for files).
#define MMAPKIT_MAP_SHARED (1 << 2)

// Fault every page in at once (MAP_POPULATE).
#define MMAPKIT_MAP_POPULATE (1 << 3)

// No access.
#define MMAPKIT_PROT_NONE 0

// Pages can be read.
#define MMAPKIT_PROT_READ 1

// Pages can be written.
#define MMAPKIT_PROT_WRITE (1 << 1)

// Pages can be executed (never together with write).
#define MMAPKIT_PROT_EXEC (1 << 2)

// Start the write-back and return (MS_ASYNC); without it a flush waits (MS_SYNC).
#define MMAPKIT_FLUSH_ASYNC 1

// Write back, then invalidate other mappings' views (MS_SYNC | MS_INVALIDATE).
#define MMAPKIT_FLUSH_INVALIDATE (1 << 1)

// madvise advice that never changes what the bytes read as.
#define MMAPKIT_ADVICE_NORMAL 0

// Expect sequential access: read ahead aggressively, drop behind.
#define MMAPKIT_ADVICE_SEQUENTIAL 1

// Expect random access: no read-ahead.
#define MMAPKIT_ADVICE_RANDOM 2

// Read the pages in now, in the background.
#define MMAPKIT_ADVICE_WILLNEED 3

// Back the range with transparent huge pages.
#define MMAPKIT_ADVICE_HUGEPAGE 4

// Never back the range with transparent huge pages.
#define MMAPKIT_ADVICE_NOHUGEPAGE 5

// Fault the pages in readable, now.
#define MMAPKIT_ADVICE_POPULATE_READ 6

// Fault the pages in writable, now.
#define MMAPKIT_ADVICE_POPULATE_WRITE 7

// The pages are cold: reclaim them first.
#define MMAPKIT_ADVICE_COLD 8

// Reclaim the pages now (written back first if needed).
#define MMAPKIT_ADVICE_PAGEOUT 9

// Leave the range out of core dumps.
#define MMAPKIT_ADVICE_DONTDUMP 10

// Include the range in core dumps again.
#define MMAPKIT_ADVICE_DODUMP 11

// Success.
#define MMAPKIT_OK 0

// The file, device or segment does not exist.
#define MMAPKIT_ENOTFOUND -1

// The OS refused: file modes, read-only descriptors, sealed mappings, resource limits.
#define MMAPKIT_EPERMISSION -2

// An argument is wrong in itself: NULL, zero length, unknown flags, a handle that is not a
// live handle of the right type.
#define MMAPKIT_EINVAL -3

// An offset or range lies outside the mapping, segment or file.
#define MMAPKIT_EOUTOFBOUNDS -4

// The memory can be changed by someone else and cannot be lent.
#define MMAPKIT_ENOTEXCLUSIVE -5

// The file behind a mapping no longer covers the bytes accessed (it was truncated): what a
// plain mmap reports by killing the process with SIGBUS.
#define MMAPKIT_ETRUNCATED -6

// Something already occupies the requested name or address.
#define MMAPKIT_EEXIST -7

// Out of memory, address space, lockable memory or descriptors (EMFILE, ENFILE).
#define MMAPKIT_ENOMEM -8

// The file system (for shared memory, /dev/shm) is full.
#define MMAPKIT_ENOSPC -9

// Bytes from outside (another process's header or index) failed validation.
#define MMAPKIT_ECORRUPT -10

// A valid object of another layout version, type or size than the one asked for.
#define MMAPKIT_EINCOMPATIBLE -11

// A wait ran out of time.
#define MMAPKIT_ETIMEDOUT -12

// The previous holder of a lock died holding it. The lock is now held by the caller: repair
// the data, call `mmapkit_mutex_mark_consistent`, then `mmapkit_mutex_unlock`.
#define MMAPKIT_EOWNERDIED -13

// The other end of a channel is gone (closed, or its process died), or none attached.
#define MMAPKIT_EDISCONNECTED -14

// The call would have to wait (a timeout of 0 on a full channel or a held lock).
#define MMAPKIT_EWOULDBLOCK -15

// The kernel or file system does not offer the operation.
#define MMAPKIT_EUNSUPPORTED -16

// Any other OS error (see `mmapkit_last_error_errno`).
#define MMAPKIT_EIO -17

// A bug in mmapkit (a Rust panic, caught at the boundary); the message says where.
#define MMAPKIT_EINTERNAL -18

// The name the issue tracker and other bindings use for [`MMAPKIT_EOWNERDIED`].
#define MMAPKIT_OWNER_DIED MMAPKIT_EOWNERDIED

// Bytes a mutex takes in a payload (at an offset aligned to 8).
#define MMAPKIT_MUTEX_SIZE 24

// Bytes a semaphore takes in a payload (at an offset aligned to 8).
#define MMAPKIT_SEMAPHORE_SIZE 16

// Bytes an event takes in a payload (at an offset aligned to 8).
#define MMAPKIT_EVENT_SIZE 16

// A byte channel (named, or a memfd passed to other processes). Safe to use from several
// threads at once.
typedef struct mmapkit_channel_t mmapkit_channel_t;

// An event (a flag to wait for) in a segment. Safe to use from several threads at once.
typedef struct mmapkit_event_t mmapkit_event_t;

// A mapping. Safe to use from several threads at once; `mmapkit_mapping_protect` waits for
// the other calls on the handle to finish.
typedef struct mmapkit_mapping_t mmapkit_mapping_t;

// A robust mutex in a segment. The lock belongs to the thread that took it: only that thread
// unlocks it, and if it ends (or its process dies) holding it, the next locker gets
// `MMAPKIT_EOWNERDIED` with the lock held. The handle itself may be used from any thread.
typedef struct mmapkit_mutex_t mmapkit_mutex_t;

// The receiving end of a channel (one per channel at a time). Threads sharing it take turns.
typedef struct mmapkit_receiver_t mmapkit_receiver_t;

// A segment: the payload of a named or memfd shared-memory object. Safe to use from
// several threads at once. Mutexes, events, semaphores and channels made from it keep it
// mapped until they are closed too.
typedef struct mmapkit_segment_t mmapkit_segment_t;

// A counting semaphore in a segment. Safe to use from several threads at once.
typedef struct mmapkit_semaphore_t mmapkit_semaphore_t;

// The sending end of a channel (one per channel at a time). Threads sharing it take turns.
typedef struct mmapkit_sender_t mmapkit_sender_t;

// The page-cache state of a file. Counts are in pages of `page_size` bytes; the counts
// only cachestat(2) gives are -1 when the kernel answered through mincore(2).
typedef struct mmapkit_file_residency_t {
  // The file's size in bytes when it was measured.
  uint64_t size;
  // The page size of the counts.
  uint64_t page_size;
  // Pages the file covers.
  uint64_t pages;
  // Of those, pages in the page cache.
  uint64_t cached;
  // Cached pages that are dirty, or -1.
  int64_t dirty;
  // Pages being written back, or -1.
  int64_t writeback;
  // Pages evicted from the cache, or -1.
  int64_t evicted;
  // Evicted pages a larger cache would still hold, or -1.
  int64_t recently_evicted;
} mmapkit_file_residency_t;

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

// This thread's last error: one sentence with the operation, path, offset and OS error. The
// empty string after a call that succeeded. Valid until the next mmapkit call on this
// thread; never NULL.
const char *mmapkit_last_error_message(void);

// The OS errno behind this thread's last error; 0 when the OS gave none or the last call
// succeeded.
int mmapkit_last_error_errno(void);

// The name of a status code ("MMAPKIT_ETRUNCATED"), or "unknown status". A static string.
const char *mmapkit_status_name(int status);

// The library's version ("0.1.0"). A static string.
const char *mmapkit_version(void);

// Creates the named channel `name` with `capacity` bytes of ring. `MMAPKIT_EEXIST` if the
// name is taken.
//
// # Safety
// `name` is NULL or a NUL-terminated string; `out` is NULL or writable.
int mmapkit_channel_create(const char *name,
                           size_t capacity,
                           uint32_t flags,
                           struct mmapkit_channel_t **out);

// Creates an anonymous channel (a memfd): shared with children forked later, or passed
// with `mmapkit_channel_send_over`.
//
// # Safety
// `out` is NULL or writable.
int mmapkit_channel_create_memfd(size_t capacity, uint32_t flags, struct mmapkit_channel_t **out);

// Opens the named channel `name`. A pollable channel opened by name has no doorbell (a
// descriptor cannot travel by name): its receiver attaches but cannot poll, and its sender
// cannot attach (`MMAPKIT_EUNSUPPORTED`), since the receiver would never hear it. Pass
// pollable channels with `mmapkit_channel_send_over` or fork.
//
// # Safety
// `name` is NULL or a NUL-terminated string; `out` is NULL or writable.
int mmapkit_channel_open(const char *name, struct mmapkit_channel_t **out);

// Sends the channel (its segment and doorbell) over the connected Unix socket `socket`.
//
// # Safety
// None beyond the C rules.
int mmapkit_channel_send_over(const struct mmapkit_channel_t *channel, int socket);

// Receives a channel sent with `mmapkit_channel_send_over` on `socket`.
//
// # Safety
// `out` is NULL or writable.
int mmapkit_channel_receive_from(int socket, struct mmapkit_channel_t **out);

// Removes a named channel's name; processes that have it open keep it.
//
// # Safety
// `name` is NULL or a NUL-terminated string.
int mmapkit_channel_unlink(const char *name);

// The longest message the channel carries, in bytes.
//
// # Safety
// `len` is NULL or writable.
int mmapkit_channel_max_message(const struct mmapkit_channel_t *channel, size_t *len);

// The doorbell descriptor of a pollable channel, readable when messages may be waiting:
// poll it after `mmapkit_receiver_arm` answers 0. Owned by the handle (never close it).
// `MMAPKIT_EUNSUPPORTED` for a channel created without `MMAPKIT_CHANNEL_POLLABLE`.
//
// # Safety
// `fd` is NULL or writable.
int mmapkit_channel_doorbell_fd(const struct mmapkit_channel_t *channel, int *fd);

// Closes the handle; its sender and receiver keep the channel until they are closed. NULL
// does nothing.
//
// # Safety
// None beyond the C rules.
int mmapkit_channel_close(struct mmapkit_channel_t *channel);

// Attaches this process as the channel's sender. `MMAPKIT_EEXIST` if a live sender is
// attached already.
//
// # Safety
// `out` is NULL or writable.
int mmapkit_channel_sender(const struct mmapkit_channel_t *channel, struct mmapkit_sender_t **out);

// Sends the `len` bytes at `data` as one message, waiting up to `timeout_ms` for room
// (negative: as long as a receiver is attached; 0: `MMAPKIT_EWOULDBLOCK` if full).
// `MMAPKIT_EDISCONNECTED` once the receiver is gone.
//
// # Safety
// `data` is NULL or valid for `len` bytes (checked against the largest message first).
int mmapkit_sender_send(const struct mmapkit_sender_t *sender,
                        const void *data,
                        size_t len,
                        int64_t timeout_ms);

// Detaches the sender (the receiver then gets `MMAPKIT_EDISCONNECTED` after the last
// message). NULL does nothing.
//
// # Safety
// None beyond the C rules.
int mmapkit_sender_close(struct mmapkit_sender_t *sender);

// Attaches this process as the channel's receiver. `MMAPKIT_EEXIST` if a live receiver is
// attached already.
//
// # Safety
// `out` is NULL or writable.
int mmapkit_channel_receiver(const struct mmapkit_channel_t *channel,
                             struct mmapkit_receiver_t **out);

// Receives the next message into `buf` (`capacity` bytes), waiting up to `timeout_ms`
// (negative: as long as a sender is attached; 0: `MMAPKIT_EWOULDBLOCK` if none is there).
// `*len` is the message's length. A message longer than `capacity` is not received:
// `MMAPKIT_EOUTOFBOUNDS`, with `*len` its length, and the next call gets it again.
// `MMAPKIT_EDISCONNECTED` once the sender is gone and every message was received.
//
// # Safety
// `buf` is NULL or valid for `capacity` bytes; `len` is NULL or writable.
int mmapkit_receiver_recv(const struct mmapkit_receiver_t *receiver,
                          void *buf,
                          size_t capacity,
                          size_t *len,
                          int64_t timeout_ms);

// Prepares to poll the doorbell: `*waiting` is 1 if messages already wait (receive them
// first), 0 once the doorbell is armed (poll it, then receive).
//
// # Safety
// `waiting` is NULL or writable.
int mmapkit_receiver_arm(const struct mmapkit_receiver_t *receiver, int *waiting);

// Detaches the receiver (the sender then gets `MMAPKIT_EDISCONNECTED`). NULL does nothing.
//
// # Safety
// None beyond the C rules.
int mmapkit_receiver_close(struct mmapkit_receiver_t *receiver);

// Maps the file at `path`: `length` bytes from `offset` (length 0: to the end of the
// file). Devices need a length (`/dev/zero` with `MMAPKIT_MAP_SHARED | MMAPKIT_MAP_WRITE`
// is memory shared with forked children). On success `*out` is the new handle; on failure
// NULL.
//
// # Safety
// `path` is NULL or a NUL-terminated string; `out` is NULL or writable.
int mmapkit_map_path(const char *path,
                     uint32_t flags,
                     uint64_t offset,
                     size_t length,
                     struct mmapkit_mapping_t **out);

// Maps the open descriptor `fd` (a file, memfd, shm object or device), as
// `mmapkit_map_path` does. The descriptor stays the caller's: it is neither taken nor
// closed, and may be closed once this returns.
//
// # Safety
// `out` is NULL or writable.
int mmapkit_map_fd(int fd,
                   uint32_t flags,
                   uint64_t offset,
                   size_t length,
                   struct mmapkit_mapping_t **out);

// Maps `length` bytes of zeroed anonymous memory, readable and writable: private by
// default, shared with children forked later with `MMAPKIT_MAP_SHARED`.
//
// # Safety
// `out` is NULL or writable.
int mmapkit_map_anonymous(size_t length, uint32_t flags, struct mmapkit_mapping_t **out);

// Unmaps and destroys the handle. NULL does nothing. Pointers from `mmapkit_mapping_data`
// are dangling afterwards.
//
// # Safety
// None beyond the C rules: any pointer value is checked.
int mmapkit_mapping_unmap(struct mmapkit_mapping_t *mapping);

// The mapping's length in bytes.
//
// # Safety
// `len` is NULL or writable.
int mmapkit_mapping_len(const struct mmapkit_mapping_t *mapping, size_t *len);

// The mapping's first byte, for raw access. Raw access has plain mmap's rules: a page of a
// truncated file kills the process with SIGBUS here; `mmapkit_mapping_read_at` and
// `mmapkit_mapping_write_at` report `MMAPKIT_ETRUNCATED` instead.
//
// # Safety
// `data` is NULL or writable.
int mmapkit_mapping_data(const struct mmapkit_mapping_t *mapping, void **data);

// Copies `len` bytes at `offset` of the mapping into `buf`. `MMAPKIT_ETRUNCATED` if the file
// no longer covers them; `MMAPKIT_EOUTOFBOUNDS` if they lie outside the mapping.
//
// # Safety
// `buf` is NULL or valid for `len` bytes (checked against the mapping first).
int mmapkit_mapping_read_at(const struct mmapkit_mapping_t *mapping,
                            size_t offset,
                            void *buf,
                            size_t len);

// Copies `len` bytes from `data` to `offset` of the mapping (which must be writable).
//
// # Safety
// `data` is NULL or valid for `len` bytes (checked against the mapping first).
int mmapkit_mapping_write_at(const struct mmapkit_mapping_t *mapping,
                             size_t offset,
                             const void *data,
                             size_t len);

// Writes the range's dirty pages back to the file (msync): waits unless
// `MMAPKIT_FLUSH_ASYNC`. `len` `MMAPKIT_TO_END` means to the end.
//
// # Safety
// None beyond the C rules.
int mmapkit_mapping_flush(const struct mmapkit_mapping_t *mapping,
                          size_t offset,
                          size_t len,
                          uint32_t flags);

// Gives the kernel advice (`MMAPKIT_ADVICE_*`) about the pages the range touches.
//
// # Safety
// None beyond the C rules.
int mmapkit_mapping_advise(const struct mmapkit_mapping_t *mapping,
                           size_t offset,
                           size_t len,
                           int advice);

// Changes the protection (`MMAPKIT_PROT_*`) of the pages the range touches (mprotect).
// Write and execute together are refused.
//
// # Safety
// No pointer from `mmapkit_mapping_data` is used in a way the new protection forbids.
int mmapkit_mapping_protect(const struct mmapkit_mapping_t *mapping,
                            size_t offset,
                            size_t len,
                            uint32_t protection);

// Locks the pages the range touches in RAM (mlock).
//
// # Safety
// None beyond the C rules.
int mmapkit_mapping_lock(const struct mmapkit_mapping_t *mapping, size_t offset, size_t len);

// Unlocks the pages the range touches (munlock).
//
// # Safety
// None beyond the C rules.
int mmapkit_mapping_unlock(const struct mmapkit_mapping_t *mapping, size_t offset, size_t len);

// How many of the pages the range touches are resident in RAM (mincore): `*resident` of
// `*pages`. With `page_map` (NULL for none), one byte per page, 1 for resident; it must
// hold `page_map_len >= *pages` bytes, which is checked before it is written.
//
// # Safety
// `resident` and `pages` are NULL or writable; `page_map` is NULL or valid for
// `page_map_len` bytes.
int mmapkit_mapping_residency(const struct mmapkit_mapping_t *mapping,
                              size_t offset,
                              size_t len,
                              size_t *resident,
                              size_t *pages,
                              uint8_t *page_map,
                              size_t page_map_len);

// Measures how much of the regular file at `path` is in the page cache (cachestat, or
// mincore where cachestat is missing). Directories, devices and FIFOs are refused before
// they are opened.
//
// # Safety
// `path` is NULL or a NUL-terminated string; `out` is NULL or writable.
int mmapkit_residency_path(const char *path, struct mmapkit_file_residency_t *out);

// Creates the named segment `name` (in /dev/shm) with `size` bytes of payload, tagged with
// `type_tag` (what it holds, checked by every opener). `MMAPKIT_EEXIST` if the name is taken.
// `mode` is the permission bits (0: 0600), less the process umask as for any new file.
//
// # Safety
// `name` and `type_tag` are NULL or NUL-terminated strings; `out` is NULL or writable.
int mmapkit_segment_create(const char *name,
                           const char *type_tag,
                           size_t size,
                           uint32_t mode,
                           struct mmapkit_segment_t **out);

// Opens the named segment `name`, which must hold `type_tag` (and `size` bytes of payload,
// unless `size` is 0). Waits up to `wait_ms` milliseconds for a creator still setting it up.
//
// # Safety
// `name` and `type_tag` are NULL or NUL-terminated strings; `out` is NULL or writable.
int mmapkit_segment_open(const char *name,
                         const char *type_tag,
                         size_t size,
                         uint32_t wait_ms,
                         struct mmapkit_segment_t **out);

// Creates an anonymous segment (a memfd): shared with children forked later, and passed to
// other processes by descriptor (`mmapkit_segment_send`). `debug_name` shows in
// /proc/PID/fd.
//
// # Safety
// `type_tag` and `debug_name` are NULL or NUL-terminated strings; `out` is NULL or
// writable.
int mmapkit_segment_create_memfd(const char *type_tag,
                                 size_t size,
                                 const char *debug_name,
                                 struct mmapkit_segment_t **out);

// The segment behind the descriptor `fd` (received from another process), which must hold
// `type_tag`. The descriptor is duplicated: `fd` stays the caller's, to close when it likes.
//
// # Safety
// `type_tag` is NULL or a NUL-terminated string; `out` is NULL or writable.
int mmapkit_segment_from_fd(int fd, const char *type_tag, struct mmapkit_segment_t **out);

// The segment's descriptor, owned by the handle: valid until the handle is closed. Never
// close it; duplicate it (dup) to keep it longer.
//
// # Safety
// `fd` is NULL or writable.
int mmapkit_segment_fd(const struct mmapkit_segment_t *segment, int *fd);

// The segment's payload length in bytes.
//
// # Safety
// `len` is NULL or writable.
int mmapkit_segment_len(const struct mmapkit_segment_t *segment, size_t *len);

// Copies `len` payload bytes at `offset` into `buf`. Another process may write them
// meanwhile; the copy is what the bytes were while it ran.
//
// # Safety
// `buf` is NULL or valid for `len` bytes (checked against the payload first).
int mmapkit_segment_read_at(const struct mmapkit_segment_t *segment,
                            size_t offset,
                            void *buf,
                            size_t len);

// Copies `len` bytes from `data` to payload `offset`.
//
// # Safety
// `data` is NULL or valid for `len` bytes (checked against the payload first).
int mmapkit_segment_write_at(const struct mmapkit_segment_t *segment,
                             size_t offset,
                             const void *data,
                             size_t len);

// Sends the segment over the connected Unix socket `socket` (SCM_RIGHTS); the peer takes it
// with `mmapkit_segment_receive`.
//
// # Safety
// None beyond the C rules.
int mmapkit_segment_send(const struct mmapkit_segment_t *segment, int socket);

// Receives a segment sent with `mmapkit_segment_send` on `socket`; it must hold `type_tag`.
//
// # Safety
// `type_tag` is NULL or a NUL-terminated string; `out` is NULL or writable.
int mmapkit_segment_receive(int socket, const char *type_tag, struct mmapkit_segment_t **out);

// Removes the name of the named segment `name`; processes that have it open keep it.
//
// # Safety
// `name` is NULL or a NUL-terminated string.
int mmapkit_segment_unlink(const char *name);

// Closes the handle (the segment is unmapped once its mutexes, events and channels are
// closed too). NULL does nothing.
//
// # Safety
// None beyond the C rules.
int mmapkit_segment_close(struct mmapkit_segment_t *segment);

// Places a new, unlocked mutex at payload `offset` (the creator only, before others open it).
//
// # Safety
// `out` is NULL or writable.
int mmapkit_mutex_init(const struct mmapkit_segment_t *segment,
                       size_t offset,
                       struct mmapkit_mutex_t **out);

// Opens the mutex placed at payload `offset`.
//
// # Safety
// `out` is NULL or writable.
int mmapkit_mutex_open(const struct mmapkit_segment_t *segment,
                       size_t offset,
                       struct mmapkit_mutex_t **out);

// Locks, waiting up to `timeout_ms` milliseconds (negative: as long as it takes; 0: not at
// all, `MMAPKIT_EWOULDBLOCK` if held). `MMAPKIT_ETIMEDOUT` when time runs out.
// `MMAPKIT_EOWNERDIED` means the lock **is held** by the caller, taken from a holder that
// died: repair the data, `mmapkit_mutex_mark_consistent`, then unlock. Locking a mutex this
// thread already holds is `MMAPKIT_EINVAL` (it would wait for itself). A holder that
// `exec`s another program is gone about a second later (`MMAPKIT_EOWNERDIED`) when
// /proc/PID/maps can be read (the same user, or root); otherwise it keeps the lock until that
// program ends. A holder that execs a program which maps the same segment again is not told
// apart from itself: the lock stays its, and that program's lock is `MMAPKIT_EINVAL`.
//
// # Safety
// None beyond the C rules.
int mmapkit_mutex_lock(const struct mmapkit_mutex_t *mutex, int64_t timeout_ms);

// Unlocks a mutex this thread holds; `MMAPKIT_EINVAL` if it does not hold it.
//
// # Safety
// None beyond the C rules.
int mmapkit_mutex_unlock(const struct mmapkit_mutex_t *mutex);

// Declares the data repaired after `MMAPKIT_EOWNERDIED`; later lockers get `MMAPKIT_OK`
// again. The calling thread must hold the lock.
//
// # Safety
// None beyond the C rules.
int mmapkit_mutex_mark_consistent(const struct mmapkit_mutex_t *mutex);

// Closes the handle. A lock this thread holds stays held (unlock it through another handle
// of the same mutex) — but while no handle of its segment is open in this process, the
// segment is not mapped here, and other processes' waiters take the lock over as from a
// holder that exec'd (`MMAPKIT_EOWNERDIED`): keep a segment handle open until you unlock.
// NULL does nothing.
//
// # Safety
// None beyond the C rules.
int mmapkit_mutex_close(struct mmapkit_mutex_t *mutex);

// Places a new semaphore holding `initial` at payload `offset` (the creator only).
//
// # Safety
// `out` is NULL or writable.
int mmapkit_semaphore_init(const struct mmapkit_segment_t *segment,
                           size_t offset,
                           uint32_t initial,
                           struct mmapkit_semaphore_t **out);

// Opens the semaphore placed at payload `offset`.
//
// # Safety
// `out` is NULL or writable.
int mmapkit_semaphore_open(const struct mmapkit_segment_t *segment,
                           size_t offset,
                           struct mmapkit_semaphore_t **out);

// Adds one to the count, waking a waiter.
//
// # Safety
// None beyond the C rules.
int mmapkit_semaphore_post(const struct mmapkit_semaphore_t *semaphore);

// Takes one from the count, waiting up to `timeout_ms` for it to be positive (negative: as
// long as it takes; 0: `MMAPKIT_EWOULDBLOCK` at once if it is 0).
//
// # Safety
// None beyond the C rules.
int mmapkit_semaphore_wait(const struct mmapkit_semaphore_t *semaphore, int64_t timeout_ms);

// The current count.
//
// # Safety
// `value` is NULL or writable.
int mmapkit_semaphore_value(const struct mmapkit_semaphore_t *semaphore, uint32_t *value);

// Closes the handle. NULL does nothing.
//
// # Safety
// None beyond the C rules.
int mmapkit_semaphore_close(struct mmapkit_semaphore_t *semaphore);

// Places a new, unset event at payload `offset` (the creator only). With `auto_reset`
// non-zero, the waiter that sees it set clears it; otherwise it stays set until reset.
//
// # Safety
// `out` is NULL or writable.
int mmapkit_event_init(const struct mmapkit_segment_t *segment,
                       size_t offset,
                       int auto_reset,
                       struct mmapkit_event_t **out);

// Opens the event placed at payload `offset`.
//
// # Safety
// `out` is NULL or writable.
int mmapkit_event_open(const struct mmapkit_segment_t *segment,
                       size_t offset,
                       struct mmapkit_event_t **out);

// Sets the event, waking its waiters.
//
// # Safety
// None beyond the C rules.
int mmapkit_event_set(const struct mmapkit_event_t *event);

// Clears the event.
//
// # Safety
// None beyond the C rules.
int mmapkit_event_reset(const struct mmapkit_event_t *event);

// Whether the event is set: `*set` is 1 or 0.
//
// # Safety
// `set` is NULL or writable.
int mmapkit_event_is_set(const struct mmapkit_event_t *event, int *set);

// Waits up to `timeout_ms` for the event to be set (negative: as long as it takes; 0:
// `MMAPKIT_EWOULDBLOCK` at once if it is not).
//
// # Safety
// None beyond the C rules.
int mmapkit_event_wait(const struct mmapkit_event_t *event, int64_t timeout_ms);

// Closes the handle. NULL does nothing.
//
// # Safety
// None beyond the C rules.
int mmapkit_event_close(struct mmapkit_event_t *event);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* MMAPKIT_H */
