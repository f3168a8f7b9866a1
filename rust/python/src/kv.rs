//! Bindings of the KV-cache kernels (`hybridsync_core::kv`).
//!
//! Arrays cross as buffers (numpy arrays, bytes, bytearrays, memoryviews):
//! any C-contiguous buffer is read as raw bytes without a copy, outputs are
//! written into caller-owned writable buffers, and the GIL is released
//! around the kernels. The Python layer (`hybridsync.kv`) checks dtypes and
//! shapes; here only byte sizes are checked (by the core crate).

use hybridsync_core::kv::{self, table, Float, Format, PageLayout};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};
use pyo3::IntoPyObjectExt;

use crate::buf::Buf;
use crate::{invalid, maybe_detach, CoreError};

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
    let src_buf = Buf::get(src, "src")?;
    let dst_buf = Buf::get_mut(dst, "dst")?;
    if src_buf.overlaps(&dst_buf) {
        return Err(invalid("src and dst must not share memory"));
    }
    let t = float_arg(src_type)?;
    let f = format_arg(fmt, scale_type)?;
    let s = src_buf.bytes();
    let d = dst_buf.bytes_mut("dst")?;
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
    let src_buf = Buf::get(src, "src")?;
    let dst_buf = Buf::get_mut(dst, "dst")?;
    if src_buf.overlaps(&dst_buf) {
        return Err(invalid("src and dst must not share memory"));
    }
    let f = format_arg(fmt, scale_type)?;
    let s = src_buf.bytes();
    let d = dst_buf.bytes_mut("dst")?;
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
    let buf_buf = Buf::get(buf, "buf")?;
    let out_buf = Buf::get_mut(out, "out")?;
    if buf_buf.overlaps(&out_buf) {
        return Err(invalid("buf and out must not share memory"));
    }
    let l = layout(heads, capacity, row_bytes, page_rows, rows);
    let b = buf_buf.bytes();
    let o = out_buf.bytes_mut("out")?;
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
    let buf_buf = Buf::get(buf, "buf")?;
    let head_index_buf = Buf::get(head_index, "head_index")?;
    let page_index_buf = Buf::get(page_index, "page_index")?;
    let l = layout(heads, capacity, row_bytes, page_rows, rows);
    let b = buf_buf.bytes();
    let hi: Vec<u32> = typed(head_index_buf.bytes(), "head_index")?;
    let pi: Vec<u32> = typed(page_index_buf.bytes(), "page_index")?;
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

/// The rows a planned run sends, where they lie in one of a cache's
/// tensors (byte ranges of it, in order): the frame encoder copies them
/// straight from there into the frame, without an intermediate copy.
/// `bytes()` gathers them into a new bytes object; `len()` counts them.
/// The tensor is kept alive; its buffer is asked for again at each use, and
/// the ranges are checked against it then.
#[pyclass(frozen, module = "hybridsync._core")]
pub struct PageGather {
    tensor: Py<PyAny>,
    ranges: Vec<std::ops::Range<usize>>,
    len: usize,
}

impl PageGather {
    fn new(tensor: Py<PyAny>, ranges: Vec<std::ops::Range<usize>>) -> Self {
        // Adjacent ranges (consecutive pages of one head) merged: fewer copies.
        let mut merged: Vec<std::ops::Range<usize>> = Vec::with_capacity(ranges.len());
        for r in ranges {
            match merged.last_mut() {
                Some(last) if last.end == r.start => last.end = r.end,
                _ => merged.push(r),
            }
        }
        let len = merged.iter().map(|r| r.len()).sum();
        Self {
            tensor,
            ranges: merged,
            len,
        }
    }

    /// The tensor's buffer and the ranges, each checked to lie inside it.
    pub fn source<'py>(&self, py: Python<'py>) -> PyResult<(Buf<'py>, &[std::ops::Range<usize>])> {
        let b = Buf::get(self.tensor.bind(py), "tensor")?;
        let n = b.bytes().len();
        if self.ranges.iter().any(|r| r.start > r.end || r.end > n) {
            return Err(invalid(format!(
                "the planned pages no longer lie inside their tensor of {n} bytes"
            )));
        }
        Ok((b, &self.ranges))
    }
}

#[pymethods]
impl PageGather {
    fn __len__(&self) -> usize {
        self.len
    }

    fn __bytes__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let (b, ranges) = self.source(py)?;
        let src = b.bytes();
        PyBytes::new_with(py, self.len, |out| {
            maybe_detach(py, self.len, || kv::gather_into(src, ranges, out))
                .map_err(|e| CoreError(e).into())
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "<PageGather: {} bytes in {} ranges>",
            self.len,
            self.ranges.len()
        )
    }
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
    let payload_buf = Buf::get(payload, "payload")?;
    let head_index_buf = Buf::get(head_index, "head_index")?;
    let page_index_buf = Buf::get(page_index, "page_index")?;
    let hashes_buf = Buf::get(hashes, "hashes")?;
    let l = layout(heads, capacity, row_bytes, page_rows, rows);
    let p = payload_buf.bytes();
    let hi: Vec<u32> = typed(head_index_buf.bytes(), "head_index")?;
    let pi: Vec<u32> = typed(page_index_buf.bytes(), "page_index")?;
    let hs: Vec<u64> = typed(hashes_buf.bytes(), "hashes")?;
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
    let buf_buf = Buf::get_mut(buf, "buf")?;
    let head_index_buf = Buf::get(head_index, "head_index")?;
    let page_index_buf = Buf::get(page_index, "page_index")?;
    let hashes_buf = Buf::get(hashes, "hashes")?;
    let payload_buf = Buf::get(payload, "payload")?;
    if [&head_index_buf, &page_index_buf, &hashes_buf, &payload_buf]
        .iter()
        .any(|other| buf_buf.overlaps(other))
    {
        return Err(invalid(
            "buf must not share memory with the other arguments",
        ));
    }
    let l = layout(heads, capacity, row_bytes, page_rows, rows);
    let b = buf_buf.bytes_mut("buf")?;
    let p = payload_buf.bytes();
    let hi: Vec<u32> = typed(head_index_buf.bytes(), "head_index")?;
    let pi: Vec<u32> = typed(page_index_buf.bytes(), "page_index")?;
    let hs: Vec<u64> = typed(hashes_buf.bytes(), "hashes")?;
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
    let data_buf = Buf::get(data, "data")?;
    let b = data_buf.bytes();
    Ok(maybe_detach(py, b.len(), || kv::page_hash(b)))
}

// -- page tables ----------------------------------------------------------

fn shape(rows: usize, width: usize) -> table::TableShape {
    table::TableShape { rows, width }
}

/// The wrapping sum of the keyed mixes of slots `first..last` of every row
/// of a page table (`u64`, `rows` x `width`).
#[pyfunction]
pub fn kv_table_range_sum(
    py: Python<'_>,
    table: &Bound<'_, PyAny>,
    rows: usize,
    width: usize,
    first: usize,
    last: usize,
) -> PyResult<u64> {
    let t_buf = Buf::get(table, "table")?;
    let t = t_buf.bytes();
    let size = rows
        .saturating_mul(last.saturating_sub(first))
        .saturating_mul(8);
    Ok(maybe_detach(py, size, || {
        table::range_sum(t, shape(rows, width), first, last)
    })
    .map_err(CoreError)?)
}

/// Replace slots `first..` of every row by `block` (`rows` x n `u64`);
/// returns the change of the table's sum.
#[pyfunction]
pub fn kv_table_set_range(
    py: Python<'_>,
    table: &Bound<'_, PyAny>,
    rows: usize,
    width: usize,
    first: usize,
    block: &Bound<'_, PyAny>,
) -> PyResult<u64> {
    let t_buf = Buf::get_mut(table, "table")?;
    let b_buf = Buf::get(block, "block")?;
    if t_buf.overlaps(&b_buf) {
        return Err(invalid("block and table share memory"));
    }
    let t = t_buf.bytes_mut("table")?;
    let b = b_buf.bytes();
    Ok(maybe_detach(py, b.len(), || {
        table::set_range(t, shape(rows, width), first, b)
    })
    .map_err(CoreError)?)
}

/// Zero slots `first..last` of every row (`last` clamped to the width);
/// returns the change of the table's sum.
#[pyfunction]
pub fn kv_table_cut(
    py: Python<'_>,
    table: &Bound<'_, PyAny>,
    rows: usize,
    width: usize,
    first: usize,
    last: usize,
) -> PyResult<u64> {
    let t_buf = Buf::get_mut(table, "table")?;
    let t = t_buf.bytes_mut("table")?;
    let size = rows
        .saturating_mul(last.saturating_sub(first))
        .saturating_mul(8);
    Ok(
        maybe_detach(py, size, || table::cut(t, shape(rows, width), first, last))
            .map_err(CoreError)?,
    )
}

/// Set slot `page_index[i]` of row `row0 + head_index[i]` to `hashes[i]`
/// (`u32`, `u32`, `u64` buffers; heads below `heads`). Returns `(change of
/// the sum, one past the highest page)`, or `(None, width needed)` without
/// writing when a page lies beyond the width.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn kv_table_set_pages(
    py: Python<'_>,
    table: &Bound<'_, PyAny>,
    rows: usize,
    width: usize,
    heads: usize,
    row0: usize,
    head_index: &Bound<'_, PyAny>,
    page_index: &Bound<'_, PyAny>,
    hashes: &Bound<'_, PyAny>,
) -> PyResult<(Option<u64>, usize)> {
    let t_buf = Buf::get_mut(table, "table")?;
    let head_index_buf = Buf::get(head_index, "head_index")?;
    let page_index_buf = Buf::get(page_index, "page_index")?;
    let hashes_buf = Buf::get(hashes, "hashes")?;
    // The indices are copied out before the table is borrowed for writing.
    let hi: Vec<u32> = typed(head_index_buf.bytes(), "head_index")?;
    let pi: Vec<u32> = typed(page_index_buf.bytes(), "page_index")?;
    let hs: Vec<u64> = typed(hashes_buf.bytes(), "hashes")?;
    let t = t_buf.bytes_mut("table")?;
    let done = maybe_detach(py, hs.len() * 8, || {
        table::set_pages(t, shape(rows, width), heads, row0, &hi, &pi, &hs)
    })
    .map_err(CoreError)?;
    Ok(match done {
        table::SetPages::Done { delta, end } => (Some(delta), end),
        table::SetPages::Grow(need) => (None, need),
    })
}

/// Hash pages `first..last` of every head of the tensors `bufs` (one per
/// (layer, K|V), in order, each laid out as in `kv_hash_pages`) into slots
/// `first..last` of the page table (`u64`, `len(bufs) * heads` x `width`);
/// returns the change of the table's sum.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn kv_table_hash(
    py: Python<'_>,
    bufs: Vec<Bound<'_, PyAny>>,
    heads: usize,
    capacity: usize,
    row_bytes: usize,
    page_rows: usize,
    rows: usize,
    first: usize,
    last: usize,
    table: &Bound<'_, PyAny>,
    width: usize,
) -> PyResult<u64> {
    let t_buf = Buf::get_mut(table, "table")?;
    let mut held = Vec::with_capacity(bufs.len());
    for b in &bufs {
        let b_buf = Buf::get(b, "buf")?;
        if t_buf.overlaps(&b_buf) {
            return Err(invalid("a tensor and the table share memory"));
        }
        held.push(b_buf);
    }
    let mut tensors = Vec::with_capacity(held.len());
    for b in &held {
        tensors.push(b.bytes());
    }
    let t = t_buf.bytes_mut("table")?;
    let l = layout(heads, capacity, row_bytes, page_rows, rows);
    // Every tensor checked before the first is hashed: all or nothing.
    for b in &tensors {
        l.check(b.len()).map_err(CoreError)?;
    }
    let size = tensors
        .len()
        .saturating_mul(heads)
        .saturating_mul(last.saturating_sub(first))
        .saturating_mul(page_rows)
        .saturating_mul(row_bytes);
    if tensors
        .len()
        .checked_mul(heads)
        .map_or(true, |rows| rows > table::MAX_ROWS)
    {
        return Err(invalid("too many tensors x heads for a page table"));
    }
    let s = shape(tensors.len().saturating_mul(heads), width);
    Ok(maybe_detach(py, size, || {
        let mut delta = 0u64;
        for (i, b) in tensors.iter().enumerate() {
            delta = delta.wrapping_add(table::hash_into(b, &l, first, last, t, s, i * heads)?);
        }
        Ok::<u64, hybridsync_core::Error>(delta)
    })
    .map_err(CoreError)?)
}

type DiffPlanOut<'py> = (
    Vec<Bound<'py, PyTuple>>,
    usize,
    usize,
    Option<usize>,
    u64,
    usize,
);

fn le_bytes<'py, T: Copy, const N: usize>(
    py: Python<'py>,
    v: &[T],
    to_le: fn(T) -> [u8; N],
) -> Bound<'py, PyBytes> {
    let raw: Vec<u8> = v.iter().flat_map(|&x| to_le(x)).collect();
    PyBytes::new(py, &raw)
}

/// Plan the pages of `mine` (`u64`, `rows` x `mine_width`) that the peer's
/// table `acked` (`rows` x `acked_width`) lacks, from page `first` on, and
/// record them in `acked` (see `hybridsync_core::kv::table::plan_diff`).
/// Returns None (writing nothing) when nothing differs; else `(runs, pages
/// sent, bytes sent, page to resume from or None, change of acked's sum,
/// acked's new end)`, each run `(layer * 2 + kind, offset, heads u32,
/// pages u32, hashes u64)` with little-endian bytes. With `tensors` (the
/// cache's `(layer, K|V)` tensors in order, laid out as in
/// `kv_gather_pages` with `capacity` rows, `tokens` in use) each run also
/// carries its payload: a `PageGather` of the rows where they lie, which
/// the frame encoder copies straight into the frame. The tensors' sizes are
/// checked before `acked` is written; their rows are read when the frame is
/// encoded, so they must not change in between (the caller encodes the
/// frame in the same step, holding the cache).
#[pyfunction]
#[pyo3(signature = (mine, acked, rows, mine_width, acked_width, heads, first, pages, tokens, held, page_rows, row_bytes, tail_page, budget, acked_end, same_sum, *, tensors=None, capacity=0))]
#[allow(clippy::too_many_arguments)]
pub fn kv_plan_diff<'py>(
    py: Python<'py>,
    mine: &Bound<'_, PyAny>,
    acked: &Bound<'_, PyAny>,
    rows: usize,
    mine_width: usize,
    acked_width: usize,
    heads: usize,
    first: usize,
    pages: usize,
    tokens: usize,
    held: usize,
    page_rows: usize,
    row_bytes: usize,
    tail_page: Option<usize>,
    budget: usize,
    acked_end: usize,
    same_sum: bool,
    tensors: Option<Vec<Bound<'_, PyAny>>>,
    capacity: usize,
) -> PyResult<Option<DiffPlanOut<'py>>> {
    let m_buf = Buf::get(mine, "mine")?;
    let a_buf = Buf::get_mut(acked, "acked")?;
    if m_buf.overlaps(&a_buf) {
        return Err(invalid("the two tables share memory"));
    }
    let l = layout(heads, capacity, row_bytes, page_rows, tokens);
    let mut held_tensors = Vec::new();
    for t in tensors.iter().flatten() {
        let b = Buf::get(t, "tensor")?;
        if b.overlaps(&a_buf) {
            return Err(invalid("a tensor and the table share memory"));
        }
        l.check(b.len()).map_err(CoreError)?;
        held_tensors.push(b);
    }
    if tensors.is_some() && held_tensors.len().checked_mul(heads) != Some(rows) {
        return Err(invalid(format!(
            "{} tensors of {heads} heads do not match the table's {rows} rows",
            held_tensors.len()
        )));
    }
    let m = m_buf.bytes();
    let a = a_buf.bytes_mut("acked")?;
    let input = table::DiffInput {
        heads,
        first,
        pages,
        tokens,
        held,
        page_rows,
        row_bytes,
        tail_page,
        budget,
        acked_end,
    };
    let size = rows
        .saturating_mul(pages.saturating_sub(first))
        .saturating_mul(8);
    let plan = maybe_detach(py, size, || {
        table::plan_diff(
            m,
            shape(rows, mine_width),
            a,
            shape(rows, acked_width),
            &input,
            same_sum,
        )
    })
    .map_err(CoreError)?;
    let Some(plan) = plan else {
        return Ok(None);
    };
    let mut runs = Vec::with_capacity(plan.runs.len());
    for r in &plan.runs {
        let mut items = vec![
            r.layer_kind.into_bound_py_any(py)?,
            r.offset.into_bound_py_any(py)?,
            le_bytes(py, &r.heads, u32::to_le_bytes).into_any(),
            le_bytes(py, &r.pages, u32::to_le_bytes).into_any(),
            le_bytes(py, &r.hashes, u64::to_le_bytes).into_any(),
        ];
        if tensors.is_some() {
            let b = held_tensors
                .get(r.layer_kind)
                .ok_or_else(|| invalid("a planned run lies outside the tensors"))?
                .bytes();
            let ranges = if r.offset == 0 {
                kv::page_ranges(b.len(), &l, &r.heads, &r.pages)
            } else {
                kv::tail_ranges(b.len(), &l, &r.heads, &r.pages, r.offset)
            }
            .map_err(CoreError)?;
            let tensor = tensors
                .iter()
                .flatten()
                .nth(r.layer_kind)
                .ok_or_else(|| invalid("a planned run lies outside the tensors"))?;
            let gather = PageGather::new(tensor.clone().unbind(), ranges);
            items.push(Bound::new(py, gather)?.into_any());
        }
        runs.push(PyTuple::new(py, items)?);
    }
    Ok(Some((
        runs,
        plan.sent,
        plan.bytes,
        plan.resume,
        plan.delta,
        plan.end,
    )))
}

/// The page indices and hashes of a run object (a ``KVRun``: ``layer``,
/// ``kind``, ``offset``, ``heads``, ``pages``, ``hashes``), copied out.
struct RunIndex {
    tensor: usize,
    offset: usize,
    heads: Vec<u32>,
    pages: Vec<u32>,
    hashes: Vec<u64>,
}

fn run_index(run: &Bound<'_, PyAny>) -> PyResult<RunIndex> {
    let py = run.py();
    let layer: usize = run.getattr(intern!(py, "layer"))?.extract()?;
    let kind: usize = run.getattr(intern!(py, "kind"))?.extract()?;
    if kind > 1 {
        return Err(invalid(format!(
            "run kind {kind} is neither K (0) nor V (1)"
        )));
    }
    let tensor = layer
        .checked_mul(2)
        .and_then(|v| v.checked_add(kind))
        .ok_or_else(|| invalid(format!("layer {layer} is out of range")))?;
    let heads = typed(
        Buf::get(&run.getattr(intern!(py, "heads"))?, "heads")?.bytes(),
        "heads",
    )?;
    let pages = typed(
        Buf::get(&run.getattr(intern!(py, "pages"))?, "pages")?.bytes(),
        "pages",
    )?;
    let hashes = typed(
        Buf::get(&run.getattr(intern!(py, "hashes"))?, "hashes")?.bytes(),
        "hashes",
    )?;
    Ok(RunIndex {
        tensor,
        offset: run.getattr(intern!(py, "offset"))?.extract()?,
        heads,
        pages,
        hashes,
    })
}

/// Write verified runs of pages into a cache's tensors and bring its page
/// table up to date in one call (see `hybridsync_core::kv::table::apply_runs`):
/// ``tensors`` are the cache's ``(layer, K|V)`` tensors in order (each laid
/// out as in `kv_hash_pages`, ``rows`` in use after the write), ``runs``
/// objects with the fields of ``KVRun`` (little-endian ``u32``/``u32``/``u64``
/// buffers, a payload buffer), ``table`` the page table (``u64``,
/// ``len(tensors) * heads`` x ``width``). The pages a run writes take its
/// hashes (checked against the bytes while writing); the other pages from
/// ``min(stale_page, first row touched // page_rows)`` on are hashed.
/// Returns ``(first row touched, at most first_row; whether tails did not
/// complete the pages held; change of the table's sum)``.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn kv_apply_pages(
    py: Python<'_>,
    tensors: Vec<Bound<'_, PyAny>>,
    heads: usize,
    capacity: usize,
    row_bytes: usize,
    page_rows: usize,
    rows: usize,
    runs: &Bound<'_, PyAny>,
    first_row: usize,
    stale_page: usize,
    table: &Bound<'_, PyAny>,
    width: usize,
) -> PyResult<(usize, bool, u64)> {
    let mut index = Vec::new();
    let mut payloads = Vec::new();
    for run in runs.try_iter()? {
        let run = run?;
        index.push(run_index(&run)?);
        payloads.push(Buf::get(&run.getattr(intern!(py, "payload"))?, "payload")?);
    }
    let t_buf = Buf::get_mut(table, "table")?;
    let mut held = Vec::with_capacity(tensors.len());
    for b in &tensors {
        held.push(Buf::get_mut(b, "tensor")?);
    }
    // Written memory shares nothing with anything else passed.
    // (Empty buffers hold no memory; left in, one could sit between two
    // that overlap and hide them from the neighbour comparison.)
    let mut spans: Vec<&Buf<'_>> = held
        .iter()
        .chain([&t_buf])
        .filter(|b| b.len() > 0)
        .collect();
    spans.sort_by_key(|b| b.ptr());
    if spans.windows(2).any(|w| w[0].overlaps(w[1])) {
        return Err(invalid("the tensors and the table must not share memory"));
    }
    if payloads.iter().any(|p| spans.iter().any(|b| b.overlaps(p))) {
        return Err(invalid(
            "a payload shares memory with a tensor or the table",
        ));
    }
    let runs: Vec<table::PageRun<'_>> = index
        .iter()
        .zip(&payloads)
        .map(|(r, p)| table::PageRun {
            tensor: r.tensor,
            offset: r.offset,
            heads: &r.heads,
            pages: &r.pages,
            hashes: &r.hashes,
            payload: p.bytes(),
        })
        .collect();
    let mut views = held
        .iter()
        .map(|b| b.bytes_mut("tensor"))
        .collect::<PyResult<Vec<_>>>()?;
    let t = t_buf.bytes_mut("table")?;
    let l = layout(heads, capacity, row_bytes, page_rows, rows);
    let s = shape(views.len().saturating_mul(heads), width);
    let size = runs
        .iter()
        .map(|r| r.payload.len())
        .sum::<usize>()
        .saturating_add(
            views
                .len()
                .saturating_mul(heads)
                .saturating_mul(rows.saturating_sub(first_row))
                .saturating_mul(row_bytes),
        );
    let done = maybe_detach(py, size, || {
        table::apply_runs(&mut views, &l, &runs, first_row, stale_page, t, s)
    })
    .map_err(CoreError)?;
    Ok((done.first_row, done.diverged, done.delta))
}

/// Set the pages of every run (objects with the fields of ``KVRun``; row
/// ``(layer * 2 + kind) * heads + head``) of a page table (``u64``, ``rows``
/// x ``width``) to the run's hashes: `kv_table_set_pages` for a whole
/// entry. Returns ``(change of the sum, one past the highest page)``, or
/// ``(None, width needed)`` without writing when a page lies beyond the
/// width; nothing is written when a run is refused.
#[pyfunction]
pub fn kv_table_set_runs(
    py: Python<'_>,
    table: &Bound<'_, PyAny>,
    rows: usize,
    width: usize,
    heads: usize,
    runs: &Bound<'_, PyAny>,
) -> PyResult<(Option<u64>, usize)> {
    let index = runs
        .try_iter()?
        .map(|r| run_index(&r?))
        .collect::<PyResult<Vec<_>>>()?;
    let t_buf = Buf::get_mut(table, "table")?;
    let t = t_buf.bytes_mut("table")?;
    let mut end = 0usize;
    for r in &index {
        let row0 = r.tensor.saturating_mul(heads);
        if r.heads.len() != r.pages.len() || r.pages.len() != r.hashes.len() {
            return Err(invalid("head, page and hash lists differ in length"));
        }
        if row0.checked_add(heads).map_or(true, |top| top > rows) {
            return Err(invalid(format!(
                "rows {row0}..+{heads} are outside the table's {rows} rows"
            )));
        }
        if let Some(&h) = r.heads.iter().find(|&&h| h as usize >= heads) {
            return Err(invalid(format!("head {h} is outside 0..{heads}")));
        }
        end = end.max(r.pages.iter().map(|&p| p as usize + 1).max().unwrap_or(0));
    }
    if end > width {
        return Ok((None, end));
    }
    let size = index.iter().map(|r| r.hashes.len() * 8).sum();
    let delta = maybe_detach(py, size, || {
        let mut delta = 0u64;
        for r in &index {
            let row0 = r.tensor * heads;
            match table::set_pages(
                t,
                shape(rows, width),
                heads,
                row0,
                &r.heads,
                &r.pages,
                &r.hashes,
            )? {
                table::SetPages::Done { delta: d, .. } => delta = delta.wrapping_add(d),
                table::SetPages::Grow(need) => {
                    return Err(hybridsync_core::Error::invalid(format!(
                        "page table needs {need} slots per row"
                    )))
                }
            }
        }
        Ok::<u64, hybridsync_core::Error>(delta)
    })
    .map_err(CoreError)?;
    Ok((Some(delta), end))
}
