//! The files under some paths, each once: what a residency tool walks.
//!
//! Directories are walked depth-first in name order. Each regular file is handed over open
//! (read-only, non-blocking, so nothing in the walk can hang on a FIFO that was swapped in),
//! a file met again (another hard link, a symbolic link followed to it, a root naming it
//! twice) only once unless asked otherwise, and everything else is
//! reported: skipped entries (FIFOs, sockets, devices, symbolic links not followed, other
//! file systems, filtered names) with the reason, and failures (unreadable directories and
//! files) with the error — the walk always goes on.

use std::collections::HashSet;
use std::fs::{File, Metadata};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::residency::open_regular;
use crate::Error;

/// Why a file met again is skipped.
pub const ALREADY_COUNTED: &str = "already counted";

/// How to walk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalkOptions {
    /// Follow symbolic links found inside directories (the paths given are always followed).
    /// Directory loops are detected and skipped.
    pub follow_symlinks: bool,
    /// Do not enter directories on another file system than the path given.
    pub one_file_system: bool,
    /// Report a file every time it is met (each hard link, each symbolic link followed to
    /// it, each root naming it), instead of the first time only.
    pub count_hardlinks: bool,
}

/// What the walk met.
#[derive(Debug)]
pub enum Entry<'a> {
    /// A regular file, open for reading.
    File {
        /// Where it was found.
        path: &'a Path,
        /// Open read-only.
        file: File,
        /// Its metadata when opened.
        metadata: Metadata,
    },
    /// A directory about to be entered.
    Directory {
        /// Where it was found.
        path: &'a Path,
    },
    /// An entry left out.
    Skipped {
        /// Where it was found.
        path: &'a Path,
        /// Why it was left out.
        reason: &'static str,
    },
    /// An entry that could not be read; the walk goes on.
    Failed {
        /// Where it was found.
        path: &'a Path,
        /// What went wrong.
        error: Error,
    },
}

/// Walks `roots`, calling `visit` for every entry. `keep(path, is_directory)` filters: an
/// entry it refuses is skipped (and a refused directory is not entered).
pub fn walk<P: AsRef<Path>>(
    roots: &[P],
    options: &WalkOptions,
    mut keep: impl FnMut(&Path, bool) -> bool,
    mut visit: impl FnMut(Entry<'_>),
) {
    let mut files_seen: HashSet<(u64, u64)> = HashSet::new();
    let mut directories_seen: HashSet<(u64, u64)> = HashSet::new();
    for root in roots {
        let root = root.as_ref();
        let root_metadata = match std::fs::metadata(root) {
            Ok(metadata) => metadata,
            Err(error) => {
                visit(Entry::Failed {
                    path: root,
                    error: Error::io("stat", &error).with_path(root),
                });
                continue;
            }
        };
        let root_device = root_metadata.dev();
        let mut stack: Vec<(PathBuf, bool)> = vec![(root.to_path_buf(), true)];
        while let Some((path, is_root)) = stack.pop() {
            let metadata = if is_root {
                Ok(root_metadata.clone())
            } else {
                std::fs::symlink_metadata(&path)
            };
            let mut metadata = match metadata {
                Ok(metadata) => metadata,
                Err(error) => {
                    let error = Error::io("stat", &error).with_path(&path);
                    visit(Entry::Failed { path: &path, error });
                    continue;
                }
            };
            let mut followed = is_root;
            if metadata.file_type().is_symlink() {
                if !options.follow_symlinks {
                    visit(Entry::Skipped {
                        path: &path,
                        reason: "symbolic link (not followed)",
                    });
                    continue;
                }
                match std::fs::metadata(&path) {
                    Ok(target) => metadata = target,
                    Err(error) => {
                        let error = Error::io("stat", &error).with_path(&path);
                        visit(Entry::Failed { path: &path, error });
                        continue;
                    }
                }
                followed = true;
            }
            let is_directory = metadata.is_dir();
            if !is_root && !keep(&path, is_directory) {
                visit(Entry::Skipped {
                    path: &path,
                    reason: "filtered out",
                });
                continue;
            }
            if options.one_file_system && metadata.dev() != root_device {
                visit(Entry::Skipped {
                    path: &path,
                    reason: "on another file system",
                });
                continue;
            }
            let identity = (metadata.dev(), metadata.ino());
            if is_directory {
                if !directories_seen.insert(identity) {
                    visit(Entry::Skipped {
                        path: &path,
                        reason: "directory already walked (reached again through a link)",
                    });
                    continue;
                }
                visit(Entry::Directory { path: &path });
                match children(&path) {
                    Ok((children, errors)) => {
                        for error in errors {
                            visit(Entry::Failed { path: &path, error });
                        }
                        stack.extend(children.into_iter().rev().map(|child| (child, false)));
                    }
                    Err(error) => visit(Entry::Failed { path: &path, error }),
                }
                continue;
            }
            if !metadata.is_file() {
                visit(Entry::Skipped {
                    path: &path,
                    reason: kind_name(&metadata),
                });
                continue;
            }
            if !options.count_hardlinks && !files_seen.insert(identity) {
                visit(Entry::Skipped {
                    path: &path,
                    reason: ALREADY_COUNTED,
                });
                continue;
            }
            match open_regular(&path, followed) {
                Ok(file) => {
                    let metadata = file.metadata().unwrap_or(metadata);
                    visit(Entry::File {
                        path: &path,
                        file,
                        metadata,
                    });
                }
                Err(error) => visit(Entry::Failed { path: &path, error }),
            }
        }
    }
}

/// The entries of a directory, sorted by name, and the errors met while reading it (an I/O
/// error part way through leaves the walk of that directory incomplete, and says so).
fn children(directory: &Path) -> Result<(Vec<PathBuf>, Vec<Error>), Error> {
    let read = |error: std::io::Error| Error::io("read directory", &error).with_path(directory);
    let entries = std::fs::read_dir(directory).map_err(read)?;
    let mut paths = Vec::new();
    let mut errors = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) => paths.push(entry.path()),
            Err(error) => errors.push(read(error)),
        }
    }
    paths.sort();
    Ok((paths, errors))
}

fn kind_name(metadata: &Metadata) -> &'static str {
    let kind = metadata.file_type();
    if kind.is_fifo() {
        "FIFO"
    } else if kind.is_socket() {
        "socket"
    } else if kind.is_block_device() || kind.is_char_device() {
        "device"
    } else {
        "not a regular file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The walk's events as `(kind, path relative to the root)`.
    fn events(root: &Path, options: &WalkOptions) -> Vec<(String, String)> {
        let mut seen = Vec::new();
        walk(
            &[root],
            options,
            |path, _| !path.ends_with("ignored"),
            |entry| {
                let (kind, path) = match entry {
                    Entry::File { path, .. } => ("file", path),
                    Entry::Directory { path } => ("dir", path),
                    Entry::Skipped { path, reason } => (reason, path),
                    Entry::Failed { path, .. } => ("failed", path),
                };
                let relative = path
                    .strip_prefix(root)
                    .unwrap_or(path)
                    .display()
                    .to_string();
                seen.push((kind.to_string(), relative));
            },
        );
        seen
    }

    #[test]
    fn a_tree_is_walked_once_per_file_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::write(root.join("b"), b"b").unwrap();
        std::fs::write(root.join("sub/a"), b"a").unwrap();
        std::fs::hard_link(root.join("b"), root.join("c-link")).unwrap();
        std::fs::write(root.join("ignored"), b"x").unwrap();
        std::os::unix::fs::symlink(root.join("sub"), root.join("d-symlink")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let plain = events(root, &WalkOptions::default());
        let expect = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert_eq!(
            plain,
            expect(&[
                ("dir", ""),
                ("file", "b"),
                (ALREADY_COUNTED, "c-link"),
                ("symbolic link (not followed)", "d-symlink"),
                ("FIFO", "fifo"),
                ("filtered out", "ignored"),
                ("dir", "sub"),
                ("file", "sub/a"),
            ])
        );
        let following = WalkOptions {
            follow_symlinks: true,
            count_hardlinks: true,
            ..WalkOptions::default()
        };
        let followed = events(root, &following);
        assert!(followed.contains(&("file".into(), "c-link".into())));
        assert!(followed.contains(&(
            "directory already walked (reached again through a link)".into(),
            "sub".into()
        )));
        assert!(followed.contains(&("file".into(), "d-symlink/a".into())));
    }

    #[test]
    fn missing_roots_fail_and_the_walk_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        let mut kinds = Vec::new();
        let roots = [dir.path().join("missing"), dir.path().join("f")];
        walk(
            &roots,
            &WalkOptions::default(),
            |_, _| true,
            |entry| {
                kinds.push(match entry {
                    Entry::Failed { .. } => "failed",
                    Entry::File { .. } => "file",
                    _ => "other",
                });
            },
        );
        assert_eq!(kinds, ["failed", "file"]);
    }
}
