//! `mmapkit.shm.list()` and `cleanup()`: the objects in /dev/shm and the stale ones removed.
//! The Python side turns the tuples into `SegmentInfo` dataclasses.

use pyo3::prelude::*;

use crate::errors::IntoPy;

/// One object of /dev/shm: name, size, uid, mode, type tag (None without an mmapkit header),
/// creator pid, whether the creator runs, the pids using it, and whether it is stale.
type Listed = (
    String,
    u64,
    u32,
    u32,
    Option<String>,
    Option<u32>,
    Option<bool>,
    Vec<u32>,
    bool,
);

/// Every regular file in /dev/shm, with what can be learned about it.
#[pyfunction]
pub fn list_segments(py: Python<'_>) -> PyResult<Vec<Listed>> {
    let listed = py.detach(mmapkit::shm::stale::list).py()?;
    Ok(listed
        .into_iter()
        .map(|info| {
            let stale = info.is_stale();
            (
                info.name,
                info.size,
                info.uid,
                info.mode,
                info.header
                    .as_ref()
                    .map(|header| header.type_tag.as_str().into_owned()),
                info.header.as_ref().map(|header| header.creator.pid),
                info.creator_alive,
                info.users,
                stale,
            )
        })
        .collect())
}

/// What `cleanup` did: the names removed, and the names that could not be with the reason.
type CleanedUp = (Vec<String>, Vec<(String, String)>);

/// Unlinks the stale segments (mmapkit segments whose creator died and that nobody uses);
/// returns the names removed and, for those that could not be, the name and the reason.
#[pyfunction]
pub fn cleanup_segments(py: Python<'_>) -> PyResult<CleanedUp> {
    let outcome = py.detach(mmapkit::shm::stale::cleanup).py()?;
    Ok((
        outcome.removed,
        outcome
            .failed
            .into_iter()
            .map(|(name, error)| (name, error.to_string()))
            .collect(),
    ))
}
