//! The extension module `mmapkit._mmapkit`, which the Python package `mmapkit` re-exports.
//!
//! It wraps the Rust library and reimplements nothing: every mapping, copy and check is the
//! library's. What is Python's lives here: the exception classes of `_errors.py`, the buffer
//! protocol (offered only for exclusive memory), and the GIL (released around copies and
//! system calls that cannot touch memory Python holds).

use pyo3::prelude::*;

mod buffers;
mod channel;
mod closable;
mod endpoints;
mod errors;
mod events;
mod inspect;
mod mapping;
mod peer_waits;
mod residency;
mod segment;
mod stale;
mod sync;

#[pymodule]
fn _mmapkit(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<mapping::PyMapping>()?;
    module.add_class::<residency::PyResidency>()?;
    module.add_function(wrap_pyfunction!(mapping::map_file, module)?)?;
    module.add_function(wrap_pyfunction!(mapping::map_anonymous, module)?)?;
    module.add_class::<segment::PySegment>()?;
    module.add_function(wrap_pyfunction!(segment::create_segment, module)?)?;
    module.add_function(wrap_pyfunction!(segment::open_segment, module)?)?;
    module.add_function(wrap_pyfunction!(segment::create_memfd, module)?)?;
    module.add_function(wrap_pyfunction!(segment::unlink_segment, module)?)?;
    module.add_function(wrap_pyfunction!(segment::segment_from_fd, module)?)?;
    module.add_class::<sync::PyMutex>()?;
    module.add_class::<sync::PyMutexGuard>()?;
    module.add_class::<sync::PyCondvar>()?;
    module.add_class::<events::PySemaphore>()?;
    module.add_class::<events::PyEvent>()?;
    module.add_class::<channel::PyByteChannel>()?;
    module.add_class::<endpoints::PyByteSender>()?;
    module.add_class::<endpoints::PyByteReceiver>()?;
    module.add_function(wrap_pyfunction!(channel::channel_from_fds, module)?)?;
    module.add("PEER_GRACE", mmapkit::channel::PEER_GRACE.as_secs_f64())?;
    module.add_function(wrap_pyfunction!(stale::list_segments, module)?)?;
    module.add_function(wrap_pyfunction!(stale::cleanup_segments, module)?)?;
    module.add_function(wrap_pyfunction!(inspect::residency_of, module)?)?;
    module.add_function(wrap_pyfunction!(inspect::touch, module)?)?;
    module.add_function(wrap_pyfunction!(inspect::evict, module)?)?;
    module.add_function(wrap_pyfunction!(inspect::maps, module)?)?;
    Ok(())
}
