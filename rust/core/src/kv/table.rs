//! Page-hash tables and page diffs.
//!
//! A page table holds one `u64` page hash per (layer, K|V, head, page): `rows`
//! rows (`layers x 2 x heads`, row `(layer * 2 + kind) * heads + head`) of
//! `width` slots, little-endian, 0 meaning "no page". Its digest is the
//! wrapping sum of a keyed mix of every hash ([`mix`], keyed by [`key`]), kept
//! incrementally: every function that writes a table returns the change of
//! that sum, so a caller never re-reads the whole table. Links diff their
//! cache's table against a table of what the peer holds ([`plan_diff`]).
//!
//! Every function checks the table's shape against the buffer and returns an
//! [`Error`] instead of panicking; nothing is written when a check fails.

use super::{page_hash, PageLayout};
use crate::error::{Error, Result};

const M1: u64 = 0x9E37_79B9_7F4A_7C15;
const M2: u64 = 0xFF51_AFD7_ED55_8CCD;
const M3: u64 = 0xC4CE_B9FE_1A85_EC53;

/// The keyed 64-bit mix of one page hash; 0 (no page) mixes to 0.
#[inline]
pub fn mix(hash: u64, key: u64) -> u64 {
    if hash == 0 {
        return 0;
    }
    let mut x = hash ^ key.wrapping_mul(M1);
    x ^= x >> 33;
    x = x.wrapping_mul(M2);
    x ^= x >> 33;
    x = x.wrapping_mul(M3);
    x ^ (x >> 33)
}

/// The key of slot `page` of row `row`.
#[inline]
pub fn key(row: usize, page: usize) -> u64 {
    ((row as u64) << 32) | page as u64
}

/// The most rows a page table may have (layers x 2 x KV heads).
pub const MAX_ROWS: usize = 1 << 24;

/// The shape of a page table: `rows` rows of `width` `u64` slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableShape {
    /// layers x 2 x heads.
    pub rows: usize,
    /// Slots (pages) per row.
    pub width: usize,
}

impl TableShape {
    /// Check the shape against a buffer of `len` bytes.
    pub fn check(&self, len: usize) -> Result<()> {
        if self.rows > MAX_ROWS {
            // (A table without pages would pass the size check with any
            // count of rows, and every per-row loop would run that long.)
            return Err(Error::invalid(format!(
                "page table of {} rows: at most {MAX_ROWS}",
                self.rows
            )));
        }
        let need = self
            .rows
            .checked_mul(self.width)
            .and_then(|v| v.checked_mul(8));
        if need != Some(len) {
            return Err(Error::invalid(format!(
                "page table of {len} bytes does not match {} rows x {} pages of u64",
                self.rows, self.width
            )));
        }
        Ok(())
    }

    fn check_range(&self, first: usize, last: usize) -> Result<()> {
        if first > last || last > self.width {
            return Err(Error::invalid(format!(
                "page range {first}..{last} is outside the table's 0..{}",
                self.width
            )));
        }
        Ok(())
    }
}

/// `row0 + n <= rows`, without overflow.
fn fits(row0: usize, n: usize, rows: usize) -> bool {
    matches!(row0.checked_add(n), Some(t) if t <= rows)
}

#[inline]
fn get(table: &[u8], slot: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&table[slot * 8..slot * 8 + 8]);
    u64::from_le_bytes(b)
}

#[inline]
fn put(table: &mut [u8], slot: usize, value: u64) {
    table[slot * 8..slot * 8 + 8].copy_from_slice(&value.to_le_bytes());
}

/// The wrapping sum of the mixes of slots `first..last` of every row.
pub fn range_sum(table: &[u8], shape: TableShape, first: usize, last: usize) -> Result<u64> {
    shape.check(table.len())?;
    shape.check_range(first, last)?;
    let mut sum = 0u64;
    for row in 0..shape.rows {
        let base = row * shape.width;
        for page in first..last {
            sum = sum.wrapping_add(mix(get(table, base + page), key(row, page)));
        }
    }
    Ok(sum)
}

/// Replace slots `first..first + n` of every row by `block` (`rows x n`
/// little-endian `u64`, row-major). Returns the change of the table's sum.
pub fn set_range(table: &mut [u8], shape: TableShape, first: usize, block: &[u8]) -> Result<u64> {
    shape.check(table.len())?;
    if shape.rows == 0 || block.len() % (8 * shape.rows) != 0 {
        return Err(Error::invalid(format!(
            "a block of {} bytes is not {} rows of u64",
            block.len(),
            shape.rows
        )));
    }
    let n = block.len() / (8 * shape.rows);
    let last = first
        .checked_add(n)
        .ok_or_else(|| Error::invalid("page range overflows"))?;
    shape.check_range(first, last)?;
    let mut delta = 0u64;
    for row in 0..shape.rows {
        let base = row * shape.width;
        for (i, page) in (first..last).enumerate() {
            let k = key(row, page);
            let new = get(block, row * n + i);
            delta = delta
                .wrapping_sub(mix(get(table, base + page), k))
                .wrapping_add(mix(new, k));
            put(table, base + page, new);
        }
    }
    Ok(delta)
}

/// Zero slots `first..last` of every row (`last` clamped to the width).
/// Returns the change of the table's sum.
pub fn cut(table: &mut [u8], shape: TableShape, first: usize, last: usize) -> Result<u64> {
    shape.check(table.len())?;
    let last = last.min(shape.width);
    if first >= last {
        return Ok(0);
    }
    let mut delta = 0u64;
    for row in 0..shape.rows {
        let base = row * shape.width;
        for page in first..last {
            delta = delta.wrapping_sub(mix(get(table, base + page), key(row, page)));
            put(table, base + page, 0);
        }
    }
    Ok(delta)
}

/// What [`set_pages`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetPages {
    /// Written: the change of the table's sum and one past the highest page
    /// written (0 when none).
    Done {
        /// The change of the table's sum.
        delta: u64,
        /// One past the highest page written.
        end: usize,
    },
    /// Nothing written: a page lies beyond the width; the table must grow to
    /// this many slots first.
    Grow(usize),
}

/// Set slot `pages[i]` of row `row0 + heads[i]` to `hashes[i]`, in order.
/// `heads[i]` must be below `heads`. Returns [`SetPages::Grow`] (writing
/// nothing) when a page lies beyond the table's width.
pub fn set_pages(
    table: &mut [u8],
    shape: TableShape,
    heads: usize,
    row0: usize,
    head_index: &[u32],
    pages: &[u32],
    hashes: &[u64],
) -> Result<SetPages> {
    shape.check(table.len())?;
    if head_index.len() != pages.len() || pages.len() != hashes.len() {
        return Err(Error::invalid("head, page and hash lists differ in length"));
    }
    if !fits(row0, heads, shape.rows) {
        return Err(Error::invalid(format!(
            "rows {row0}..+{heads} are outside the table's {} rows",
            shape.rows
        )));
    }
    let mut end = 0usize;
    for &h in head_index {
        if h as usize >= heads {
            return Err(Error::invalid(format!("head {h} is outside 0..{heads}")));
        }
    }
    for &p in pages {
        end = end.max(p as usize + 1);
    }
    if end > shape.width {
        return Ok(SetPages::Grow(end));
    }
    let mut delta = 0u64;
    for ((&h, &p), &new) in head_index.iter().zip(pages).zip(hashes) {
        let row = row0 + h as usize;
        let slot = row * shape.width + p as usize;
        let k = key(row, p as usize);
        delta = delta
            .wrapping_sub(mix(get(table, slot), k))
            .wrapping_add(mix(new, k));
        put(table, slot, new);
    }
    Ok(SetPages::Done { delta, end })
}

/// Hash pages `first..last` of every head of one (layer, K|V) tensor
/// (`buf`, laid out as `layout`) into slots `first..last` of rows
/// `row0 .. row0 + layout.heads`. Returns the change of the table's sum.
pub fn hash_into(
    buf: &[u8],
    layout: &PageLayout,
    first: usize,
    last: usize,
    table: &mut [u8],
    shape: TableShape,
    row0: usize,
) -> Result<u64> {
    layout.check(buf.len())?;
    shape.check(table.len())?;
    shape.check_range(first, last)?;
    if last > layout.pages() {
        return Err(Error::invalid(format!(
            "page range {first}..{last} is outside 0..{}",
            layout.pages()
        )));
    }
    if !fits(row0, layout.heads, shape.rows) {
        return Err(Error::invalid(format!(
            "rows {row0}..+{} are outside the table's {} rows",
            layout.heads, shape.rows
        )));
    }
    let mut delta = 0u64;
    for h in 0..layout.heads {
        let row = row0 + h;
        for page in first..last {
            let new = page_hash(&buf[layout.page_range(h, page)?]);
            let slot = row * shape.width + page;
            let k = key(row, page);
            delta = delta
                .wrapping_sub(mix(get(table, slot), k))
                .wrapping_add(mix(new, k));
            put(table, slot, new);
        }
    }
    Ok(delta)
}

/// One run of pages for [`apply_runs`]: pages `(heads[i], pages[i])` of the
/// tensor `tensor` (`layer * 2 + kind`) with hashes `hashes[i]`, their rows
/// from row `offset` of each page on (0: whole pages; else tails that
/// complete the pages the receiver holds) back to back in `payload`.
#[derive(Clone, Copy, Debug)]
pub struct PageRun<'a> {
    /// The (layer, K|V) tensor: `layer * 2 + kind`.
    pub tensor: usize,
    /// Rows of each page the payload skips.
    pub offset: usize,
    /// Head of each page.
    pub heads: &'a [u32],
    /// Page index of each page.
    pub pages: &'a [u32],
    /// Hash of each (whole) page.
    pub hashes: &'a [u64],
    /// The pages' rows, back to back.
    pub payload: &'a [u8],
}

/// What [`apply_runs`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The change of the table's sum.
    pub delta: u64,
    /// The first row the runs touched (at most the `first_row` passed in).
    pub first_row: usize,
    /// Tails of some run did not complete the pages held (left unwritten).
    pub diverged: bool,
}

/// Write runs of pages into a cache's tensors (`tensors[layer * 2 + kind]`,
/// each laid out as `layout`, whose `rows` are the rows in use after the
/// write) and bring slots `first..layout.pages()` of its page table up to
/// date, where `first` is the lower of `stale_page` and the page of the
/// first row touched (`first_row` or a run's first row).
///
/// Each run is checked before it is written, as [`scatter_pages`] and
/// [`scatter_tails`] do: whole pages that do not match their hashes fail
/// with [`Error::Decode`] (runs before it stay written); tails that do not
/// complete the pages held are left out and reported as `diverged`. The
/// pages a run wrote take its hashes, already checked against the bytes
/// written, so they are not hashed again; every other page of the range is
/// hashed. Rows are `tensor * layout.heads + head`; the table must hold
/// `tensors.len() * layout.heads` rows and at least `layout.pages()` slots
/// per row.
///
/// [`scatter_pages`]: super::scatter_pages
/// [`scatter_tails`]: super::scatter_tails
pub fn apply_runs(
    tensors: &mut [&mut [u8]],
    layout: &PageLayout,
    runs: &[PageRun<'_>],
    first_row: usize,
    stale_page: usize,
    table: &mut [u8],
    shape: TableShape,
) -> Result<Applied> {
    for t in tensors.iter() {
        layout.check(t.len())?;
    }
    shape.check(table.len())?;
    let rows = tensors
        .len()
        .checked_mul(layout.heads)
        .ok_or_else(|| Error::invalid("table rows overflow"))?;
    if rows != shape.rows {
        return Err(Error::invalid(format!(
            "{} tensors of {} heads do not match the table's {} rows",
            tensors.len(),
            layout.heads,
            shape.rows
        )));
    }
    let last = layout.pages();
    shape.check_range(0, last)?;
    if let Some(r) = runs.iter().find(|r| r.tensor >= tensors.len()) {
        return Err(Error::invalid(format!(
            "run of tensor {} is outside the cache's {} tensors",
            r.tensor,
            tensors.len()
        )));
    }
    let mut first_row = first_row;
    let mut diverged = false;
    // (slot, hash) of every page written.
    let mut given: Vec<(usize, u64)> = Vec::new();
    for r in runs {
        let t = &mut *tensors[r.tensor];
        let done = if r.offset == 0 {
            super::scatter_pages(t, layout, r.heads, r.pages, r.hashes, r.payload)
        } else {
            super::scatter_tails(t, layout, r.heads, r.pages, r.hashes, r.payload, r.offset)
        };
        match done {
            Ok(()) => {
                for ((&h, &p), &x) in r.heads.iter().zip(r.pages).zip(r.hashes) {
                    // In range: the scatter checked head and page.
                    let row = r.tensor * layout.heads + h as usize;
                    given.push((row * shape.width + p as usize, x));
                }
            }
            Err(Error::Decode(_)) if r.offset > 0 => diverged = true,
            Err(e) => return Err(e),
        }
        if let Some(&p) = r.pages.iter().min() {
            let row = (p as usize)
                .saturating_mul(layout.page_rows)
                .saturating_add(r.offset);
            first_row = first_row.min(row);
        }
    }
    // Stable: of two runs writing one page, the later one's hash stays.
    given.sort_by_key(|&(slot, _)| slot);
    let first = stale_page
        .min(first_row / layout.page_rows.max(1))
        .min(last);
    let mut at = 0usize;
    let mut delta = 0u64;
    for (i, t) in tensors.iter().enumerate() {
        for h in 0..layout.heads {
            let row = i * layout.heads + h;
            for page in first..last {
                let slot = row * shape.width + page;
                let mut new = None;
                while at < given.len() && given[at].0 <= slot {
                    if given[at].0 == slot {
                        new = Some(given[at].1);
                    }
                    at += 1;
                }
                let new = match new {
                    Some(x) => x,
                    None => page_hash(&t[layout.page_range(h, page)?]),
                };
                let k = key(row, page);
                delta = delta
                    .wrapping_sub(mix(get(table, slot), k))
                    .wrapping_add(mix(new, k));
                put(table, slot, new);
            }
        }
    }
    Ok(Applied {
        delta,
        first_row,
        diverged,
    })
}

/// What a diff compares: the sender's table and what it knows the peer holds.
#[derive(Clone, Copy, Debug)]
pub struct DiffInput {
    /// Heads per (layer, K|V) (rows are `layers x 2 x heads`).
    pub heads: usize,
    /// The first page that may differ.
    pub first: usize,
    /// Pages the cache holds (per row).
    pub pages: usize,
    /// Tokens (rows) the cache holds.
    pub tokens: usize,
    /// Tokens the peer holds.
    pub held: usize,
    /// Rows per page.
    pub page_rows: usize,
    /// Bytes per row.
    pub row_bytes: usize,
    /// The peer's partial last page, which travels as a tail (its rows from
    /// `held` on), if any.
    pub tail_page: Option<usize>,
    /// Page bytes to send at most (at least one page always goes).
    pub budget: usize,
    /// The peer table's slots from here on are all 0.
    pub acked_end: usize,
}

/// Pages of one (layer, K|V) that travel from row `offset` of each page on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedRun {
    /// `layer * 2 + kind`.
    pub layer_kind: usize,
    /// Rows of each page left out (0: whole pages).
    pub offset: usize,
    /// Head of each page.
    pub heads: Vec<u32>,
    /// Index of each page.
    pub pages: Vec<u32>,
    /// Hash of each (whole) page.
    pub hashes: Vec<u64>,
}

/// What [`plan_diff`] decided (and wrote into the peer's table).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiffPlan {
    /// Runs in wire order: whole pages first, then tails; by layer and K|V,
    /// each run's pages by head, then page.
    pub runs: Vec<PlannedRun>,
    /// Pages sent.
    pub sent: usize,
    /// Page bytes sent.
    pub bytes: usize,
    /// The budget ran out: the first page not (entirely) sent.
    pub resume: Option<usize>,
    /// The change of the peer table's sum.
    pub delta: u64,
    /// One past the peer table's last nonzero slot, as far as known.
    pub end: usize,
}

/// Compare pages `input.first..input.pages` of `mine` with `acked` (the
/// peer's table, at least `max(pages, first)` wide) and plan the pages that
/// differ, earliest pages first while `input.budget` lasts. Then record them
/// in `acked`: slots from `pages` on are cleared and the sent pages set to
/// their hashes. Returns `None`, changing nothing, when no page differs and
/// the peer holds `input.tokens` tokens and the same sum (`same_sum`).
pub fn plan_diff(
    mine: &[u8],
    mine_shape: TableShape,
    acked: &mut [u8],
    acked_shape: TableShape,
    input: &DiffInput,
    same_sum: bool,
) -> Result<Option<DiffPlan>> {
    mine_shape.check(mine.len())?;
    acked_shape.check(acked.len())?;
    let d = input;
    let rows = mine_shape.rows;
    if acked_shape.rows != rows || d.heads == 0 || d.heads > MAX_ROWS || rows % (2 * d.heads) != 0 {
        return Err(Error::invalid(format!(
            "tables of {rows} and {} rows for {} heads",
            acked_shape.rows, d.heads
        )));
    }
    if d.page_rows == 0 || d.tokens.div_ceil(d.page_rows) != d.pages {
        return Err(Error::invalid(format!(
            "{} pages of {} rows for {} tokens",
            d.pages, d.page_rows, d.tokens
        )));
    }
    if let Some(t) = d.tail_page {
        // A tail starts inside the rows the page holds (checked before the
        // peer's table is cut: nothing may change when the plan fails).
        let inside = t < d.pages
            && matches!(t.checked_mul(d.page_rows),
                Some(s) if s <= d.held && d.held < d.tokens.min(s.saturating_add(d.page_rows)));
        if !inside {
            return Err(Error::invalid(format!(
                "tail of page {t} from row {} of {} tokens",
                d.held, d.tokens
            )));
        }
    }
    let last = d.pages.max(d.first);
    if d.pages > mine_shape.width || last > acked_shape.width {
        return Err(Error::invalid(format!(
            "page range {}..{} is outside tables of {} and {} pages",
            d.first, d.pages, mine_shape.width, acked_shape.width
        )));
    }
    // Page-major: earlier pages first when the budget runs out.
    let mut diff: Vec<(usize, usize)> = Vec::new();
    for page in d.first..d.pages {
        for row in 0..rows {
            let h = get(mine, row * mine_shape.width + page);
            if h != 0 && h != get(acked, row * acked_shape.width + page) {
                diff.push((page, row));
            }
        }
    }
    if diff.is_empty() && d.held == d.tokens && same_sum {
        return Ok(None);
    }
    let tail_skip = |page: usize| match d.tail_page {
        Some(t) if t == page => d.held.saturating_sub(t.saturating_mul(d.page_rows)),
        _ => 0,
    };
    let size = |page: usize| {
        let rows_in = d.page_rows.min(d.tokens - page * d.page_rows);
        rows_in
            .saturating_sub(tail_skip(page))
            .saturating_mul(d.row_bytes)
    };
    let total = diff
        .iter()
        .fold(0usize, |acc, &(p, _)| acc.saturating_add(size(p)));
    let mut resume = None;
    let mut bytes = total;
    if !diff.is_empty() && total > d.budget {
        let mut fit = 0;
        let mut acc = 0usize;
        for &(p, _) in &diff {
            acc = acc.saturating_add(size(p));
            if acc > d.budget {
                break;
            }
            fit += 1;
        }
        let fit = fit.max(1); // always progress
        if fit < diff.len() {
            resume = Some(diff[fit].0);
            diff.truncate(fit);
            bytes = diff
                .iter()
                .fold(0usize, |acc, &(p, _)| acc.saturating_add(size(p)));
        }
    }
    // The peer holds what is sent: nothing from `pages` on, then these pages.
    let mut end = d.acked_end;
    let mut delta = cut(acked, acked_shape, d.pages, d.acked_end)?;
    if d.pages < d.acked_end.min(acked_shape.width) {
        end = d.pages;
    }
    let mut ordered: Vec<(usize, usize, usize)> =
        diff.iter().map(|&(p, r)| (tail_skip(p), r, p)).collect();
    ordered.sort_unstable();
    let mut runs: Vec<PlannedRun> = Vec::new();
    for &(offset, row, page) in &ordered {
        let layer_kind = row / d.heads;
        let head = row % d.heads;
        let hash = get(mine, row * mine_shape.width + page);
        match runs.last_mut() {
            Some(r) if r.offset == offset && r.layer_kind == layer_kind => {
                r.heads.push(head as u32);
                r.pages.push(page as u32);
                r.hashes.push(hash);
            }
            _ => runs.push(PlannedRun {
                layer_kind,
                offset,
                heads: vec![head as u32],
                pages: vec![page as u32],
                hashes: vec![hash],
            }),
        }
        let slot = row * acked_shape.width + page;
        let k = key(row, page);
        delta = delta
            .wrapping_sub(mix(get(acked, slot), k))
            .wrapping_add(mix(hash, k));
        put(acked, slot, hash);
        end = end.max(page + 1);
    }
    Ok(Some(DiffPlan {
        runs,
        sent: diff.len(),
        bytes,
        resume,
        delta,
        end,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn table(values: &[u64]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn values(table: &[u8]) -> Vec<u64> {
        (0..table.len() / 8).map(|i| get(table, i)).collect()
    }

    fn full_sum(t: &[u8], shape: TableShape) -> u64 {
        range_sum(t, shape, 0, shape.width).unwrap_or(1)
    }

    #[test]
    fn zero_mixes_to_zero() {
        assert_eq!(mix(0, 12345), 0);
        assert_ne!(mix(1, 0), 0);
    }

    #[test]
    fn shapes_are_checked() {
        let shape = TableShape { rows: 2, width: 3 };
        let mut t = vec![0u8; 40];
        assert!(range_sum(&t, shape, 0, 3).is_err());
        assert!(cut(&mut t, shape, 0, 3).is_err());
        let mut t = vec![0u8; 48];
        assert!(range_sum(&t, shape, 2, 4).is_err());
        assert!(set_range(&mut t, shape, 2, &table(&[1, 2, 3, 4])).is_err());
        assert!(set_range(&mut t, shape, 0, &table(&[1, 2, 3])).is_err());
        assert_eq!(
            set_pages(&mut t, shape, 1, 1, &[0], &[7], &[5]),
            Ok(SetPages::Grow(8))
        );
        assert!(set_pages(&mut t, shape, 1, 1, &[1], &[0], &[5]).is_err());
        assert!(set_pages(&mut t, shape, 2, 1, &[0], &[0], &[5]).is_err());
        assert!(set_pages(&mut t, shape, 1, 0, &[0, 0], &[0], &[5]).is_err());
        assert_eq!(values(&t), vec![0; 6]);
    }

    #[test]
    fn hash_into_matches_hash_pages() {
        let layout = PageLayout {
            heads: 2,
            capacity: 8,
            row_bytes: 3,
            page_rows: 2,
            rows: 7,
        };
        let buf: Vec<u8> = (0..48u8).collect();
        let mut want = vec![0u64; 2 * 4];
        assert!(super::super::hash_pages(&buf, &layout, 0, 4, &mut want).is_ok());
        // Rows 2..4 of a 6-row table (layers x 2 x heads = 1 x 2 x ... 3 x 2).
        let shape = TableShape { rows: 6, width: 5 };
        let mut t = vec![0u8; 6 * 5 * 8];
        let delta = hash_into(&buf, &layout, 0, 4, &mut t, shape, 2);
        assert_eq!(delta, Ok(full_sum(&t, shape)));
        let v = values(&t);
        assert_eq!(&v[10..14], &want[0..4]);
        assert_eq!(&v[15..19], &want[4..8]);
        assert!(hash_into(&buf, &layout, 0, 5, &mut t, shape, 2).is_err());
        assert!(hash_into(&buf, &layout, 0, 4, &mut t, shape, 5).is_err());
    }

    /// A run's fields, owned: tensor, offset, heads, pages, hashes, payload.
    type OwnedRun = (usize, usize, Vec<u32>, Vec<u32>, Vec<u64>, Vec<u8>);

    /// Slots `first..last` of every row as [`hash_into`] computes them.
    fn rehashed(tensors: &[Vec<u8>], layout: &PageLayout, width: usize) -> Vec<u64> {
        let shape = TableShape {
            rows: tensors.len() * layout.heads,
            width,
        };
        let mut t = vec![0u8; shape.rows * width * 8];
        for (i, b) in tensors.iter().enumerate() {
            let r = hash_into(
                b,
                layout,
                0,
                layout.pages(),
                &mut t,
                shape,
                i * layout.heads,
            );
            assert!(r.is_ok());
        }
        values(&t)
    }

    fn apply(
        tensors: &mut [Vec<u8>],
        layout: &PageLayout,
        runs: &[PageRun<'_>],
        first_row: usize,
        table: &mut [u8],
        shape: TableShape,
    ) -> Result<Applied> {
        let mut views: Vec<&mut [u8]> = tensors.iter_mut().map(|t| t.as_mut_slice()).collect();
        apply_runs(
            &mut views,
            layout,
            runs,
            first_row,
            usize::MAX,
            table,
            shape,
        )
    }

    #[test]
    fn apply_runs_writes_pages_and_takes_their_hashes() {
        // 1 layer (K, V) x 2 heads; pages of 4 rows of 3 bytes; 7 rows in use.
        let layout = PageLayout {
            heads: 2,
            capacity: 8,
            row_bytes: 3,
            page_rows: 4,
            rows: 7,
        };
        let src: Vec<Vec<u8>> = (0..2u8)
            .map(|k| (0..48u8).map(|b| b.wrapping_mul(7) ^ k).collect())
            .collect();
        // The receiver holds rows 0..5; row 5 and 6 are new.
        let mut dst: Vec<Vec<u8>> = src
            .iter()
            .map(|b| {
                let mut b = b.clone();
                for head in 0..2 {
                    b[head * 24 + 15..head * 24 + 24].fill(0);
                }
                b
            })
            .collect();
        let ph =
            |t: &[u8], h: usize, p: usize| page_hash(&t[layout.page_range(h, p).unwrap_or(0..0)]);
        // K: whole page 1 of both heads; V: tails (from row 1 of page 1).
        let k_payload =
            super::super::gather_pages(&src[0], &layout, &[0, 1], &[1, 1]).unwrap_or_default();
        let v_tail: Vec<u8> = [&src[1][15..21], &src[1][39..45]].concat();
        let k_hashes = [ph(&src[0], 0, 1), ph(&src[0], 1, 1)];
        let v_hashes = [ph(&src[1], 0, 1), ph(&src[1], 1, 1)];
        let runs = [
            PageRun {
                tensor: 0,
                offset: 0,
                heads: &[0, 1],
                pages: &[1, 1],
                hashes: &k_hashes,
                payload: &k_payload,
            },
            PageRun {
                tensor: 1,
                offset: 1,
                heads: &[0, 1],
                pages: &[1, 1],
                hashes: &v_hashes,
                payload: &v_tail,
            },
        ];
        let shape = TableShape { rows: 4, width: 3 };
        let mut t = vec![0u8; 4 * 3 * 8];
        let done = apply(&mut dst, &layout, &runs, 5, &mut t, shape);
        assert_eq!(
            done,
            Ok(Applied {
                delta: full_sum(&t, shape),
                first_row: 4,
                diverged: false
            })
        );
        for k in 0..2 {
            for head in 0..2 {
                let r = layout.page_range(head, 1).unwrap_or(0..0);
                assert_eq!(dst[k][r.clone()], src[k][r]);
            }
        }
        // Page 1 takes the run hashes, those of the rows written; page 0
        // (below the first row touched) is left alone.
        let mut want = rehashed(&dst, &layout, 3);
        for row in 0..4 {
            want[row * 3] = 0;
        }
        assert_eq!(values(&t), want);

        // Tails that do not complete what the receiver holds: left out.
        let mut other = dst.clone();
        other[1][12] ^= 1; // row 4 of head 0, V
        let before = other[1].clone();
        let mut t2 = vec![0u8; 4 * 3 * 8];
        let done = apply(&mut other, &layout, &runs[1..], 0, &mut t2, shape);
        assert_eq!(done.map(|a| a.diverged), Ok(true));
        assert_eq!(other[1], before);
        assert_eq!(values(&t2), rehashed(&other, &layout, 3));

        // Whole pages that do not match their hashes: an error.
        let mut bad = k_payload.clone();
        bad[0] ^= 1;
        let bad_run = PageRun {
            payload: &bad,
            ..runs[0]
        };
        let r = apply(&mut dst, &layout, &[bad_run], 7, &mut t, shape);
        assert!(matches!(r, Err(Error::Decode(_))));
        // A tensor out of range, a table of another shape: refused.
        let far = PageRun {
            tensor: 2,
            ..runs[0]
        };
        assert!(apply(&mut dst, &layout, &[far], 7, &mut t, shape).is_err());
        let narrow = TableShape { rows: 4, width: 1 };
        assert!(apply(&mut dst, &layout, &[], 7, &mut t[..32], narrow).is_err());
    }

    proptest! {
        #[test]
        fn sums_follow_every_write(
            ops in proptest::collection::vec((0u8..4, 0usize..6, 0usize..4, 0u64..5), 1..30),
        ) {
            let shape = TableShape { rows: 4, width: 6 };
            let mut t = vec![0u8; 4 * 6 * 8];
            let mut sum = 0u64;
            for (op, a, b, v) in ops {
                let delta = match op {
                    0 => {
                        let n = b.min(6 - a.min(6));
                        let block: Vec<u64> = (0..4 * n as u64).map(|i| (i + v) % 3).collect();
                        set_range(&mut t, shape, a.min(6), &table(&block))
                    }
                    1 => cut(&mut t, shape, a, a + b),
                    _ => {
                        let heads = [(b % 2) as u32, ((b + 1) % 2) as u32];
                        let pages = [a as u32, a.saturating_sub(1) as u32];
                        match set_pages(&mut t, shape, 2, 2, &heads, &pages, &[v, v * 7]) {
                            Ok(SetPages::Done { delta, end }) => {
                                prop_assert_eq!(end, a + 1);
                                Ok(delta)
                            }
                            Ok(SetPages::Grow(_)) => Ok(0),
                            Err(e) => Err(e),
                        }
                    }
                };
                prop_assert!(delta.is_ok());
                sum = sum.wrapping_add(delta.unwrap_or(0));
                prop_assert_eq!(sum, full_sum(&t, shape));
            }
        }

        #[test]
        fn applied_runs_leave_true_hashes(
            runs in proptest::collection::vec(
                (0usize..3, 0usize..3, proptest::collection::vec((0u32..3, 0u32..3, any::<u64>()), 0..4),
                 proptest::collection::vec(any::<u8>(), 0..40)),
                0..4,
            ),
            rows in 0usize..9,
            first_row in 0usize..12,
            honest in any::<bool>(),
        ) {
            let layout = PageLayout { heads: 2, capacity: 8, row_bytes: 3, page_rows: 4, rows };
            let src: Vec<Vec<u8>> = (0..2u8).map(|k| (0..48u8).map(|b| b ^ (k * 91)).collect()).collect();
            let mut dst = vec![vec![0u8; 48]; 2];
            let owned: Vec<OwnedRun> = runs
                .into_iter()
                .map(|(tensor, offset, pages, payload)| {
                    let heads: Vec<u32> = pages.iter().map(|x| x.0).collect();
                    let idx: Vec<u32> = pages.iter().map(|x| x.1).collect();
                    let mut hashes: Vec<u64> = pages.iter().map(|x| x.2).collect();
                    let mut payload = payload;
                    if honest && tensor < 2 {
                        // Real pages of the source (where they exist).
                        if let Ok(p) = super::super::gather_pages(&src[tensor], &layout, &heads, &idx) {
                            hashes = heads
                                .iter()
                                .zip(&idx)
                                .map(|(&h, &p)| {
                                    let r = layout.page_range(h as usize, p as usize).unwrap_or(0..0);
                                    page_hash(&src[tensor][r])
                                })
                                .collect();
                            payload = p;
                        }
                    }
                    (tensor, offset, heads, idx, hashes, payload)
                })
                .collect();
            let runs: Vec<PageRun<'_>> = owned
                .iter()
                .map(|(tensor, offset, heads, pages, hashes, payload)| PageRun {
                    tensor: *tensor,
                    offset: *offset,
                    heads,
                    pages,
                    hashes,
                    payload,
                })
                .collect();
            let shape = TableShape { rows: 4, width: 3 };
            let mut t = vec![0u8; 4 * 3 * 8];
            if let Ok(done) = apply(&mut dst, &layout, &runs, first_row, &mut t, shape) {
                prop_assert_eq!(done.delta, full_sum(&t, shape));
                prop_assert!(done.first_row <= first_row);
                // Every slot in range holds the hash of the rows held.
                let want = rehashed(&dst, &layout, 3);
                let first = (done.first_row / 4).min(layout.pages());
                for row in 0..4 {
                    for page in first..layout.pages() {
                        prop_assert_eq!(values(&t)[row * 3 + page], want[row * 3 + page]);
                    }
                }
            }
        }

        #[test]
        fn a_plan_brings_the_peer_table_to_ours(
            mine_v in proptest::collection::vec(0u64..4, 2 * 2 * 5),
            acked_v in proptest::collection::vec(0u64..4, 2 * 2 * 7),
            tokens in 0usize..=20,
            first in 0usize..6,
            budget in 0usize..200,
        ) {
            // 1 layer x 2 (K|V) x 2 heads; pages of 4 rows of 3 bytes.
            let heads = 2;
            let pages = tokens.div_ceil(4);
            let mine_shape = TableShape { rows: 4, width: 5 };
            let acked_shape = TableShape { rows: 4, width: 7 };
            // Our table holds nothing beyond our pages.
            let mine_v: Vec<u64> = mine_v
                .iter()
                .enumerate()
                .map(|(i, &v)| if i % 5 < pages { v + 1 } else { 0 })
                .collect();
            let mine = table(&mine_v);
            let mut acked = table(&acked_v);
            let input = DiffInput {
                heads,
                first,
                pages,
                tokens,
                held: tokens / 2,
                page_rows: 4,
                row_bytes: 3,
                tail_page: None,
                budget,
                acked_end: 7,
            };
            let before = full_sum(&acked, acked_shape);
            let plan = plan_diff(&mine, mine_shape, &mut acked, acked_shape, &input, false);
            prop_assert!(plan.is_ok());
            let Some(plan) = plan.unwrap_or(None) else {
                return Ok(());
            };
            prop_assert_eq!(before.wrapping_add(plan.delta), full_sum(&acked, acked_shape));
            let a = values(&acked);
            for row in 0..4 {
                for page in pages..7 {
                    prop_assert_eq!(a[row * 7 + page], 0);
                }
                let upto = plan.resume.unwrap_or(pages);
                for page in first..upto {
                    let m = mine_v[row * 5 + page];
                    if m != 0 {
                        prop_assert_eq!(a[row * 7 + page], m);
                    }
                }
            }
            prop_assert_eq!(plan.sent, plan.runs.iter().map(|r| r.pages.len()).sum::<usize>());
            if plan.resume.is_some() {
                prop_assert!(plan.sent >= 1 && plan.bytes <= budget.max(12));
            }
        }
    }

    #[test]
    fn a_plan_orders_runs_and_tails() {
        // 2 layers x 2 x 1 head, pages of 4 rows: the peer holds 6 tokens,
        // we hold 10; page 1 is its partial last page.
        let mine_shape = TableShape { rows: 4, width: 3 };
        let acked_shape = TableShape { rows: 4, width: 3 };
        let mine = table(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        let mut acked = table(&[1, 0, 0, 4, 0, 0, 7, 0, 0, 10, 0, 0]);
        let input = DiffInput {
            heads: 1,
            first: 1,
            pages: 3,
            tokens: 10,
            held: 6,
            page_rows: 4,
            row_bytes: 2,
            tail_page: Some(1),
            budget: 1000,
            acked_end: 3,
        };
        let plan = plan_diff(&mine, mine_shape, &mut acked, acked_shape, &input, false);
        assert!(matches!(plan, Ok(Some(_))));
        let Ok(Some(plan)) = plan else {
            return;
        };
        let offsets: Vec<(usize, usize)> =
            plan.runs.iter().map(|r| (r.offset, r.layer_kind)).collect();
        assert_eq!(
            offsets,
            vec![
                (0, 0),
                (0, 1),
                (0, 2),
                (0, 3),
                (2, 0),
                (2, 1),
                (2, 2),
                (2, 3)
            ]
        );
        assert_eq!(plan.runs[0].pages, vec![2]);
        assert_eq!(plan.runs[4].pages, vec![1]);
        assert_eq!(plan.runs[4].hashes, vec![2]);
        assert_eq!(plan.sent, 8);
        assert_eq!(plan.bytes, 4 * (2 * 2) + 4 * (2 * 2));
        assert_eq!(values(&acked), values(&mine));
        // Nothing differs any more.
        let input = DiffInput {
            held: 10,
            tail_page: None,
            ..input
        };
        let again = plan_diff(&mine, mine_shape, &mut acked, acked_shape, &input, true);
        assert_eq!(again, Ok(None));
    }
}
