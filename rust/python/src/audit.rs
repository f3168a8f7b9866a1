//! Bindings of the audit log's kernels (`hybridsync_core::audit`).
//!
//! Hashes cross as 32-byte `bytes`; content to hash may be any C-contiguous
//! buffer (bytes, numpy arrays, memoryviews), read in place. Hashing large
//! inputs and verifying chains run without the GIL.

use hybridsync_core::audit::{self, Entry, Hash, HASH_LEN};
use pyo3::buffer::PyUntypedBuffer;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::{invalid, maybe_detach, CoreError};

fn bytes_of<'a>(buf: &'a PyUntypedBuffer, what: &str) -> PyResult<&'a [u8]> {
    if !buf.is_c_contiguous() {
        return Err(invalid(format!("{what} must be a C-contiguous buffer")));
    }
    let len = buf.len_bytes();
    if len == 0 {
        return Ok(&[]);
    }
    // SAFETY: the exporter guarantees `len_bytes` readable bytes at `buf_ptr`
    // while the buffer is held; the slice does not outlive `buf`.
    Ok(unsafe { std::slice::from_raw_parts(buf.buf_ptr() as *const u8, len) })
}

fn hash_arg(h: &[u8], what: &str) -> PyResult<Hash> {
    <Hash>::try_from(h).map_err(|_| invalid(format!("{what} must be {HASH_LEN} bytes")))
}

/// BLAKE3 of a buffer.
#[pyfunction]
pub fn audit_hash<'py>(py: Python<'py>, data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    let buf = PyUntypedBuffer::get(data)?;
    let b = bytes_of(&buf, "data")?;
    let h = maybe_detach(py, b.len(), || audit::content_hash(b));
    Ok(PyBytes::new(py, &h))
}

/// BLAKE3 of the concatenation of buffers.
#[pyfunction]
pub fn audit_hash_parts<'py>(
    py: Python<'py>,
    parts: Vec<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyBytes>> {
    let bufs = parts
        .iter()
        .map(PyUntypedBuffer::get)
        .collect::<PyResult<Vec<_>>>()?;
    let slices = bufs
        .iter()
        .map(|b| bytes_of(b, "part"))
        .collect::<PyResult<Vec<_>>>()?;
    let size = slices.iter().map(|s| s.len()).sum();
    let h = maybe_detach(py, size, || {
        audit::content_hash_parts(slices.iter().copied())
    });
    Ok(PyBytes::new(py, &h))
}

/// Encode an entry: returns its body and its hash.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn audit_entry<'py>(
    py: Python<'py>,
    seq: u64,
    time_ns: u64,
    channel: u8,
    kind: u8,
    origin: u8,
    subject: String,
    writer: String,
    via: String,
    writer_seq: u64,
    content: &[u8],
    prev: &[u8],
) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
    let e = Entry {
        seq,
        time_ns,
        channel,
        kind,
        origin,
        subject,
        writer,
        via,
        writer_seq,
        content: hash_arg(content, "content")?,
        prev: hash_arg(prev, "prev")?,
    };
    let body = audit::encode_entry(&e).map_err(CoreError)?;
    let h = audit::entry_hash(&body);
    Ok((PyBytes::new(py, &body), PyBytes::new(py, &h)))
}

/// An entry body's fields: (seq, time_ns, channel, kind, origin, subject,
/// writer, via, writer_seq, content, prev).
#[pyfunction]
#[allow(clippy::type_complexity)]
pub fn audit_decode_entry<'py>(
    py: Python<'py>,
    body: &[u8],
) -> PyResult<(
    u64,
    u64,
    u8,
    u8,
    u8,
    String,
    String,
    String,
    u64,
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
)> {
    let e = audit::decode_entry(body).map_err(CoreError)?;
    Ok((
        e.seq,
        e.time_ns,
        e.channel,
        e.kind,
        e.origin,
        e.subject,
        e.writer,
        e.via,
        e.writer_seq,
        PyBytes::new(py, &e.content),
        PyBytes::new(py, &e.prev),
    ))
}

/// The hash of an entry body.
#[pyfunction]
pub fn audit_entry_hash<'py>(py: Python<'py>, body: &[u8]) -> Bound<'py, PyBytes> {
    PyBytes::new(py, &audit::entry_hash(body))
}

/// Verify a run of length-prefixed entry bodies: (entries that verified,
/// hash of the last good one, why the next failed or None).
#[pyfunction]
pub fn audit_verify_chain<'py>(
    py: Python<'py>,
    buf: &[u8],
    first_seq: u64,
    prev: &[u8],
) -> PyResult<(usize, Bound<'py, PyBytes>, Option<String>)> {
    let prev = hash_arg(prev, "prev")?;
    let v = maybe_detach(py, buf.len(), || audit::verify_chain(buf, first_seq, &prev));
    Ok((v.good, PyBytes::new(py, &v.head), v.error))
}

/// The bytes a replica signs for its log head.
#[pyfunction]
pub fn audit_head_message<'py>(
    py: Python<'py>,
    replica: &str,
    seq: u64,
    head: &[u8],
    time_ns: u64,
) -> PyResult<Bound<'py, PyBytes>> {
    let head = hash_arg(head, "head")?;
    let msg = audit::head_message(replica, seq, &head, time_ns).map_err(CoreError)?;
    Ok(PyBytes::new(py, &msg))
}
