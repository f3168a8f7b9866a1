//! The diff-match-patch family over Unicode code points.
//!
//! A faithful port of Neil Fraser's diff-match-patch (the Python edition,
//! which counts code points, is the reference the tests compare against):
//!
//! - [`diff()`]: Myers' O(ND) diff with common prefix/suffix trimming,
//!   half-match, line mode and the semantic / efficiency cleanups.
//! - [`match_main`]: Bitap fuzzy search.
//! - [`make_patch`] / [`apply_patch`]: hunks with context, applied fuzzily.
//! - [`Patch::to_bytes`] / [`Patch::from_bytes`]: a compact binary form;
//!   [`Patch::to_text`] / [`Patch::from_text`]: the standard patch text.
//!
//! Texts are slices of code points (`&[char]`, or `&[u8]` / `&[u16]` /
//! `&[u32]` holding code points, which is how CPython stores strings; see
//! [`Unit`]): an index is a code point, never a UTF-8 byte or a UTF-16 unit,
//! so astral characters are never split.

mod cleanup;
mod codec;
mod delta;
mod diff;
mod matching;
mod patch;
mod unit;

use std::time::{Duration, Instant};

pub use cleanup::{cleanup_efficiency, cleanup_merge, cleanup_semantic, cleanup_semantic_lossless};
pub use codec::PATCH_FORMAT_VERSION;
pub use delta::{delta_from_diffs, make_delta, Delta, DeltaOp, DELTA_FORMAT_VERSION};
pub use diff::{diff, diff_main, levenshtein, text1, text2, x_index};
pub use matching::{match_main, MatchOptions, MATCH_MAX_BITS};
pub use patch::{
    apply_patch, make_patch, make_patch_from_diffs, Hunk, Patch, PatchOptions, MAX_MARGIN,
};
pub use unit::Unit;

/// The operation of one diff segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Text present only in the old version.
    Delete,
    /// Text present in both.
    Equal,
    /// Text present only in the new version.
    Insert,
}

impl Op {
    /// The diff-match-patch number of this op: -1, 0 or 1.
    pub fn as_i8(self) -> i8 {
        match self {
            Op::Delete => -1,
            Op::Equal => 0,
            Op::Insert => 1,
        }
    }

    /// The op for a diff-match-patch number.
    pub fn from_i8(v: i8) -> Option<Op> {
        match v {
            -1 => Some(Op::Delete),
            0 => Some(Op::Equal),
            1 => Some(Op::Insert),
            _ => None,
        }
    }
}

/// One diff segment: an op and its text (code points, or line ids in line mode).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Diff<T = char> {
    /// What happened to `text`.
    pub op: Op,
    /// The segment's content.
    pub text: Vec<T>,
}

impl<T> Diff<T> {
    /// A segment.
    pub fn new(op: Op, text: Vec<T>) -> Self {
        Diff { op, text }
    }
}

/// Which cleanup pass [`diff()`] runs after the raw diff.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Cleanup {
    /// Only merge adjacent segments (the raw `diff_main` output).
    None,
    /// Eliminate semantically trivial equalities (human-readable diffs).
    #[default]
    Semantic,
    /// Eliminate operationally trivial equalities (cheaper patches).
    Efficiency,
}

/// Options of [`diff()`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DiffOptions {
    /// Time budget; `None` means unlimited (and an optimal diff).
    pub timeout: Option<Duration>,
    /// Cost of an empty edit operation, in characters (efficiency cleanup).
    pub edit_cost: usize,
    /// Run a line-level diff first on large texts (faster, slightly less optimal).
    pub checklines: bool,
    /// The cleanup pass.
    pub cleanup: Cleanup,
}

impl Default for DiffOptions {
    fn default() -> Self {
        DiffOptions {
            timeout: Some(Duration::from_secs(1)),
            edit_cost: 4,
            checklines: true,
            cleanup: Cleanup::Semantic,
        }
    }
}

impl DiffOptions {
    pub(crate) fn deadline(&self) -> Deadline {
        Deadline::after(self.timeout)
    }
}

/// When a diff must give up refining and return what it has.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadline {
    at: Option<Instant>,
    /// `true` when a time limit applies (half-match only runs then, as in
    /// the reference: with unlimited time the diff stays optimal).
    pub(crate) limited: bool,
}

impl Deadline {
    pub(crate) fn after(timeout: Option<Duration>) -> Self {
        match timeout {
            Some(t) => Deadline {
                at: Instant::now().checked_add(t),
                limited: true,
            },
            None => Deadline {
                at: None,
                limited: false,
            },
        }
    }

    pub(crate) fn passed(&self) -> bool {
        match self.at {
            Some(at) => Instant::now() > at,
            None => false,
        }
    }
}

/// Substring search over one unit type (Python's `str.find` / `str.rfind`).
/// Bytes use SIMD `memchr::memmem`; wider units a first-unit scan, with a
/// linear-time fallback for long needles.
pub trait Search: Copy + PartialEq {
    /// First index `>= from` where `needle` occurs in `hay`.
    fn find_from(hay: &[Self], needle: &[Self], from: usize) -> Option<usize> {
        generic_find(hay, needle, from)
    }
    /// Last index `>= from` where `needle` occurs entirely within `hay[from..]`.
    fn rfind_from(hay: &[Self], needle: &[Self], from: usize) -> Option<usize> {
        generic_rfind(hay, needle, from)
    }
}

impl Search for u8 {
    fn find_from(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
        let tail = hay.get(from..)?;
        memchr::memmem::find(tail, needle).map(|i| i + from)
    }
    fn rfind_from(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
        let tail = hay.get(from..)?;
        memchr::memmem::rfind(tail, needle).map(|i| i + from)
    }
}
impl Search for u16 {}
impl Search for u32 {}
impl Search for char {}
impl Search for diff::LineId {}

/// First index `>= from` where `needle` occurs in `hay` (Python's
/// `str.find(needle, from)`).
pub(crate) fn find<T: Search>(hay: &[T], needle: &[T], from: usize) -> Option<usize> {
    T::find_from(hay, needle, from)
}

/// Last index `>= from` where `needle` occurs entirely within `hay[from..]`
/// (Python's `str.rfind(needle, from)`).
pub(crate) fn rfind<T: Search>(hay: &[T], needle: &[T], from: usize) -> Option<usize> {
    T::rfind_from(hay, needle, from)
}

fn generic_find<T: PartialEq + Copy>(hay: &[T], needle: &[T], from: usize) -> Option<usize> {
    if from > hay.len() {
        return None;
    }
    if needle.is_empty() {
        return Some(from);
    }
    if needle.len() > hay.len() - from {
        return None;
    }
    if needle.len() > 64 {
        return kmp_find(hay, needle, from);
    }
    let first = needle[0];
    let last_start = hay.len() - needle.len();
    let mut i = from;
    while i <= last_start {
        match hay[i..=last_start].iter().position(|&c| c == first) {
            None => return None,
            Some(off) => {
                i += off;
                if hay[i + 1..i + needle.len()] == needle[1..] {
                    return Some(i);
                }
                i += 1;
            }
        }
    }
    None
}

fn kmp_find<T: PartialEq + Copy>(hay: &[T], needle: &[T], from: usize) -> Option<usize> {
    let m = needle.len();
    let mut fail = vec![0usize; m];
    let mut k = 0;
    for i in 1..m {
        while k > 0 && needle[i] != needle[k] {
            k = fail[k - 1];
        }
        if needle[i] == needle[k] {
            k += 1;
        }
        fail[i] = k;
    }
    let mut q = 0;
    for (i, &c) in hay.iter().enumerate().skip(from) {
        while q > 0 && c != needle[q] {
            q = fail[q - 1];
        }
        if c == needle[q] {
            q += 1;
        }
        if q == m {
            return Some(i + 1 - m);
        }
    }
    None
}

fn generic_rfind<T: PartialEq + Copy>(hay: &[T], needle: &[T], from: usize) -> Option<usize> {
    if from > hay.len() || needle.len() > hay.len() - from {
        return None;
    }
    let Some(&first) = needle.first() else {
        return Some(hay.len());
    };
    // Candidate starts lie in from ..= last; scan them right to left.
    let mut end = hay.len() - needle.len() + 1;
    while end > from {
        let i = from + hay[from..end].iter().rposition(|&c| c == first)?;
        if hay[i + 1..i + needle.len()] == needle[1..] {
            return Some(i);
        }
        end = i;
    }
    None
}

/// Length of the common prefix.
pub(crate) fn common_prefix<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    a.iter().zip(b.iter()).take_while(|(x, y)| x == y).count()
}

/// Length of the common suffix.
pub(crate) fn common_suffix<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    a.iter()
        .rev()
        .zip(b.iter().rev())
        .take_while(|(x, y)| x == y)
        .count()
}

/// Length of the longest suffix of `a` that is a prefix of `b`.
pub(crate) fn common_overlap<T: Search>(a: &[T], b: &[T]) -> usize {
    if a.is_empty() || b.is_empty() {
        return 0;
    }
    let len = a.len().min(b.len());
    let a = &a[a.len() - len..];
    let b = &b[..len];
    if a == b {
        return len;
    }
    // Start by looking for a single character match and increase length
    // until no match is found (Neil Fraser's performance note).
    let mut best = 0;
    let mut length = 1;
    loop {
        let pattern = &a[len - length..];
        let Some(found) = find(b, pattern, 0) else {
            return best;
        };
        length += found;
        if length > len {
            return best;
        }
        if found == 0 || a[len - length..] == b[..length] {
            best = length;
            length += 1;
            if length > len {
                return best;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Vec<char> {
        s.chars().collect()
    }

    #[test]
    fn find_like_python() {
        let hay = c("abcabcab");
        assert_eq!(find(&hay, &c("cab"), 0), Some(2));
        assert_eq!(find(&hay, &c("cab"), 3), Some(5));
        assert_eq!(find(&hay, &c("cab"), 6), None);
        assert_eq!(find(&hay, &c(""), 8), Some(8));
        assert_eq!(rfind(&hay, &c("ab"), 0), Some(6));
        assert_eq!(rfind(&hay, &c("abc"), 4), None);
        let long: Vec<char> = "ab".repeat(100).chars().collect();
        let mut hay2 = "ab".repeat(300);
        hay2.push('x');
        hay2.push_str(&"ab".repeat(100));
        let hay2 = c(&hay2);
        assert_eq!(find(&hay2, &long, 0), Some(0));
        assert_eq!(find(&hay2, &long, 401), Some(601));
    }

    #[test]
    fn overlap() {
        assert_eq!(common_overlap(&c(""), &c("abcd")), 0);
        assert_eq!(common_overlap(&c("abc"), &c("abcd")), 3);
        assert_eq!(common_overlap(&c("123456"), &c("abcd")), 0);
        assert_eq!(common_overlap(&c("123456xxx"), &c("xxxabcd")), 3);
        assert_eq!(common_overlap(&c("fi"), &c("\u{fb01}i")), 0);
    }
}
