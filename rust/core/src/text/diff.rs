//! Myers' diff with the diff-match-patch speedups.

use std::collections::HashMap;
use std::hash::Hash;

use super::cleanup::{cleanup_efficiency, cleanup_merge, cleanup_semantic};
use super::{common_prefix, common_suffix, find, Cleanup, Deadline, Diff, DiffOptions, Op, Unit};

/// An element a diff runs over: a code point, or a line id in line mode.
pub(crate) trait Atom: super::Search + Copy + Eq + Hash + std::fmt::Debug {
    /// Line-level pre-pass for large texts; only code points have lines.
    fn line_mode(_a: &[Self], _b: &[Self], _deadline: Deadline) -> Option<Vec<Diff<Self>>> {
        None
    }
}

/// A line of text, numbered by its first appearance (line mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LineId(u32);

impl Atom for LineId {}

impl<T: Unit> Atom for T {
    fn line_mode(a: &[T], b: &[T], deadline: Deadline) -> Option<Vec<Diff<T>>> {
        Some(line_mode(a, b, deadline))
    }
}

/// Diff `a` into `b` with the given options (the `diff_main` of
/// diff-match-patch followed by the chosen cleanup).
pub fn diff<T: Unit>(a: &[T], b: &[T], opts: &DiffOptions) -> Vec<Diff<T>> {
    let deadline = opts.deadline();
    let mut diffs = diff_main_impl(a, b, opts.checklines, deadline);
    match opts.cleanup {
        Cleanup::None => {}
        Cleanup::Semantic => cleanup_semantic(&mut diffs),
        Cleanup::Efficiency => cleanup_efficiency(&mut diffs, opts.edit_cost),
    }
    diffs
}

/// The raw `diff_main`: trimmed, computed and merged, no semantic cleanup.
pub fn diff_main<T: Unit>(
    a: &[T],
    b: &[T],
    checklines: bool,
    timeout: Option<std::time::Duration>,
) -> Vec<Diff<T>> {
    diff_main_impl(a, b, checklines, Deadline::after(timeout))
}

pub(crate) fn diff_main_impl<T: Atom>(
    text1: &[T],
    text2: &[T],
    checklines: bool,
    deadline: Deadline,
) -> Vec<Diff<T>> {
    if text1 == text2 {
        if text1.is_empty() {
            return Vec::new();
        }
        return vec![Diff::new(Op::Equal, text1.to_vec())];
    }
    let prefix_len = common_prefix(text1, text2);
    let prefix = &text1[..prefix_len];
    let (t1, t2) = (&text1[prefix_len..], &text2[prefix_len..]);
    let suffix_len = common_suffix(t1, t2);
    let suffix = &t1[t1.len() - suffix_len..];
    let (t1, t2) = (&t1[..t1.len() - suffix_len], &t2[..t2.len() - suffix_len]);

    let mut diffs = Vec::new();
    if !prefix.is_empty() {
        diffs.push(Diff::new(Op::Equal, prefix.to_vec()));
    }
    diffs.extend(compute(t1, t2, checklines, deadline));
    if !suffix.is_empty() {
        diffs.push(Diff::new(Op::Equal, suffix.to_vec()));
    }
    cleanup_merge(&mut diffs);
    diffs
}

fn compute<T: Atom>(
    text1: &[T],
    text2: &[T],
    checklines: bool,
    deadline: Deadline,
) -> Vec<Diff<T>> {
    if text1.is_empty() {
        return vec![Diff::new(Op::Insert, text2.to_vec())];
    }
    if text2.is_empty() {
        return vec![Diff::new(Op::Delete, text1.to_vec())];
    }
    let swapped = text1.len() > text2.len();
    let (long, short) = if swapped {
        (text1, text2)
    } else {
        (text2, text1)
    };
    if let Some(i) = find(long, short, 0) {
        // The shorter text is inside the longer one.
        let op = if swapped { Op::Delete } else { Op::Insert };
        return vec![
            Diff::new(op, long[..i].to_vec()),
            Diff::new(Op::Equal, short.to_vec()),
            Diff::new(op, long[i + short.len()..].to_vec()),
        ];
    }
    if short.len() == 1 {
        // After the previous speedup, the character can't be an equality.
        return vec![
            Diff::new(Op::Delete, text1.to_vec()),
            Diff::new(Op::Insert, text2.to_vec()),
        ];
    }
    if deadline.limited {
        if let Some(hm) = half_match(text1, text2) {
            let mut diffs = diff_main_impl(hm.text1_a, hm.text2_a, checklines, deadline);
            diffs.push(Diff::new(Op::Equal, hm.common));
            diffs.extend(diff_main_impl(hm.text1_b, hm.text2_b, checklines, deadline));
            return diffs;
        }
    }
    if checklines && text1.len() > 100 && text2.len() > 100 {
        if let Some(diffs) = T::line_mode(text1, text2, deadline) {
            return diffs;
        }
    }
    bisect(text1, text2, deadline)
}

struct HalfMatch<'a, T> {
    text1_a: &'a [T],
    text1_b: &'a [T],
    text2_a: &'a [T],
    text2_b: &'a [T],
    common: Vec<T>,
}

/// Do the texts share a substring at least half the length of the longer one?
fn half_match<'a, T: Atom>(text1: &'a [T], text2: &'a [T]) -> Option<HalfMatch<'a, T>> {
    let swapped = text1.len() > text2.len();
    let (long, short) = if swapped {
        (text1, text2)
    } else {
        (text2, text1)
    };
    if long.len() < 4 || short.len() * 2 < long.len() {
        return None;
    }
    let hm1 = half_match_at(long, short, long.len().div_ceil(4));
    let hm2 = half_match_at(long, short, long.len().div_ceil(2));
    let hm = match (hm1, hm2) {
        (None, None) => return None,
        (Some(h), None) | (None, Some(h)) => h,
        (Some(h1), Some(h2)) => {
            if h1.common.len() > h2.common.len() {
                h1
            } else {
                h2
            }
        }
    };
    // `hm` is expressed as (long_a, long_b, short_a, short_b).
    Some(if swapped {
        hm
    } else {
        HalfMatch {
            text1_a: hm.text2_a,
            text1_b: hm.text2_b,
            text2_a: hm.text1_a,
            text2_b: hm.text1_b,
            common: hm.common,
        }
    })
}

fn half_match_at<'a, T: Atom>(long: &'a [T], short: &'a [T], i: usize) -> Option<HalfMatch<'a, T>> {
    let seed = &long[i..i + long.len() / 4];
    let mut best: Option<(usize, usize, usize, usize)> = None; // (i - suffix, i + prefix, j - suffix, j + prefix)
    let mut best_len = 0;
    let mut j = find(short, seed, 0);
    while let Some(jj) = j {
        let prefix_len = common_prefix(&long[i..], &short[jj..]);
        let suffix_len = common_suffix(&long[..i], &short[..jj]);
        if best_len < suffix_len + prefix_len {
            best_len = suffix_len + prefix_len;
            best = Some((
                i - suffix_len,
                i + prefix_len,
                jj - suffix_len,
                jj + prefix_len,
            ));
        }
        j = find(short, seed, jj + 1);
    }
    let (la, lb, sa, sb) = best?;
    if best_len * 2 >= long.len() {
        Some(HalfMatch {
            text1_a: &long[..la],
            text1_b: &long[lb..],
            text2_a: &short[..sa],
            text2_b: &short[sb..],
            common: short[sa..sb].to_vec(),
        })
    } else {
        None
    }
}

/// Line-level diff, then a character-level rediff of each replaced block.
fn line_mode<T: Unit>(text1: &[T], text2: &[T], deadline: Deadline) -> Vec<Diff<T>> {
    let (chars1, chars2, lines) = lines_to_ids(text1, text2);
    let line_diffs = diff_main_impl(&chars1, &chars2, false, deadline);
    let mut diffs: Vec<Diff<T>> = line_diffs
        .into_iter()
        .map(|d| {
            let mut text = Vec::new();
            for id in d.text {
                if let Some(line) = lines.get(id.0 as usize) {
                    text.extend_from_slice(line);
                }
            }
            Diff::new(d.op, text)
        })
        .collect();
    cleanup_semantic(&mut diffs);

    // Rediff any replacement blocks, this time character by character.
    diffs.push(Diff::new(Op::Equal, Vec::new()));
    let mut out: Vec<Diff<T>> = Vec::with_capacity(diffs.len());
    let mut pending: Vec<Diff<T>> = Vec::new();
    let (mut count_delete, mut count_insert) = (0, 0);
    let (mut text_delete, mut text_insert) = (Vec::new(), Vec::new());
    for d in diffs {
        match d.op {
            Op::Insert => {
                count_insert += 1;
                text_insert.extend_from_slice(&d.text);
                pending.push(d);
            }
            Op::Delete => {
                count_delete += 1;
                text_delete.extend_from_slice(&d.text);
                pending.push(d);
            }
            Op::Equal => {
                if count_delete >= 1 && count_insert >= 1 {
                    out.extend(diff_main_impl(&text_delete, &text_insert, false, deadline));
                    pending.clear();
                } else {
                    out.append(&mut pending);
                }
                count_delete = 0;
                count_insert = 0;
                text_delete.clear();
                text_insert.clear();
                out.push(d);
            }
        }
    }
    out.pop(); // the dummy equality
    out
}

/// Map each distinct line to an id (the reference's `diff_linesToChars`,
/// including its caps of 666,666 lines for the first text and 1,114,111 in all).
#[allow(clippy::type_complexity)]
fn lines_to_ids<'a, T: Unit>(
    text1: &'a [T],
    text2: &'a [T],
) -> (Vec<LineId>, Vec<LineId>, Vec<&'a [T]>) {
    let mut lines: Vec<&'a [T]> = vec![&[]];
    let mut index: HashMap<&'a [T], LineId> = HashMap::new();
    let mut ids: Vec<Vec<LineId>> = Vec::with_capacity(2);
    for (text, max_lines) in [(text1, 666_666usize), (text2, 1_114_111usize)] {
        let mut chars = Vec::new();
        let mut line_start = 0usize;
        while line_start < text.len() {
            let mut line_end = match text[line_start..].iter().position(|&c| c.code() == 0x0a) {
                Some(p) => line_start + p + 1,
                None => text.len(),
            };
            let mut line = &text[line_start..line_end];
            if let Some(&id) = index.get(line) {
                chars.push(id);
            } else {
                if lines.len() == max_lines {
                    line = &text[line_start..];
                    line_end = text.len();
                }
                lines.push(line);
                let id = LineId((lines.len() - 1) as u32);
                index.insert(line, id);
                chars.push(id);
            }
            line_start = line_end;
        }
        ids.push(chars);
    }
    let chars2 = ids.pop().unwrap_or_default();
    let chars1 = ids.pop().unwrap_or_default();
    (chars1, chars2, lines)
}

/// Find the middle snake (Myers 1986), split the problem in two and recurse.
fn bisect<T: Atom>(text1: &[T], text2: &[T], deadline: Deadline) -> Vec<Diff<T>> {
    let len1 = text1.len() as isize;
    let len2 = text2.len() as isize;
    let max_d = (len1 + len2 + 1) / 2;
    let v_offset = max_d;
    let v_length = 2 * max_d;
    let mut v1 = vec![-1isize; v_length as usize];
    let mut v2 = vec![-1isize; v_length as usize];
    v1[(v_offset + 1) as usize] = 0;
    v2[(v_offset + 1) as usize] = 0;
    let delta = len1 - len2;
    // If the total number of characters is odd, the front path collides
    // with the reverse path.
    let front = delta % 2 != 0;
    let (mut k1start, mut k1end, mut k2start, mut k2end) = (0isize, 0isize, 0isize, 0isize);
    for d in 0..max_d {
        if deadline.passed() {
            break;
        }
        // Walk the front path one step.
        let mut k1 = -d + k1start;
        while k1 <= d - k1end {
            let k1_offset = (v_offset + k1) as usize;
            let mut x1 = if k1 == -d || (k1 != d && v1[k1_offset - 1] < v1[k1_offset + 1]) {
                v1[k1_offset + 1]
            } else {
                v1[k1_offset - 1] + 1
            };
            let mut y1 = x1 - k1;
            while x1 < len1 && y1 < len2 && text1[x1 as usize] == text2[y1 as usize] {
                x1 += 1;
                y1 += 1;
            }
            v1[k1_offset] = x1;
            if x1 > len1 {
                k1end += 2;
            } else if y1 > len2 {
                k1start += 2;
            } else if front {
                let k2_offset = v_offset + delta - k1;
                if k2_offset >= 0 && k2_offset < v_length && v2[k2_offset as usize] != -1 {
                    let x2 = len1 - v2[k2_offset as usize];
                    if x1 >= x2 {
                        return bisect_split(text1, text2, x1 as usize, y1 as usize, deadline);
                    }
                }
            }
            k1 += 2;
        }
        // Walk the reverse path one step.
        let mut k2 = -d + k2start;
        while k2 <= d - k2end {
            let k2_offset = (v_offset + k2) as usize;
            let mut x2 = if k2 == -d || (k2 != d && v2[k2_offset - 1] < v2[k2_offset + 1]) {
                v2[k2_offset + 1]
            } else {
                v2[k2_offset - 1] + 1
            };
            let mut y2 = x2 - k2;
            while x2 < len1
                && y2 < len2
                && text1[(len1 - x2 - 1) as usize] == text2[(len2 - y2 - 1) as usize]
            {
                x2 += 1;
                y2 += 1;
            }
            v2[k2_offset] = x2;
            if x2 > len1 {
                k2end += 2;
            } else if y2 > len2 {
                k2start += 2;
            } else if !front {
                let k1_offset = v_offset + delta - k2;
                if k1_offset >= 0 && k1_offset < v_length && v1[k1_offset as usize] != -1 {
                    let x1 = v1[k1_offset as usize];
                    let y1 = v_offset + x1 - k1_offset;
                    let x2 = len1 - x2;
                    if x1 >= x2 {
                        return bisect_split(text1, text2, x1 as usize, y1 as usize, deadline);
                    }
                }
            }
            k2 += 2;
        }
    }
    // Out of time (or no commonality): a delete and an insert.
    vec![
        Diff::new(Op::Delete, text1.to_vec()),
        Diff::new(Op::Insert, text2.to_vec()),
    ]
}

fn bisect_split<T: Atom>(
    text1: &[T],
    text2: &[T],
    x: usize,
    y: usize,
    deadline: Deadline,
) -> Vec<Diff<T>> {
    let mut diffs = diff_main_impl(&text1[..x], &text2[..y], false, deadline);
    diffs.extend(diff_main_impl(&text1[x..], &text2[y..], false, deadline));
    diffs
}

/// The source text of a diff (everything but insertions).
pub fn text1<T: Copy>(diffs: &[Diff<T>]) -> Vec<T> {
    let mut out = Vec::new();
    for d in diffs.iter().filter(|d| d.op != Op::Insert) {
        out.extend_from_slice(&d.text);
    }
    out
}

/// The destination text of a diff (everything but deletions).
pub fn text2<T: Copy>(diffs: &[Diff<T>]) -> Vec<T> {
    let mut out = Vec::new();
    for d in diffs.iter().filter(|d| d.op != Op::Delete) {
        out.extend_from_slice(&d.text);
    }
    out
}

/// Levenshtein distance implied by a diff (inserted, deleted or substituted characters).
pub fn levenshtein<T>(diffs: &[Diff<T>]) -> usize {
    let (mut total, mut ins, mut del) = (0, 0, 0);
    for d in diffs {
        match d.op {
            Op::Insert => ins += d.text.len(),
            Op::Delete => del += d.text.len(),
            Op::Equal => {
                total += ins.max(del);
                ins = 0;
                del = 0;
            }
        }
    }
    total + ins.max(del)
}

/// Translate a location in the source text into the destination text.
pub fn x_index<T>(diffs: &[Diff<T>], loc: usize) -> usize {
    let (mut chars1, mut chars2, mut last1, mut last2) = (0, 0, 0, 0);
    let mut last_op = None;
    for d in diffs {
        last_op = Some(d.op);
        if d.op != Op::Insert {
            chars1 += d.text.len();
        }
        if d.op != Op::Delete {
            chars2 += d.text.len();
        }
        if chars1 > loc {
            break;
        }
        last1 = chars1;
        last2 = chars2;
    }
    if last_op == Some(Op::Delete) {
        return last2;
    }
    last2 + (loc - last1)
}
