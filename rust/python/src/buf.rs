//! Contiguous buffers lent by Python objects, asked for as plain bytes.
//!
//! `PyUntypedBuffer::get` asks for the full buffer description (format,
//! shape, strides): a numpy array then builds its PEP 3118 format string
//! (hundreds of instructions) each time an array crosses. The
//! kernels read and write raw bytes only, so they ask for a simple
//! (C-contiguous, formatless) buffer instead; when an object refuses that,
//! the full request is made, and refused with the errors the bindings
//! always raised when it is not C-contiguous (or not writable).

use std::marker::PhantomData;

use pyo3::ffi;
use pyo3::prelude::*;

use crate::invalid;

/// The buffer of a Python object, held (and the object kept alive) while
/// this lives. Never leaves the thread that holds the GIL.
pub struct Buf<'py> {
    /// Boxed: exporters may rely on the view's address staying put.
    raw: Box<ffi::Py_buffer>,
    _py: PhantomData<Python<'py>>,
}

impl<'py> Buf<'py> {
    /// A readable C-contiguous buffer of `obj` (`what` names it in errors).
    pub fn get(obj: &Bound<'py, PyAny>, what: &str) -> PyResult<Self> {
        Self::request(obj, what, false)
    }

    /// A writable C-contiguous buffer of `obj`.
    pub fn get_mut(obj: &Bound<'py, PyAny>, what: &str) -> PyResult<Self> {
        Self::request(obj, what, true)
    }

    fn request(obj: &Bound<'py, PyAny>, what: &str, writable: bool) -> PyResult<Self> {
        let flags = if writable {
            ffi::PyBUF_WRITABLE
        } else {
            ffi::PyBUF_SIMPLE
        };
        if let Some(b) = Self::with_flags(obj, flags) {
            return Ok(b);
        }
        let refused = PyErr::fetch(obj.py());
        if !refused.is_instance_of::<pyo3::exceptions::PyException>(obj.py()) {
            return Err(refused); // KeyboardInterrupt and the like: not a refusal
        }
        // The full description, which every exporter serves (an object
        // that is no buffer raises here, as it always did); then tell what
        // is wrong with it, or use it. Writable: asked of the exporter again.
        let full = if writable {
            ffi::PyBUF_FULL
        } else {
            ffi::PyBUF_FULL_RO
        };
        let Some(b) = Self::with_flags(obj, full) else {
            let err = PyErr::fetch(obj.py());
            if writable && Self::with_flags(obj, ffi::PyBUF_FULL_RO).is_some() {
                // A buffer, but its exporter does not let it be written.
                return Err(invalid(format!("{what} must be a writable buffer")));
            }
            if writable {
                drop(PyErr::take(obj.py())); // the read-only request's own error
            }
            return Err(err);
        };
        if writable && b.raw.readonly != 0 {
            return Err(invalid(format!("{what} must be a writable buffer")));
        }
        // SAFETY: `b.raw` is a buffer obtained above and still held.
        if unsafe { ffi::PyBuffer_IsContiguous(&*b.raw, b'C' as std::ffi::c_char) } == 0 {
            return Err(invalid(format!("{what} must be a C-contiguous buffer")));
        }
        Ok(b)
    }

    /// The buffer asked for with `flags`, or None with the exporter's error set.
    fn with_flags(obj: &Bound<'py, PyAny>, flags: std::ffi::c_int) -> Option<Self> {
        let mut raw = Box::new(ffi::Py_buffer::new());
        // SAFETY: `raw` is a valid `Py_buffer`; on success the exporter has
        // filled it in, and it is released once, on drop.
        let rc = unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), &mut *raw, flags) };
        (rc == 0).then(|| Buf {
            raw,
            _py: PhantomData,
        })
    }

    /// Bytes in the buffer.
    pub fn len(&self) -> usize {
        usize::try_from(self.raw.len).unwrap_or(0)
    }

    /// Address of the first byte.
    pub fn ptr(&self) -> usize {
        self.raw.buf as usize
    }

    /// The buffer's bytes.
    pub fn bytes(&self) -> &[u8] {
        let len = self.len();
        if len == 0 || self.raw.buf.is_null() {
            return &[];
        }
        // SAFETY: the exporter guarantees `len` readable bytes at `buf`
        // while the buffer is held; the slice does not outlive `self`.
        // Another thread writing the same memory meanwhile yields
        // unspecified values, never out-of-bounds access.
        unsafe { std::slice::from_raw_parts(self.raw.buf as *const u8, len) }
    }

    /// The buffer's bytes, for writing (a buffer from [`Buf::get_mut`]).
    #[allow(clippy::mut_from_ref)] // the buffer protocol hands out the memory
    pub fn bytes_mut(&self, what: &str) -> PyResult<&mut [u8]> {
        if self.raw.readonly != 0 {
            return Err(invalid(format!("{what} must be a writable buffer")));
        }
        let len = self.len();
        if len == 0 || self.raw.buf.is_null() {
            return Ok(&mut []);
        }
        // SAFETY: as in `bytes`, and the exporter lent the memory writable.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.raw.buf as *mut u8, len) })
    }

    /// True when the two buffers share memory.
    pub fn overlaps(&self, other: &Buf<'_>) -> bool {
        let (a0, b0) = (self.ptr(), other.ptr());
        let (a1, b1) = (a0 + self.len(), b0 + other.len());
        self.len() > 0 && other.len() > 0 && a0 < b1 && b0 < a1
    }
}

impl Drop for Buf<'_> {
    fn drop(&mut self) {
        // SAFETY: obtained by a successful `PyObject_GetBuffer` and released
        // once; `Buf` is not `Send`, so the thread still holds the GIL.
        unsafe { ffi::PyBuffer_Release(&mut *self.raw) }
    }
}
