//! The one error type of the library.
//!
//! Every failure is an [`Error`]: a [`ErrorKind`] a caller can `match` on, plus the context a
//! person needs to act on it — the operation, the path (when known), the offset and length that
//! were asked for, the OS error, and where there is one, a hint at the fix. The `Display` form
//! reads as one sentence, e.g.
//!
//! ```text
//! map /var/log/app.log (offset 8192, len 4096): offset is past the end of the file (size 100)
//! ```
//!
//! The error is one pointer wide so that `Result<usize>` on hot paths stays small.

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Result with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, in a form a caller can match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The file, device or segment does not exist.
    NotFound,
    /// The OS refused: file modes, read-only descriptors, sealed mappings, resource limits on
    /// privileged operations.
    PermissionDenied,
    /// An argument is wrong in itself: zero length, overflow, misalignment, a directory, write
    /// and execute together without the unsafe opt-in.
    InvalidInput,
    /// An offset or range lies outside the mapping or the file.
    OutOfBounds,
    /// The memory can be changed by someone else (another process, another mapping of the same
    /// file), so it cannot be borrowed as a Rust reference. Use the copying accessors instead.
    NotExclusive,
    /// The file behind a mapping no longer covers the accessed bytes: it was truncated (or the
    /// page could not be read). Reported by the fault guard instead of a SIGBUS.
    Truncated,
    /// Something already occupies the requested address or name.
    AlreadyExists,
    /// The kernel is out of memory, address space, huge pages, lockable memory or file
    /// descriptors (`EMFILE`, `ENFILE`: a process or system limit).
    OutOfMemory,
    /// The file system (for shared memory: the tmpfs behind /dev/shm) is full.
    NoSpace,
    /// Bytes from outside failed validation: a header, an index or a length another
    /// process wrote in shared memory is impossible, or a file or /proc text does not parse.
    /// Nothing out of bounds was touched.
    Corrupt,
    /// A valid object of another layout version, type or size than the one asked for.
    Incompatible,
    /// A wait ran out of time.
    Timeout,
    /// The owner of a lock died holding it; the data it protects may be inconsistent.
    OwnerDied,
    /// The other end of a channel is gone (closed, or its process died), or none attached
    /// within the time a call without a deadline waits for one.
    Disconnected,
    /// The operation would have to wait (a full channel for `try_send`, a held lock).
    WouldBlock,
    /// The kernel, file system or architecture does not offer the operation.
    Unsupported,
    /// A pager's store failed to read or write a page; the store's own error is the source.
    Store,
    /// Any other OS error.
    Io,
}

impl ErrorKind {
    /// The kind an OS error number belongs to.
    pub fn from_errno(errno: i32) -> ErrorKind {
        match errno {
            libc::ENOENT | libc::ENXIO => ErrorKind::NotFound,
            libc::EACCES | libc::EPERM | libc::EROFS | libc::ETXTBSY => ErrorKind::PermissionDenied,
            libc::EINVAL | libc::EBADF | libc::EISDIR | libc::EOVERFLOW => ErrorKind::InvalidInput,
            libc::EEXIST => ErrorKind::AlreadyExists,
            libc::ENOMEM | libc::EAGAIN | libc::EMFILE | libc::ENFILE => ErrorKind::OutOfMemory,
            libc::ENOSPC | libc::EFBIG | libc::EDQUOT => ErrorKind::NoSpace,
            libc::ENOSYS | libc::ENODEV | libc::EOPNOTSUPP => ErrorKind::Unsupported,
            _ => ErrorKind::Io,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::OutOfBounds => "out of bounds",
            ErrorKind::NotExclusive => "memory is not exclusive to this mapping",
            ErrorKind::Truncated => "the mapped file was truncated",
            ErrorKind::AlreadyExists => "already exists",
            ErrorKind::OutOfMemory => "out of memory",
            ErrorKind::NoSpace => "no space left",
            ErrorKind::Corrupt => "corrupt shared data",
            ErrorKind::Incompatible => "incompatible",
            ErrorKind::Timeout => "timed out",
            ErrorKind::OwnerDied => "the lock's owner died",
            ErrorKind::Disconnected => "disconnected",
            ErrorKind::WouldBlock => "would block",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Store => "the store failed",
            ErrorKind::Io => "I/O error",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// An error with its kind and context. See the [module docs](self).
pub struct Error(Box<Inner>);

struct Inner {
    kind: ErrorKind,
    operation: &'static str,
    message: Cow<'static, str>,
    path: Option<PathBuf>,
    offset: Option<u64>,
    len: Option<u64>,
    os: Option<io::Error>,
    hint: Option<Cow<'static, str>>,
}

impl Error {
    /// An error of `kind` raised by `operation`, saying `message`.
    pub fn new(
        kind: ErrorKind,
        operation: &'static str,
        message: impl Into<Cow<'static, str>>,
    ) -> Error {
        Error(Box::new(Inner {
            kind,
            operation,
            message: message.into(),
            path: None,
            offset: None,
            len: None,
            os: None,
            hint: None,
        }))
    }

    /// An error from an OS error number; the kind follows from the number.
    pub fn os(operation: &'static str, errno: rustix::io::Errno) -> Error {
        let os = io::Error::from_raw_os_error(errno.raw_os_error());
        let mut error = Error::new(
            ErrorKind::from_errno(errno.raw_os_error()),
            operation,
            os_message(&os),
        );
        error.0.os = Some(os);
        error
    }

    /// An error from a `std::io::Error` (opening a file, say).
    pub fn io(operation: &'static str, error: &io::Error) -> Error {
        if let Some(errno) = error.raw_os_error() {
            return Error::os(operation, rustix::io::Errno::from_raw_os_error(errno));
        }
        // An error std or a library made up: its kind and its text.
        let kind = match error.kind() {
            io::ErrorKind::NotFound => ErrorKind::NotFound,
            io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
            io::ErrorKind::InvalidInput => ErrorKind::InvalidInput,
            io::ErrorKind::InvalidData => ErrorKind::Corrupt,
            io::ErrorKind::UnexpectedEof => ErrorKind::Truncated,
            io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
            io::ErrorKind::OutOfMemory => ErrorKind::OutOfMemory,
            io::ErrorKind::StorageFull => ErrorKind::NoSpace,
            io::ErrorKind::TimedOut => ErrorKind::Timeout,
            io::ErrorKind::WouldBlock => ErrorKind::WouldBlock,
            io::ErrorKind::Unsupported => ErrorKind::Unsupported,
            _ => ErrorKind::Io,
        };
        let mut wrapped = Error::new(kind, operation, error.to_string());
        wrapped.0.os = Some(io::Error::new(error.kind(), error.to_string()));
        wrapped
    }

    /// An error a pager's store reported: kind [`ErrorKind::Store`] — or
    /// [`ErrorKind::Truncated`] when the store says its bytes end early
    /// (`io::ErrorKind::UnexpectedEof`: a file store whose file shrank) — the store's message,
    /// and the store's error (its kind and text) as the source.
    pub fn store(operation: &'static str, error: &io::Error) -> Error {
        let kind = match error.kind() {
            io::ErrorKind::UnexpectedEof => ErrorKind::Truncated,
            _ => ErrorKind::Store,
        };
        let mut wrapped = Error::new(kind, operation, error.to_string());
        wrapped.0.os = Some(match error.raw_os_error() {
            Some(errno) => io::Error::from_raw_os_error(errno),
            None => io::Error::new(error.kind(), error.to_string()),
        });
        if error.raw_os_error().is_some() {
            wrapped.0.message = os_message(error).into();
        }
        wrapped
    }

    /// Adds the path the operation was about.
    pub fn with_path(mut self, path: impl AsRef<Path>) -> Error {
        self.0.path = Some(path.as_ref().to_path_buf());
        self
    }

    /// Adds the offset and length the operation was asked for.
    pub fn with_range(mut self, offset: u64, len: u64) -> Error {
        self.0.offset = Some(offset);
        self.0.len = Some(len);
        self
    }

    /// Adds the offset the operation was asked for.
    pub fn with_offset(mut self, offset: u64) -> Error {
        self.0.offset = Some(offset);
        self
    }

    /// Adds a hint: what the caller can do about it.
    pub fn with_hint(mut self, hint: impl Into<Cow<'static, str>>) -> Error {
        self.0.hint = Some(hint.into());
        self
    }

    /// Replaces the kind, for callers that know better than the errno mapping.
    pub fn with_kind(mut self, kind: ErrorKind) -> Error {
        self.0.kind = kind;
        self
    }

    /// The same error, reported as raised by `operation` (a call made on behalf of another).
    pub fn with_operation(mut self, operation: &'static str) -> Error {
        self.0.operation = operation;
        self
    }

    /// Replaces the message, keeping the OS error as the source.
    pub fn with_message(mut self, message: impl Into<Cow<'static, str>>) -> Error {
        self.0.message = message.into();
        self
    }

    /// What went wrong, to match on.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// The operation that failed (`"map"`, `"protect"`, `"read_at"`, …).
    pub fn operation(&self) -> &'static str {
        self.0.operation
    }

    /// The path the operation was about, when known.
    pub fn path(&self) -> Option<&Path> {
        self.0.path.as_deref()
    }

    /// The offset asked for, when the operation had one.
    pub fn offset(&self) -> Option<u64> {
        self.0.offset
    }

    /// The length asked for, when the operation had one.
    pub fn length(&self) -> Option<u64> {
        self.0.len
    }

    /// The OS error number, when the OS reported the failure.
    pub fn raw_os_error(&self) -> Option<i32> {
        self.0.os.as_ref().and_then(io::Error::raw_os_error)
    }

    /// The hint, when there is one.
    pub fn hint(&self) -> Option<&str> {
        self.0.hint.as_deref()
    }
}

/// `strerror` text without std's " (os error N)" suffix, which `Display` adds once.
fn os_message(os: &io::Error) -> String {
    let text = os.to_string();
    match text.find(" (os error") {
        Some(end) => text[..end].to_lowercase(),
        None => text,
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.0;
        f.write_str(inner.operation)?;
        if let Some(path) = inner
            .path
            .as_ref()
            .filter(|path| !path.as_os_str().is_empty())
        {
            write!(f, " {}", path.display())?;
        }
        match (inner.offset, inner.len) {
            (Some(offset), Some(len)) => write!(f, " (offset {offset}, len {len})")?,
            (Some(offset), None) => write!(f, " (offset {offset})")?,
            _ => {}
        }
        write!(f, ": {}", inner.message)?;
        if let Some(errno) = self.raw_os_error() {
            write!(f, " (os error {errno})")?;
        }
        if let Some(hint) = &inner.hint {
            write!(f, "; {hint}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.0.kind)
            .field("message", &self.to_string())
            .finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0
            .os
            .as_ref()
            .map(|os| os as &(dyn std::error::Error + 'static))
    }
}

impl From<Error> for io::Error {
    fn from(error: Error) -> io::Error {
        let kind = match error.kind() {
            ErrorKind::NotFound => io::ErrorKind::NotFound,
            ErrorKind::PermissionDenied => io::ErrorKind::PermissionDenied,
            ErrorKind::InvalidInput | ErrorKind::OutOfBounds => io::ErrorKind::InvalidInput,
            ErrorKind::Truncated => io::ErrorKind::UnexpectedEof,
            ErrorKind::AlreadyExists => io::ErrorKind::AlreadyExists,
            ErrorKind::OutOfMemory => io::ErrorKind::OutOfMemory,
            ErrorKind::NoSpace => io::ErrorKind::StorageFull,
            ErrorKind::Corrupt => io::ErrorKind::InvalidData,
            ErrorKind::Timeout => io::ErrorKind::TimedOut,
            ErrorKind::Disconnected => io::ErrorKind::BrokenPipe,
            ErrorKind::WouldBlock => io::ErrorKind::WouldBlock,
            ErrorKind::Unsupported => io::ErrorKind::Unsupported,
            ErrorKind::NotExclusive
            | ErrorKind::Incompatible
            | ErrorKind::OwnerDied
            | ErrorKind::Store
            | ErrorKind::Io => io::ErrorKind::Other,
        };
        io::Error::new(kind, error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_reads_as_one_sentence() {
        let error = Error::os("map", rustix::io::Errno::ACCESS)
            .with_path("/tmp/x")
            .with_range(4096, 8192)
            .with_hint("open the file read-write");
        assert_eq!(error.kind(), ErrorKind::PermissionDenied);
        assert_eq!(
            error.to_string(),
            "map /tmp/x (offset 4096, len 8192): permission denied (os error 13); \
             open the file read-write"
        );
    }

    #[test]
    fn converts_to_io_error_with_matching_kind() {
        let error = Error::new(ErrorKind::Truncated, "read_at", "gone");
        let io: io::Error = error.into();
        assert_eq!(io.kind(), io::ErrorKind::UnexpectedEof);
        assert!(io.to_string().contains("read_at: gone"));
    }

    #[test]
    fn error_is_one_pointer_wide() {
        assert_eq!(std::mem::size_of::<Error>(), std::mem::size_of::<usize>());
    }
}
