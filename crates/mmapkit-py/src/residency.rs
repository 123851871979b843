//! `mmapkit.Residency`: which pages of a range are in RAM.

use pyo3::exceptions::PyIndexError;
use pyo3::prelude::*;

/// Which pages of a mapping's range are in RAM (mincore).
#[derive(Debug)]
#[pyclass(name = "Residency", module = "mmapkit", frozen)]
pub struct PyResidency(mmapkit::Residency);

impl From<mmapkit::Residency> for PyResidency {
    fn from(residency: mmapkit::Residency) -> PyResidency {
        PyResidency(residency)
    }
}

#[pymethods]
impl PyResidency {
    /// Size of each page in bytes.
    #[getter]
    fn page_size(&self) -> usize {
        self.0.page_size()
    }

    /// Number of pages in the range.
    #[getter]
    fn pages(&self) -> usize {
        self.0.pages()
    }

    /// Number of those in RAM.
    #[getter]
    fn resident_pages(&self) -> usize {
        self.0.resident_pages()
    }

    /// Whether page `index` of the range is in RAM.
    fn is_resident(&self, index: usize) -> PyResult<bool> {
        if index >= self.0.pages() {
            return Err(PyIndexError::new_err(format!(
                "page {index} of {} pages",
                self.0.pages()
            )));
        }
        Ok(self.0.is_resident(index))
    }

    /// One bool per page.
    fn to_list(&self) -> Vec<bool> {
        self.0.iter().collect()
    }

    fn __len__(&self) -> usize {
        self.0.pages()
    }

    fn __repr__(&self) -> String {
        format!(
            "<mmapkit.Residency {}/{} pages of {} bytes resident>",
            self.0.resident_pages(),
            self.0.pages(),
            self.0.page_size()
        )
    }
}
