//! Quantized KV-cache kernels: codecs and pages.
//!
//! - Codecs: GGML **Q4_0**, **Q8_0** (blocks of 32 values, bit-exact with
//!   llama.cpp's reference quantizer and the `gguf` package) and **F16**, and MLX affine
//!   4-bit quantization in groups of 64 (bit-exact with `mlx.core.quantize`).
//!   Inputs are raw little-endian `f32`, `f16` or `bf16` values. Non-finite
//!   inputs are refused: a KV cache holding NaN or infinity is already broken,
//!   and the reference quantizers disagree on what to make of it.
//! - Pages: a cache tensor for one (layer, K|V) is stored as `heads` runs of
//!   `capacity` rows of `row_bytes` bytes each (one quantized token row of one
//!   head per row). A page is `page_rows` consecutive rows of one head; the
//!   last page of a cache may be partial. Pages are hashed with xxh3-64,
//!   gathered into a wire payload and scattered back with every bound checked.
//!
//! Every function validates its geometry and returns an [`Error`] instead of
//! panicking on bad input.

use half::{bf16, f16};
use xxhash_rust::xxh3::{xxh3_64, Xxh3Default};

use crate::error::{Error, Result};

pub mod table;

/// Values per GGML quantization block.
pub const QK: usize = 32;
/// Bytes of one Q4_0 block: an `f16` scale and 16 bytes of nibbles.
pub const Q4_0_BLOCK_BYTES: usize = 18;
/// Bytes of one Q8_0 block: an `f16` scale and 32 `i8`.
pub const Q8_0_BLOCK_BYTES: usize = 34;
/// The MLX affine group size hybridsync stores (mlx-lm's default).
pub const MLX_GROUP: usize = 64;

/// A floating-point storage type of raw input or output values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Float {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16 (the top half of a binary32).
    BF16,
}

impl Float {
    /// Bytes per value.
    pub fn size(self) -> usize {
        match self {
            Float::F32 => 4,
            Float::F16 | Float::BF16 => 2,
        }
    }

    /// Decode value `i` of a little-endian buffer of this type.
    #[inline]
    fn load(self, src: &[u8], i: usize) -> f32 {
        match self {
            Float::F32 => {
                let o = 4 * i;
                f32::from_le_bytes([src[o], src[o + 1], src[o + 2], src[o + 3]])
            }
            Float::F16 => f16::from_bits(u16::from_le_bytes([src[2 * i], src[2 * i + 1]])).to_f32(),
            Float::BF16 => {
                bf16::from_bits(u16::from_le_bytes([src[2 * i], src[2 * i + 1]])).to_f32()
            }
        }
    }

    /// Round `v` to this type (round to nearest, ties to even) and store it
    /// as value `i` of a little-endian buffer.
    #[inline]
    fn store(self, v: f32, dst: &mut [u8], i: usize) {
        match self {
            Float::F32 => dst[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes()),
            Float::F16 => dst[2 * i..2 * i + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes()),
            Float::BF16 => dst[2 * i..2 * i + 2].copy_from_slice(&bf16::from_f32(v).to_le_bytes()),
        }
    }

    /// `v` rounded to this type and widened back.
    #[inline]
    fn round(self, v: f32) -> f32 {
        match self {
            Float::F32 => v,
            Float::F16 => f16::from_f32(v).to_f32(),
            Float::BF16 => bf16::from_f32(v).to_f32(),
        }
    }
}

/// A quantized row format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// GGML Q4_0: per 32 values an `f16` scale and 32 4-bit codes.
    Q4_0,
    /// GGML Q8_0: per 32 values an `f16` scale and 32 `i8` codes.
    Q8_0,
    /// Plain IEEE binary16 values (llama.cpp's default cache type).
    F16,
    /// MLX affine 4-bit, groups of 64: per row `n/2` bytes of codes (eight
    /// per little-endian `u32`, element 0 in the low bits), then the row's
    /// scales, then its biases, both stored as the given type.
    Mlx4(Float),
}

impl Format {
    /// The values per quantization group.
    pub fn group(self) -> usize {
        match self {
            Format::Q4_0 | Format::Q8_0 => QK,
            Format::F16 => 1,
            Format::Mlx4(_) => MLX_GROUP,
        }
    }

    /// Bytes of one quantized row of `n` values (`n` a multiple of the group).
    pub fn row_bytes(self, n: usize) -> Result<usize> {
        let g = self.group();
        if n == 0 || n % g != 0 {
            return Err(Error::invalid(format!(
                "a row of {n} values is not a positive multiple of the group size {g}"
            )));
        }
        Ok(match self {
            Format::Q4_0 => n / QK * Q4_0_BLOCK_BYTES,
            Format::Q8_0 => n / QK * Q8_0_BLOCK_BYTES,
            Format::F16 => 2 * n,
            Format::Mlx4(t) => n / 2 + 2 * (n / MLX_GROUP) * t.size(),
        })
    }
}

fn check_sizes(src_len: usize, elem: usize, n: usize, what: &str) -> Result<usize> {
    if n == 0 {
        return Err(Error::invalid("row length must be positive"));
    }
    if src_len % (elem * n) != 0 {
        return Err(Error::invalid(format!(
            "{what} of {src_len} bytes is not a whole number of rows of {n} values"
        )));
    }
    Ok(src_len / (elem * n))
}

fn non_finite(row: usize, col: usize, v: f32) -> Error {
    Error::invalid(format!(
        "value {v} at row {row}, column {col} is not finite: KV caches hold finite values"
    ))
}

/// Quantize rows of `n` raw `src_type` values into `dst` in `fmt`.
///
/// `src` holds whole rows; `dst` must hold exactly as many quantized rows.
pub fn quantize(src: &[u8], src_type: Float, n: usize, fmt: Format, dst: &mut [u8]) -> Result<()> {
    let rows = check_sizes(src.len(), src_type.size(), n, "input")?;
    let rb = fmt.row_bytes(n)?;
    if dst.len() != rows * rb {
        return Err(Error::invalid(format!(
            "output of {} bytes does not hold {rows} rows of {rb} bytes",
            dst.len()
        )));
    }
    let mut buf = vec![0f32; n];
    let row_in = n * src_type.size();
    for r in 0..rows {
        load_row(&src[r * row_in..(r + 1) * row_in], src_type, &mut buf);
        if let Some(j) = buf.iter().position(|v| !v.is_finite()) {
            return Err(non_finite(r, j, buf[j]));
        }
        let out = &mut dst[r * rb..(r + 1) * rb];
        match fmt {
            Format::Q4_0 => {
                for (x, o) in buf
                    .chunks_exact(QK)
                    .zip(out.chunks_exact_mut(Q4_0_BLOCK_BYTES))
                {
                    q4_0_block(x, o);
                }
            }
            Format::Q8_0 => {
                for (x, o) in buf
                    .chunks_exact(QK)
                    .zip(out.chunks_exact_mut(Q8_0_BLOCK_BYTES))
                {
                    q8_0_block(x, o);
                }
            }
            Format::F16 => {
                for (j, &v) in buf.iter().enumerate() {
                    Float::F16.store(v, out, j);
                }
            }
            Format::Mlx4(t) => mlx4_row(&buf, t, out),
        }
    }
    Ok(())
}

/// Dequantize rows of `n` values in `fmt` into `f32` values (`dst`, raw
/// little-endian, exactly as many rows).
pub fn dequantize(src: &[u8], fmt: Format, n: usize, dst: &mut [u8]) -> Result<()> {
    let rb = fmt.row_bytes(n)?;
    if src.len() % rb != 0 {
        return Err(Error::invalid(format!(
            "input of {} bytes is not a whole number of rows of {rb} bytes",
            src.len()
        )));
    }
    let rows = src.len() / rb;
    if dst.len() != rows * n * 4 {
        return Err(Error::invalid(format!(
            "output of {} bytes does not hold {rows} rows of {n} f32 values",
            dst.len()
        )));
    }
    let mut out = vec![0f32; n];
    for r in 0..rows {
        let row = &src[r * rb..(r + 1) * rb];
        match fmt {
            Format::Q4_0 => {
                for (b, o) in row
                    .chunks_exact(Q4_0_BLOCK_BYTES)
                    .zip(out.chunks_exact_mut(QK))
                {
                    let d = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
                    for j in 0..QK / 2 {
                        let q = b[2 + j];
                        o[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
                        o[j + QK / 2] = ((q >> 4) as i32 - 8) as f32 * d;
                    }
                }
            }
            Format::Q8_0 => {
                for (b, o) in row
                    .chunks_exact(Q8_0_BLOCK_BYTES)
                    .zip(out.chunks_exact_mut(QK))
                {
                    let d = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
                    for j in 0..QK {
                        o[j] = (b[2 + j] as i8) as f32 * d;
                    }
                }
            }
            Format::F16 => {
                for (j, o) in out.iter_mut().enumerate() {
                    *o = Float::F16.load(row, j);
                }
            }
            Format::Mlx4(t) => {
                let groups = n / MLX_GROUP;
                let (codes, rest) = row.split_at(n / 2);
                let (scales, biases) = rest.split_at(groups * t.size());
                for g in 0..groups {
                    let s = t.load(scales, g);
                    let b = t.load(biases, g);
                    for j in 0..MLX_GROUP {
                        let i = g * MLX_GROUP + j;
                        let q = (codes[i / 2] >> (4 * (i % 2))) & 0x0F;
                        // The product and sum round to the storage type, as
                        // mlx computes them in it.
                        let v = t.round(t.round(s * q as f32) + b);
                        // mlx's half and bfloat16 conversions make any NaN
                        // the positive quiet NaN; in f32 the hardware's stays.
                        out[i] = if v.is_nan() && t != Float::F32 {
                            f32::NAN
                        } else {
                            v
                        };
                    }
                }
            }
        }
        for (j, v) in out.iter().enumerate() {
            let o = (r * n + j) * 4;
            dst[o..o + 4].copy_from_slice(&v.to_le_bytes());
        }
    }
    Ok(())
}

/// Widen one row of raw values (the type dispatch sits outside the loop so
/// that each loop vectorises).
fn load_row(src: &[u8], t: Float, dst: &mut [f32]) {
    match t {
        Float::F32 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        Float::F16 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
        Float::BF16 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16);
            }
        }
    }
}

/// Round half to even (C's `rint` in the default rounding mode) without a
/// libm call: adding and removing 2^23 rounds any |x| < 2^23 exactly; larger
/// values (and infinities, NaN) are already integral or pass through.
#[inline(always)]
fn rint(x: f32) -> f32 {
    const TWO_23: f32 = 8_388_608.0;
    let a = x.abs();
    let r = ((a + TWO_23) - TWO_23).copysign(x);
    if a < TWO_23 {
        r
    } else {
        x
    }
}

/// Round half away from zero (C's `roundf`) for finite |x| < 2^31, without
/// a libm call: truncate through an integer, then step by the fraction.
#[inline(always)]
fn round_away(x: f32) -> f32 {
    let t = (x as i32) as f32;
    let f = x - t;
    t + (i32::from(f >= 0.5) - i32::from(f <= -0.5)) as f32
}

/// llama.cpp `quantize_row_q4_0_ref` for one block.
#[inline]
fn q4_0_block(x: &[f32], out: &mut [u8]) {
    let mut amax = 0f32;
    let mut max = 0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    if !id.is_finite() {
        // A block so small that 1/d overflows: the reference converts the
        // resulting infinities and NaNs to code 0 (x86-64 and gguf alike).
        out[2..].fill(0);
        return;
    }
    for j in 0..QK / 2 {
        let lo = ((x[j] * id + 8.5) as u8).min(15);
        let hi = ((x[j + QK / 2] * id + 8.5) as u8).min(15);
        out[2 + j] = lo | (hi << 4);
    }
}

/// llama.cpp `quantize_row_q8_0_ref` for one block.
#[inline]
fn q8_0_block(x: &[f32], out: &mut [u8]) {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    if !id.is_finite() {
        out[2..].fill(0); // as in q4_0_block
        return;
    }
    for j in 0..QK {
        out[2 + j] = (round_away(x[j] * id) as i8) as u8;
    }
}

/// mlx `affine_quantize` (CPU) for one row, 4 bits, groups of 64.
fn mlx4_row(x: &[f32], t: Float, out: &mut [u8]) {
    const N_BINS: f32 = 15.0;
    const EPS: f32 = 1e-7;
    let n = x.len();
    let groups = n / MLX_GROUP;
    let (codes, rest) = out.split_at_mut(n / 2);
    let (scales, biases) = rest.split_at_mut(groups * t.size());
    for (g, w) in x.chunks_exact(MLX_GROUP).enumerate() {
        let mut w_min = f32::INFINITY;
        let mut w_max = f32::NEG_INFINITY;
        for &v in w {
            w_max = w_max.max(v);
            w_min = w_min.min(v);
        }
        let mask = w_min.abs() > w_max.abs();
        let mut scale = ((w_max - w_min) / N_BINS).max(EPS);
        scale = if mask { scale } else { -scale };
        let edge = if mask { w_min } else { w_max };
        let q0 = rint(edge / scale);
        let mut bias = 0.0f32;
        if q0 != 0.0 {
            scale = edge / q0;
            bias = edge;
        }
        let mut q = [0u8; MLX_GROUP];
        for (c, &v) in q.iter_mut().zip(w) {
            *c = rint((v - bias) / scale).clamp(0.0, N_BINS) as u8;
        }
        for (k, pair) in q.chunks_exact(2).enumerate() {
            codes[g * MLX_GROUP / 2 + k] = pair[0] | (pair[1] << 4);
        }
        t.store(scale, scales, g);
        t.store(bias, biases, g);
    }
}

/// The layout of one (layer, K|V) tensor of a paged cache: `heads` runs of
/// `capacity` rows of `row_bytes` bytes; pages of `page_rows` rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageLayout {
    /// KV heads (runs of rows).
    pub heads: usize,
    /// Rows allocated per head.
    pub capacity: usize,
    /// Bytes per row.
    pub row_bytes: usize,
    /// Rows per page.
    pub page_rows: usize,
    /// Rows in use per head (the cache's token count).
    pub rows: usize,
}

impl PageLayout {
    /// Check the layout against a buffer of `len` bytes.
    pub fn check(&self, len: usize) -> Result<()> {
        if self.row_bytes == 0 || self.page_rows == 0 {
            return Err(Error::invalid("row_bytes and page_rows must be positive"));
        }
        if self.rows > self.capacity {
            return Err(Error::invalid(format!(
                "{} rows in use exceed the capacity of {}",
                self.rows, self.capacity
            )));
        }
        let need = self
            .heads
            .checked_mul(self.capacity)
            .and_then(|v| v.checked_mul(self.row_bytes));
        if need != Some(len) {
            return Err(Error::invalid(format!(
                "buffer of {len} bytes does not match {} heads x {} rows x {} bytes",
                self.heads, self.capacity, self.row_bytes
            )));
        }
        Ok(())
    }

    /// Pages in use per head.
    pub fn pages(&self) -> usize {
        if self.page_rows == 0 {
            0
        } else {
            self.rows.div_ceil(self.page_rows)
        }
    }

    /// Byte range of page `page` of head `head` (only its rows in use).
    pub fn page_range(&self, head: usize, page: usize) -> Result<std::ops::Range<usize>> {
        if head >= self.heads || page >= self.pages() {
            return Err(Error::invalid(format!(
                "page (head {head}, page {page}) is outside {} heads x {} pages",
                self.heads,
                self.pages()
            )));
        }
        let first = page * self.page_rows; // < rows: page < pages()
        let last = first.saturating_add(self.page_rows).min(self.rows);
        let span = |row: usize| {
            head.checked_mul(self.capacity)
                .and_then(|base| base.checked_add(row))
                .and_then(|r| r.checked_mul(self.row_bytes))
        };
        match (span(first), span(last)) {
            (Some(a), Some(b)) => Ok(a..b),
            _ => Err(Error::invalid("page offsets overflow the address space")),
        }
    }
}

/// xxh3-64 of a page's bytes; 0 is reserved for "no page", so a page that
/// hashes to 0 reports 1.
#[inline]
pub fn page_hash(bytes: &[u8]) -> u64 {
    match xxh3_64(bytes) {
        0 => 1,
        h => h,
    }
}

/// Hash pages `first..last` of every head into `out` (head-major:
/// `out[head * (last - first) + (page - first)]`).
pub fn hash_pages(
    buf: &[u8],
    layout: &PageLayout,
    first: usize,
    last: usize,
    out: &mut [u64],
) -> Result<()> {
    layout.check(buf.len())?;
    if first > last || last > layout.pages() {
        return Err(Error::invalid(format!(
            "page range {first}..{last} is outside 0..{}",
            layout.pages()
        )));
    }
    let span = last - first;
    if out.len() != layout.heads * span {
        return Err(Error::invalid(format!(
            "hash output holds {} values, {} needed",
            out.len(),
            layout.heads * span
        )));
    }
    for h in 0..layout.heads {
        for p in first..last {
            let r = layout.page_range(h, p)?;
            out[h * span + (p - first)] = page_hash(&buf[r]);
        }
    }
    Ok(())
}

/// The byte ranges in `buf` of the pages `(heads[i], pages[i])`, checked.
pub fn page_ranges(
    buf_len: usize,
    layout: &PageLayout,
    heads: &[u32],
    pages: &[u32],
) -> Result<Vec<std::ops::Range<usize>>> {
    layout.check(buf_len)?;
    if heads.len() != pages.len() {
        return Err(Error::invalid("heads and pages differ in length"));
    }
    heads
        .iter()
        .zip(pages)
        .map(|(&h, &p)| layout.page_range(h as usize, p as usize))
        .collect()
}

/// Copy the given ranges of `buf`, in order, into `out` (exactly their total).
pub fn gather_into(buf: &[u8], ranges: &[std::ops::Range<usize>], out: &mut [u8]) -> Result<()> {
    let total: usize = ranges.iter().map(|r| r.len()).sum();
    if total != out.len() {
        return Err(Error::invalid(format!(
            "gather output of {} bytes, {total} needed",
            out.len()
        )));
    }
    let mut at = 0;
    for r in ranges {
        out[at..at + r.len()].copy_from_slice(&buf[r.clone()]);
        at += r.len();
    }
    Ok(())
}

/// The concatenated bytes of the pages `(heads[i], pages[i])`.
pub fn gather_pages(
    buf: &[u8],
    layout: &PageLayout,
    heads: &[u32],
    pages: &[u32],
) -> Result<Vec<u8>> {
    let ranges = page_ranges(buf.len(), layout, heads, pages)?;
    let mut out = vec![0u8; ranges.iter().map(|r| r.len()).sum()];
    gather_into(buf, &ranges, &mut out)?;
    Ok(out)
}

/// Check that `payload` is exactly the pages `(heads[i], pages[i])` of
/// `layout` with the given hashes, without writing anything. Returns the
/// payload's byte ranges, in order.
pub fn verify_pages(
    payload: &[u8],
    layout: &PageLayout,
    heads: &[u32],
    pages: &[u32],
    hashes: &[u64],
) -> Result<Vec<std::ops::Range<usize>>> {
    if heads.len() != pages.len() || heads.len() != hashes.len() {
        return Err(Error::decode("page index and hash lists differ in length"));
    }
    let mut at = 0usize;
    let mut out = Vec::with_capacity(heads.len());
    for ((&h, &p), &want) in heads.iter().zip(pages).zip(hashes) {
        let r = layout
            .page_range(h as usize, p as usize)
            .map_err(|e| Error::decode(e.to_string()))?;
        let end = at + r.len();
        if end > payload.len() {
            return Err(Error::decode(format!(
                "page payload truncated: page (head {h}, page {p}) needs bytes {at}..{end} of {}",
                payload.len()
            )));
        }
        let got = page_hash(&payload[at..end]);
        if got != want {
            return Err(Error::decode(format!(
                "page (head {h}, page {p}) hashes to {got:016x}, the frame says {want:016x}"
            )));
        }
        out.push(at..end);
        at = end;
    }
    if at != payload.len() {
        return Err(Error::decode(format!(
            "{} bytes after the last page of the payload",
            payload.len() - at
        )));
    }
    Ok(out)
}

/// Write verified pages into `buf` (see [`verify_pages`]); nothing is written
/// unless every page checks out.
pub fn scatter_pages(
    buf: &mut [u8],
    layout: &PageLayout,
    heads: &[u32],
    pages: &[u32],
    hashes: &[u64],
    payload: &[u8],
) -> Result<()> {
    layout.check(buf.len())?;
    let ranges = verify_pages(payload, layout, heads, pages, hashes)?;
    for ((&h, &p), src) in heads.iter().zip(pages).zip(ranges) {
        let r = layout.page_range(h as usize, p as usize)?;
        buf[r].copy_from_slice(&payload[src]);
    }
    Ok(())
}

/// The byte ranges of the tails of pages `(heads[i], pages[i])`: each page's
/// rows in use from row `offset` of the page on.
pub fn tail_ranges(
    buf_len: usize,
    layout: &PageLayout,
    heads: &[u32],
    pages: &[u32],
    offset: usize,
) -> Result<Vec<std::ops::Range<usize>>> {
    let ranges = page_ranges(buf_len, layout, heads, pages)?;
    let skip = offset
        .checked_mul(layout.row_bytes)
        .ok_or_else(|| Error::invalid("tail offset overflows"))?;
    ranges
        .into_iter()
        .map(|r| {
            if skip >= r.len() {
                Err(Error::decode(format!(
                    "tail offset of {offset} rows leaves nothing of a page of {} bytes",
                    r.len()
                )))
            } else {
                Ok(r.start + skip..r.end)
            }
        })
        .collect()
}

/// Write page tails (see [`tail_ranges`]) into `buf`, each checked first:
/// the page's rows before `offset` as `buf` holds them, followed by its tail,
/// must hash to the page's hash. Nothing is written unless every page checks
/// out (a mismatch means the receiver's prefix differs from the sender's:
/// divergence, reported as [`Error::Decode`]).
pub fn scatter_tails(
    buf: &mut [u8],
    layout: &PageLayout,
    heads: &[u32],
    pages: &[u32],
    hashes: &[u64],
    payload: &[u8],
    offset: usize,
) -> Result<()> {
    if hashes.len() != heads.len() {
        return Err(Error::decode("page index and hash lists differ in length"));
    }
    let ranges = tail_ranges(buf.len(), layout, heads, pages, offset)?;
    let total: usize = ranges.iter().map(|r| r.len()).sum();
    if total != payload.len() {
        return Err(Error::decode(format!(
            "tail payload of {} bytes, {total} expected",
            payload.len()
        )));
    }
    let skip = offset * layout.row_bytes;
    let mut at = 0;
    for (r, &want) in ranges.iter().zip(hashes) {
        let mut h = Xxh3Default::new();
        h.update(&buf[r.start - skip..r.start]);
        h.update(&payload[at..at + r.len()]);
        let got = match h.digest() {
            0 => 1,
            v => v,
        };
        if got != want {
            return Err(Error::decode(format!(
                "page tail at byte {} does not complete the page: {got:016x} != {want:016x}",
                r.start
            )));
        }
        at += r.len();
    }
    at = 0;
    for r in ranges {
        let n = r.len();
        buf[r].copy_from_slice(&payload[at..at + n]);
        at += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn roundtrip(fmt: Format, v: &[f32]) -> Vec<f32> {
        let n = v.len();
        let mut q = vec![0u8; fmt.row_bytes(n).unwrap_or(0)];
        assert!(quantize(&f32_bytes(v), Float::F32, n, fmt, &mut q).is_ok());
        let mut out = vec![0u8; n * 4];
        assert!(dequantize(&q, fmt, n, &mut out).is_ok());
        out.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    #[test]
    fn zero_block_is_zero() {
        for fmt in [
            Format::Q4_0,
            Format::Q8_0,
            Format::F16,
            Format::Mlx4(Float::F16),
        ] {
            assert!(roundtrip(fmt, &[0.0; 64]).iter().all(|&x| x == 0.0));
        }
    }

    #[test]
    fn refuses_non_finite_and_bad_shapes() {
        let mut q = vec![0u8; 18];
        let mut v = vec![0f32; 32];
        v[3] = f32::NAN;
        assert!(quantize(&f32_bytes(&v), Float::F32, 32, Format::Q4_0, &mut q).is_err());
        assert!(quantize(&f32_bytes(&[0.0; 31]), Float::F32, 31, Format::Q4_0, &mut q).is_err());
        assert!(quantize(
            &f32_bytes(&[0.0; 32]),
            Float::F32,
            32,
            Format::Q4_0,
            &mut q[..17]
        )
        .is_err());
    }

    #[test]
    fn pages_roundtrip_and_refuse_tampering() {
        let layout = PageLayout {
            heads: 2,
            capacity: 8,
            row_bytes: 3,
            page_rows: 4,
            rows: 6,
        };
        let buf: Vec<u8> = (0..48u8).collect();
        let heads = [0u32, 1, 1];
        let pages = [1u32, 0, 1];
        let payload = gather_pages(&buf, &layout, &heads, &pages).unwrap_or_default();
        assert_eq!(payload.len(), 6 + 12 + 6);
        let mut hashes = [0u64; 3];
        for (i, (&h, &p)) in heads.iter().zip(&pages).enumerate() {
            let r = layout.page_range(h as usize, p as usize).unwrap_or(0..0);
            hashes[i] = page_hash(&buf[r]);
        }
        let mut dst = vec![0u8; 48];
        assert!(scatter_pages(&mut dst, &layout, &heads, &pages, &hashes, &payload).is_ok());
        for (&h, &p) in heads.iter().zip(&pages) {
            let r = layout.page_range(h as usize, p as usize).unwrap_or(0..0);
            assert_eq!(dst[r.clone()], buf[r]);
        }
        let mut bad = payload.clone();
        bad[0] ^= 1;
        let mut dst2 = vec![0u8; 48];
        assert!(scatter_pages(&mut dst2, &layout, &heads, &pages, &hashes, &bad).is_err());
        assert!(dst2.iter().all(|&b| b == 0));
        assert!(scatter_pages(&mut dst2, &layout, &[2], &[0], &[1], &payload[..12]).is_err());
        assert!(scatter_pages(&mut dst2, &layout, &[0], &[2], &[1], &payload[..12]).is_err());
    }

    #[test]
    fn tails_complete_pages_or_change_nothing() {
        let layout = PageLayout {
            heads: 2,
            capacity: 8,
            row_bytes: 3,
            page_rows: 4,
            rows: 7,
        };
        let src: Vec<u8> = (0..48u8).collect();
        let r = layout.page_range(1, 1).unwrap_or(0..0); // rows 4..7 of head 1
        let want = page_hash(&src[r.clone()]);
        let mut dst = src.clone();
        dst[r.start + 3..r.end].fill(0); // the receiver has row 4 only
        let tail = &src[r.start + 3..r.end];
        let mut bad = dst.clone();
        bad[r.start] ^= 1; // a prefix that differs: refused, nothing written
        let before = bad.clone();
        assert!(scatter_tails(&mut bad, &layout, &[1], &[1], &[want], tail, 1).is_err());
        assert_eq!(bad, before);
        assert!(scatter_tails(&mut dst, &layout, &[1], &[1], &[want], tail, 1).is_ok());
        assert_eq!(dst, src);
        assert!(scatter_tails(&mut dst, &layout, &[1], &[1], &[want], tail, 3).is_err());
        assert!(scatter_tails(&mut dst, &layout, &[1], &[1], &[want], tail, 9).is_err());
    }

    proptest! {
        #[test]
        fn fast_rounding_matches_std(x in proptest::num::f32::ANY) {
            let want = x.round_ties_even();
            let got = rint(x);
            prop_assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()));
            if x.is_finite() && x.abs() < 2.0e9 {
                prop_assert_eq!(round_away(x).to_bits() & 0x7fff_ffff, x.round().to_bits() & 0x7fff_ffff);
            }
        }

        #[test]
        fn q8_error_is_bounded(v in proptest::collection::vec(-1000f32..1000f32, 32)) {
            let out = roundtrip(Format::Q8_0, &v);
            let amax = v.iter().fold(0f32, |a, x| a.max(x.abs()));
            for (a, b) in v.iter().zip(&out) {
                prop_assert!((a - b).abs() <= amax / 127.0 * 0.5 + amax * 1e-3 + 1e-6);
            }
        }

        #[test]
        fn q4_error_is_bounded(v in proptest::collection::vec(-1000f32..1000f32, 64)) {
            let out = roundtrip(Format::Q4_0, &v);
            for (blk, oblk) in v.chunks(32).zip(out.chunks(32)) {
                let amax = blk.iter().fold(0f32, |a, x| a.max(x.abs()));
                for (a, b) in blk.iter().zip(oblk) {
                    prop_assert!((a - b).abs() <= amax / 8.0 + amax * 1e-3 + 1e-6);
                }
            }
        }

        #[test]
        fn mlx4_error_is_bounded(v in proptest::collection::vec(-1000f32..1000f32, 128)) {
            let out = roundtrip(Format::Mlx4(Float::F32), &v);
            for (blk, oblk) in v.chunks(64).zip(out.chunks(64)) {
                let lo = blk.iter().fold(f32::INFINITY, |a, &x| a.min(x));
                let hi = blk.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
                // mlx moves the scale so that the larger-magnitude edge is
                // exact; the far edge may then clip by up to one step.
                let step = (hi - lo) / 15.0;
                for (a, b) in blk.iter().zip(oblk) {
                    prop_assert!((a - b).abs() <= step + (hi - lo) * 1e-4 + 1e-4);
                }
            }
        }

        #[test]
        fn scatter_never_panics(
            heads in proptest::collection::vec(0u32..4, 0..4),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            rows in 0usize..9,
        ) {
            let layout = PageLayout { heads: 2, capacity: 8, row_bytes: 3, page_rows: 4, rows };
            let pages: Vec<u32> = heads.iter().map(|h| h % 3).collect();
            let hashes: Vec<u64> = heads.iter().map(|&h| u64::from(h)).collect();
            let mut dst = vec![0u8; 48];
            let _ = scatter_pages(&mut dst, &layout, &heads, &pages, &hashes, &payload);
        }
    }
}
