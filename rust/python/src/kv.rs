//! Bindings of the KV-cache kernels (`hybridsync_core::kv`).
//!
//! Arrays cross as buffers (numpy arrays, bytes, bytearrays, memoryviews):
//! any C-contiguous buffer is read as raw bytes without a copy, outputs are
//! written into caller-owned writable buffers, and the GIL is released
//! around the kernels. The Python layer (`hybridsync.kv`) checks dtypes and
//! shapes; here only byte sizes are checked (by the core crate).

use hybridsync_core::kv::{self, Float, Format, PageLayout};
use pyo3::buffer::PyUntypedBuffer;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::{invalid, maybe_detach, CoreError};

/// A contiguous buffer's bytes.
fn bytes_of<'a>(buf: &'a PyUntypedBuffer, what: &str) -> PyResult<&'a [u8]> {
    if !buf.is_c_contiguous() {
        return Err(invalid(format!("{what} must be a C-contiguous buffer")));
    }
    let len = buf.len_bytes();
    if len == 0 {
        return Ok(&[]);
    }
    // SAFETY: the exporter guarantees `len_bytes` readable bytes at `buf_ptr`
    // while the buffer is held; the slice does not outlive `buf`. Another
    // thread writing the same memory meanwhile yields unspecified values,
    // never out-of-bounds access.
    Ok(unsafe { std::slice::from_raw_parts(buf.buf_ptr() as *const u8, len) })
}

/// A contiguous writable buffer's bytes.
#[allow(clippy::mut_from_ref)] // the buffer protocol hands out the memory
fn bytes_of_mut<'a>(buf: &'a PyUntypedBuffer, what: &str) -> PyResult<&'a mut [u8]> {
    if buf.readonly() {
        return Err(invalid(format!("{what} must be a writable buffer")));
    }
    if !buf.is_c_contiguous() {
        return Err(invalid(format!("{what} must be a C-contiguous buffer")));
    }
    let len = buf.len_bytes();
    if len == 0 {
        return Ok(&mut []);
    }
    // SAFETY: as in `bytes_of`, and the exporter says the memory is writable.
    Ok(unsafe { std::slice::from_raw_parts_mut(buf.buf_ptr() as *mut u8, len) })
}

fn typed<T: FromLe>(b: &[u8], what: &str) -> PyResult<Vec<T>> {
    let size = std::mem::size_of::<T>();
    if b.len() % size != 0 {
        return Err(invalid(format!(
            "{what} is not a whole number of {size}-byte values"
        )));
    }
    Ok(b.chunks_exact(size).map(T::from_le).collect())
}

trait FromLe {
    fn from_le(b: &[u8]) -> Self;
}

impl FromLe for u32 {
    fn from_le(b: &[u8]) -> Self {
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
}

impl FromLe for u64 {
    fn from_le(b: &[u8]) -> Self {
        u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    }
}

fn float_arg(name: &str) -> PyResult<Float> {
    match name {
        "f32" => Ok(Float::F32),
        "f16" => Ok(Float::F16),
        "bf16" => Ok(Float::BF16),
        other => Err(invalid(format!(
            "unknown float type {other:?}: use 'f32', 'f16' or 'bf16'"
        ))),
    }
}

fn format_arg(fmt: &str, scale_type: &str) -> PyResult<Format> {
    match fmt {
        "q4_0" => Ok(Format::Q4_0),
        "q8_0" => Ok(Format::Q8_0),
        "f16" => Ok(Format::F16),
        "mlx4" => Ok(Format::Mlx4(float_arg(scale_type)?)),
        other => Err(invalid(format!(
            "unknown format {other:?}: use 'q4_0', 'q8_0', 'f16' or 'mlx4'"
        ))),
    }
}

fn layout(
    heads: usize,
    capacity: usize,
    row_bytes: usize,
    page_rows: usize,
    rows: usize,
) -> PageLayout {
    PageLayout {
        heads,
        capacity,
        row_bytes,
        page_rows,
        rows,
    }
}

/// Bytes of one quantized row of `n` values.
#[pyfunction]
#[pyo3(signature = (fmt, n, scale_type="f16"))]
pub fn kv_row_bytes(fmt: &str, n: usize, scale_type: &str) -> PyResult<usize> {
    Ok(format_arg(fmt, scale_type)?
        .row_bytes(n)
        .map_err(CoreError)?)
}

/// Quantize rows of `n` raw `src_type` values into `dst`.
#[pyfunction]
#[pyo3(signature = (src, src_type, n, fmt, dst, scale_type="f16"))]
pub fn kv_quantize(
    py: Python<'_>,
    src: &Bound<'_, PyAny>,
    src_type: &str,
    n: usize,
    fmt: &str,
    dst: &Bound<'_, PyAny>,
    scale_type: &str,
) -> PyResult<()> {
    let src_buf = PyUntypedBuffer::get(src)?;
    let dst_buf = PyUntypedBuffer::get(dst)?;
    let t = float_arg(src_type)?;
    let f = format_arg(fmt, scale_type)?;
    let s = bytes_of(&src_buf, "src")?;
    let d = bytes_of_mut(&dst_buf, "dst")?;
    maybe_detach(py, s.len(), || kv::quantize(s, t, n, f, d)).map_err(CoreError)?;
    Ok(())
}

/// Dequantize rows of `n` values into raw `f32` values in `dst`.
#[pyfunction]
#[pyo3(signature = (src, fmt, n, dst, scale_type="f16"))]
pub fn kv_dequantize(
    py: Python<'_>,
    src: &Bound<'_, PyAny>,
    fmt: &str,
    n: usize,
    dst: &Bound<'_, PyAny>,
    scale_type: &str,
) -> PyResult<()> {
    let src_buf = PyUntypedBuffer::get(src)?;
    let dst_buf = PyUntypedBuffer::get(dst)?;
    let f = format_arg(fmt, scale_type)?;
    let s = bytes_of(&src_buf, "src")?;
    let d = bytes_of_mut(&dst_buf, "dst")?;
    maybe_detach(py, s.len(), || kv::dequantize(s, f, n, d)).map_err(CoreError)?;
    Ok(())
}

/// Hash pages `first..last` of every head into `out` (`u64`, head-major).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn kv_hash_pages(
    py: Python<'_>,
    buf: &Bound<'_, PyAny>,
    heads: usize,
    capacity: usize,
    row_bytes: usize,
    page_rows: usize,
    rows: usize,
    first: usize,
    last: usize,
    out: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let buf_buf = PyUntypedBuffer::get(buf)?;
    let out_buf = PyUntypedBuffer::get(out)?;
    let l = layout(heads, capacity, row_bytes, page_rows, rows);
    let b = bytes_of(&buf_buf, "buf")?;
    let o = bytes_of_mut(&out_buf, "out")?;
    if o.len() % 8 != 0 {
        return Err(invalid("out is not a whole number of u64 values"));
    }
    let size = b
        .len()
        .min(heads.saturating_mul(rows).saturating_mul(row_bytes));
    maybe_detach(py, size, || {
        let mut hashes = vec![0u64; o.len() / 8];
        kv::hash_pages(b, &l, first, last, &mut hashes)?;
        for (dst, h) in o.chunks_exact_mut(8).zip(hashes) {
            dst.copy_from_slice(&h.to_le_bytes());
        }
        Ok::<(), hybridsync_core::Error>(())
    })
    .map_err(CoreError)?;
    Ok(())
}

/// The concatenated bytes of pages `(heads[i], pages[i])` (`u32` buffers),
/// each from row `offset` of the page on (0: whole pages).
#[pyfunction]
#[pyo3(signature = (buf, heads, capacity, row_bytes, page_rows, rows, head_index, page_index, offset=0))]
#[allow(clippy::too_many_arguments)]
pub fn kv_gather_pages<'py>(
    py: Python<'py>,
    buf: &Bound<'_, PyAny>,
    heads: usize,
    capacity: usize,
    row_bytes: usize,
    page_rows: usize,
    rows: usize,
    head_index: &Bound<'_, PyAny>,
    page_index: &Bound<'_, PyAny>,
    offset: usize,
) -> PyResult<Bound<'py, PyBytes>> {
    let buf_buf = PyUntypedBuffer::get(buf)?;
    let head_index_buf = PyUntypedBuffer::get(head_index)?;
    let page_index_buf = PyUntypedBuffer::get(page_index)?;
    let l = layout(heads, capacity, row_bytes, page_rows, rows);
    let b = bytes_of(&buf_buf, "buf")?;
    let hi: Vec<u32> = typed(bytes_of(&head_index_buf, "head_index")?, "head_index")?;
    let pi: Vec<u32> = typed(bytes_of(&page_index_buf, "page_index")?, "page_index")?;
    let ranges = if offset == 0 {
        kv::page_ranges(b.len(), &l, &hi, &pi)
    } else {
        kv::tail_ranges(b.len(), &l, &hi, &pi, offset)
    }
    .map_err(CoreError)?;
    let total: usize = ranges.iter().map(|r| r.len()).sum();
    // Straight into the new bytes object: one copy of the pages.
    PyBytes::new_with(py, total, |out| {
        maybe_detach(py, total, || kv::gather_into(b, &ranges, out))
            .map_err(|e| CoreError(e).into())
    })
}

/// Check that `payload` holds exactly the given pages with the given hashes
/// (raises DecodeError otherwise); writes nothing.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn kv_verify_pages(
    py: Python<'_>,
    payload: &Bound<'_, PyAny>,
    heads: usize,
    capacity: usize,
    row_bytes: usize,
    page_rows: usize,
    rows: usize,
    head_index: &Bound<'_, PyAny>,
    page_index: &Bound<'_, PyAny>,
    hashes: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let payload_buf = PyUntypedBuffer::get(payload)?;
    let head_index_buf = PyUntypedBuffer::get(head_index)?;
    let page_index_buf = PyUntypedBuffer::get(page_index)?;
    let hashes_buf = PyUntypedBuffer::get(hashes)?;
    let l = layout(heads, capacity, row_bytes, page_rows, rows);
    let p = bytes_of(&payload_buf, "payload")?;
    let hi: Vec<u32> = typed(bytes_of(&head_index_buf, "head_index")?, "head_index")?;
    let pi: Vec<u32> = typed(bytes_of(&page_index_buf, "page_index")?, "page_index")?;
    let hs: Vec<u64> = typed(bytes_of(&hashes_buf, "hashes")?, "hashes")?;
    maybe_detach(py, p.len(), || kv::verify_pages(p, &l, &hi, &pi, &hs)).map_err(CoreError)?;
    Ok(())
}

/// Verify pages and write them into `buf`; nothing is written unless every
/// page checks out. With `offset` > 0 the payload holds page tails from that
/// row on, checked against the hash of the page they complete.
#[pyfunction]
#[pyo3(signature = (buf, heads, capacity, row_bytes, page_rows, rows, head_index, page_index, hashes, payload, offset=0))]
#[allow(clippy::too_many_arguments)]
pub fn kv_scatter_pages(
    py: Python<'_>,
    buf: &Bound<'_, PyAny>,
    heads: usize,
    capacity: usize,
    row_bytes: usize,
    page_rows: usize,
    rows: usize,
    head_index: &Bound<'_, PyAny>,
    page_index: &Bound<'_, PyAny>,
    hashes: &Bound<'_, PyAny>,
    payload: &Bound<'_, PyAny>,
    offset: usize,
) -> PyResult<()> {
    let buf_buf = PyUntypedBuffer::get(buf)?;
    let head_index_buf = PyUntypedBuffer::get(head_index)?;
    let page_index_buf = PyUntypedBuffer::get(page_index)?;
    let hashes_buf = PyUntypedBuffer::get(hashes)?;
    let payload_buf = PyUntypedBuffer::get(payload)?;
    let l = layout(heads, capacity, row_bytes, page_rows, rows);
    let b = bytes_of_mut(&buf_buf, "buf")?;
    let p = bytes_of(&payload_buf, "payload")?;
    let hi: Vec<u32> = typed(bytes_of(&head_index_buf, "head_index")?, "head_index")?;
    let pi: Vec<u32> = typed(bytes_of(&page_index_buf, "page_index")?, "page_index")?;
    let hs: Vec<u64> = typed(bytes_of(&hashes_buf, "hashes")?, "hashes")?;
    maybe_detach(py, p.len(), || {
        if offset == 0 {
            kv::scatter_pages(b, &l, &hi, &pi, &hs, p)
        } else {
            kv::scatter_tails(b, &l, &hi, &pi, &hs, p, offset)
        }
    })
    .map_err(CoreError)?;
    Ok(())
}

/// xxh3-64 of a buffer, with 0 reported as 1 (the page hash).
#[pyfunction]
pub fn kv_page_hash(py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<u64> {
    let data_buf = PyUntypedBuffer::get(data)?;
    let b = bytes_of(&data_buf, "data")?;
    Ok(maybe_detach(py, b.len(), || kv::page_hash(b)))
}
