//! Patches: hunks of diffs with context, made from two texts and applied
//! fuzzily to a third.

use std::collections::VecDeque;
use std::time::Duration;

use super::cleanup::{cleanup_efficiency, cleanup_semantic, cleanup_semantic_lossless};
use super::diff::{diff_main_impl, levenshtein, text1, text2, x_index};
use super::matching::{match_main, MatchOptions, MATCH_MAX_BITS};
use super::unit::convert;
use super::{find, rfind, Deadline, Diff, DiffOptions, Op, Unit};
use crate::error::{Error, Result};

/// Largest context margin: hunks are split to fit [`MATCH_MAX_BITS`] with a
/// margin on both sides, so the margin must stay below half of it.
pub const MAX_MARGIN: usize = MATCH_MAX_BITS / 2 - 1;

/// One hunk: a run of diffs with surrounding context.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Hunk<T = char> {
    /// The diffs, context (equalities) included.
    pub diffs: Vec<Diff<T>>,
    /// Start in the source text, in code points.
    pub start1: usize,
    /// Start in the destination text, in code points.
    pub start2: usize,
    /// Length covered in the source text (equalities and deletions).
    pub length1: usize,
    /// Length covered in the destination text (equalities and insertions).
    pub length2: usize,
}

impl<T> Default for Hunk<T> {
    fn default() -> Self {
        Hunk {
            diffs: Vec::new(),
            start1: 0,
            start2: 0,
            length1: 0,
            length2: 0,
        }
    }
}

impl<T: Unit> Hunk<T> {
    /// The same hunk over another unit type; `None` if a code point does not fit.
    pub fn convert<U: Unit>(&self) -> Option<Hunk<U>> {
        let diffs = self
            .diffs
            .iter()
            .map(|d| convert(&d.text).map(|t| Diff::new(d.op, t)))
            .collect::<Option<Vec<_>>>()?;
        Some(Hunk {
            diffs,
            start1: self.start1,
            start2: self.start2,
            length1: self.length1,
            length2: self.length2,
        })
    }
}

/// A patch: the hunks that turn one text into another.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Patch {
    /// Hunks in text order.
    pub hunks: Vec<Hunk>,
}

/// Options of patch making and application.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PatchOptions {
    /// Context kept around each hunk, in code points (1 ..= [`MAX_MARGIN`]).
    pub margin: usize,
    /// Fuzzy location of each hunk.
    pub matching: MatchOptions,
    /// How closely a large deletion must match its expected text
    /// (0.0 = perfection, 1.0 = very loose).
    pub delete_threshold: f64,
    /// Time budget of the diffs run while applying (`None` = unlimited).
    pub diff_timeout: Option<Duration>,
}

impl Default for PatchOptions {
    fn default() -> Self {
        PatchOptions {
            margin: 4,
            matching: MatchOptions::default(),
            delete_threshold: 0.5,
            diff_timeout: Some(Duration::from_secs(1)),
        }
    }
}

impl PatchOptions {
    /// Check every field's range.
    pub fn validate(&self) -> Result<()> {
        validate_margin(self.margin)?;
        if !(0.0..=1.0).contains(&self.matching.threshold) {
            return Err(Error::invalid(format!(
                "match_threshold must be within 0.0 ..= 1.0, got {}",
                self.matching.threshold
            )));
        }
        if !(0.0..=1.0).contains(&self.delete_threshold) {
            return Err(Error::invalid(format!(
                "delete_threshold must be within 0.0 ..= 1.0, got {}",
                self.delete_threshold
            )));
        }
        Ok(())
    }
}

/// Check a context margin.
pub fn validate_margin(margin: usize) -> Result<()> {
    if margin == 0 || margin > MAX_MARGIN {
        return Err(Error::invalid(format!(
            "margin must be within 1 ..= {MAX_MARGIN}, got {margin}"
        )));
    }
    Ok(())
}

/// Python-style slice bounds: clamp both ends into the text.
fn clamp(len: usize, start: i64, end: i64) -> (usize, usize) {
    let s = start.clamp(0, len as i64) as usize;
    let e = end.clamp(0, len as i64) as usize;
    (s, e.max(s))
}

/// Make a patch turning `a` into `b` (diff, semantic and efficiency
/// cleanups when the diff has more than two segments, then hunks).
pub fn make_patch<T: Unit>(
    a: &[T],
    b: &[T],
    diff_opts: &DiffOptions,
    margin: usize,
) -> Result<Patch> {
    validate_margin(margin)?;
    let mut diffs = diff_main_impl(a, b, true, diff_opts.deadline());
    if diffs.len() > 2 {
        cleanup_semantic(&mut diffs);
        cleanup_efficiency(&mut diffs, diff_opts.edit_cost);
    }
    make_patch_from_diffs(a, &diffs, margin)
}

/// Make a patch from a source text and a diff of it.
pub fn make_patch_from_diffs<T: Unit>(
    text: &[T],
    diffs: &[Diff<T>],
    margin: usize,
) -> Result<Patch> {
    validate_margin(margin)?;
    let source_len: usize = diffs
        .iter()
        .filter(|d| d.op != Op::Insert)
        .map(|d| d.text.len())
        .sum();
    if source_len != text.len() || text1(diffs) != text {
        return Err(Error::invalid(
            "the diffs do not describe the given source text",
        ));
    }
    let mut hunks: Vec<Hunk<T>> = Vec::new();
    if diffs.is_empty() {
        return Ok(Patch::default());
    }
    let mut hunk: Hunk<T> = Hunk::default();
    let (mut count1, mut count2) = (0usize, 0usize);
    // The text with the hunks so far applied; each hunk's edits are applied
    // once its context has been taken from the text before it.
    let mut prepatch: Vec<T> = text.to_vec();
    let mut pending: Vec<(usize, usize, Vec<T>)> = Vec::new(); // (at, deleted, inserted) in prepatch
    let mut shift: i64 = 0; // count2 - position in prepatch of the current hunk's edits
    let last = diffs.len() - 1;
    for (x, d) in diffs.iter().enumerate() {
        let len = d.text.len();
        if hunk.diffs.is_empty() && d.op != Op::Equal {
            // A new hunk starts here.
            hunk.start1 = count1;
            hunk.start2 = count2;
        }
        match d.op {
            Op::Insert => {
                hunk.diffs.push(d.clone());
                hunk.length2 += len;
                pending.push(((count2 as i64 - shift) as usize, 0, d.text.clone()));
                shift += len as i64;
            }
            Op::Delete => {
                hunk.length1 += len;
                hunk.diffs.push(d.clone());
                pending.push(((count2 as i64 - shift) as usize, len, Vec::new()));
                shift -= len as i64;
            }
            Op::Equal => {
                if len <= 2 * margin && !hunk.diffs.is_empty() && x != last {
                    // Small equality inside a hunk.
                    hunk.diffs.push(d.clone());
                    hunk.length1 += len;
                    hunk.length2 += len;
                }
            }
        }
        if d.op == Op::Equal && len >= 2 * margin && !hunk.diffs.is_empty() {
            // Time for a new hunk.
            add_context(&mut hunk, &prepatch, margin);
            hunks.push(std::mem::take(&mut hunk));
            apply_pending(&mut prepatch, &mut pending);
            shift = 0;
            count1 = count2;
        }
        if d.op != Op::Insert {
            count1 += len;
        }
        if d.op != Op::Delete {
            count2 += len;
        }
    }
    if !hunk.diffs.is_empty() {
        add_context(&mut hunk, &prepatch, margin);
        hunks.push(hunk);
    }
    let hunks = hunks
        .iter()
        .map(|h| h.convert())
        .collect::<Option<_>>()
        .ok_or_else(|| Error::invalid("text contains a lone surrogate code point"))?;
    Ok(Patch { hunks })
}

/// Apply recorded edits (positions in the text before any of them, in order).
fn apply_pending<T: Unit>(text: &mut Vec<T>, pending: &mut Vec<(usize, usize, Vec<T>)>) {
    let mut offset: i64 = 0;
    for (at, deleted, inserted) in pending.drain(..) {
        let at = (at as i64 + offset) as usize;
        let end = (at + deleted).min(text.len());
        offset += inserted.len() as i64 - deleted as i64;
        text.splice(at.min(text.len())..end, inserted);
    }
}

/// Grow a hunk's context until it is unique in `text`, without letting the
/// pattern outgrow what Bitap can match.
fn add_context<T: Unit>(hunk: &mut Hunk<T>, text: &[T], margin: usize) {
    if text.is_empty() {
        return;
    }
    let len = text.len();
    let start2 = hunk.start2 as i64;
    let length1 = hunk.length1 as i64;
    let limit = MATCH_MAX_BITS as i64 - 2 * margin as i64;
    let (s, e) = clamp(len, start2, start2 + length1);
    let mut pattern = &text[s..e];
    let mut padding = 0i64;
    // Look for the first and last matches of pattern in text; if two
    // different matches are found, increase the pattern length.
    while find(text, pattern, 0) != rfind(text, pattern, 0) && (pattern.len() as i64) < limit {
        padding += margin as i64;
        let (s, e) = clamp(len, start2 - padding, start2 + length1 + padding);
        pattern = &text[s..e];
    }
    // Add one chunk for good luck.
    padding += margin as i64;
    let (ps, pe) = clamp(len, start2 - padding, start2);
    let prefix = text[ps..pe].to_vec();
    let (ss, se) = clamp(len, start2 + length1, start2 + length1 + padding);
    let suffix = text[ss..se].to_vec();
    let (np, ns) = (prefix.len(), suffix.len());
    if np > 0 {
        hunk.diffs.insert(0, Diff::new(Op::Equal, prefix));
    }
    if ns > 0 {
        hunk.diffs.push(Diff::new(Op::Equal, suffix));
    }
    hunk.start1 = hunk.start1.saturating_sub(np);
    hunk.start2 = hunk.start2.saturating_sub(np);
    hunk.length1 += np + ns;
    hunk.length2 += np + ns;
}

/// Add padding (chars 1..=margin) on both ends so edges can match; returns it.
fn add_padding<T: Unit>(hunks: &mut [Hunk<T>], margin: usize) -> Vec<T> {
    let padding: Vec<T> = (1..=margin as u32).filter_map(T::from_code).collect();
    let pl = padding.len();
    for h in hunks.iter_mut() {
        h.start1 += pl;
        h.start2 += pl;
    }
    if let Some(first) = hunks.first_mut() {
        match first.diffs.first_mut() {
            Some(d) if d.op == Op::Equal => {
                if pl > d.text.len() {
                    let extra = pl - d.text.len();
                    let mut t = padding[d.text.len()..].to_vec();
                    t.extend_from_slice(&d.text);
                    d.text = t;
                    first.start1 -= extra;
                    first.start2 -= extra;
                    first.length1 += extra;
                    first.length2 += extra;
                }
            }
            _ => {
                first.diffs.insert(0, Diff::new(Op::Equal, padding.clone()));
                first.start1 -= pl;
                first.start2 -= pl;
                first.length1 += pl;
                first.length2 += pl;
            }
        }
    }
    if let Some(last) = hunks.last_mut() {
        match last.diffs.last_mut() {
            Some(d) if d.op == Op::Equal => {
                if pl > d.text.len() {
                    let extra = pl - d.text.len();
                    d.text.extend_from_slice(&padding[..extra]);
                    last.length1 += extra;
                    last.length2 += extra;
                }
            }
            _ => {
                last.diffs.push(Diff::new(Op::Equal, padding.clone()));
                last.length1 += pl;
                last.length2 += pl;
            }
        }
    }
    padding
}

/// Split hunks longer than Bitap's limit into smaller ones. Follows the
/// reference's iteration exactly: the indices visited are those of the
/// hunk list as it was on entry.
fn split_max<T: Unit>(hunks: &mut Vec<Hunk<T>>, margin: usize) {
    let patch_size = MATCH_MAX_BITS;
    let entries = hunks.len();
    for x0 in 0..entries {
        if x0 >= hunks.len() {
            break;
        }
        if hunks[x0].length1 <= patch_size {
            continue;
        }
        let big = hunks.remove(x0);
        let mut x = x0;
        let (mut start1, mut start2) = (big.start1, big.start2);
        let mut big_diffs: VecDeque<Diff<T>> = big.diffs.into();
        let mut precontext: Vec<T> = Vec::new();
        while !big_diffs.is_empty() {
            // Create one of several smaller hunks.
            let mut hunk: Hunk<T> = Hunk {
                start1: start1.saturating_sub(precontext.len()),
                start2: start2.saturating_sub(precontext.len()),
                ..Hunk::default()
            };
            let mut empty = true;
            if !precontext.is_empty() {
                hunk.length1 = precontext.len();
                hunk.length2 = precontext.len();
                hunk.diffs
                    .push(Diff::new(Op::Equal, std::mem::take(&mut precontext)));
            }
            while hunk.length1 < patch_size - margin {
                let Some(front) = big_diffs.front_mut() else {
                    break;
                };
                let len = front.text.len();
                if front.op == Op::Insert {
                    // Insertions are harmless.
                    hunk.length2 += len;
                    start2 += len;
                    if let Some(d) = big_diffs.pop_front() {
                        hunk.diffs.push(d);
                    }
                    empty = false;
                } else if front.op == Op::Delete
                    && hunk.diffs.len() == 1
                    && hunk.diffs[0].op == Op::Equal
                    && len > 2 * patch_size
                {
                    // This is a large deletion. Let it pass in one chunk.
                    hunk.length1 += len;
                    start1 += len;
                    empty = false;
                    if let Some(d) = big_diffs.pop_front() {
                        hunk.diffs.push(d);
                    }
                } else {
                    // Deletion or equality. Only take as much as we can stomach.
                    let take = len.min(patch_size - hunk.length1 - margin);
                    hunk.length1 += take;
                    start1 += take;
                    if front.op == Op::Equal {
                        hunk.length2 += take;
                        start2 += take;
                    } else {
                        empty = false;
                    }
                    let piece: Vec<T> = front.text[..take].to_vec();
                    hunk.diffs.push(Diff::new(front.op, piece));
                    if take == len {
                        big_diffs.pop_front();
                    } else {
                        front.text.drain(..take);
                    }
                }
            }
            // Compute the head context for the next hunk.
            let t2 = text2(&hunk.diffs);
            precontext = t2[t2.len().saturating_sub(margin)..].to_vec();
            // Append the end context for this hunk.
            let mut postcontext: Vec<T> = Vec::with_capacity(margin);
            for d in big_diffs.iter().filter(|d| d.op != Op::Insert) {
                let need = margin - postcontext.len();
                if need == 0 {
                    break;
                }
                postcontext.extend_from_slice(&d.text[..need.min(d.text.len())]);
            }
            if !postcontext.is_empty() {
                hunk.length1 += postcontext.len();
                hunk.length2 += postcontext.len();
                match hunk.diffs.last_mut() {
                    Some(d) if d.op == Op::Equal => d.text.extend_from_slice(&postcontext),
                    _ => hunk.diffs.push(Diff::new(Op::Equal, postcontext)),
                }
            }
            if !empty {
                hunks.insert(x, hunk);
                x += 1;
            }
        }
    }
}

/// Apply a patch to `text`, locating each hunk fuzzily. Returns the new text
/// and, for each hunk after splitting, whether it applied.
pub fn apply_patch<T: Unit>(
    patch: &Patch,
    text: &[T],
    opts: &PatchOptions,
) -> Result<(Vec<T>, Vec<bool>)> {
    opts.validate()?;
    if patch.hunks.is_empty() {
        return Ok((text.to_vec(), Vec::new()));
    }
    let max_bits = MATCH_MAX_BITS;
    let mut hunks: Vec<Hunk<T>> = patch
        .hunks
        .iter()
        .map(|h| h.convert())
        .collect::<Option<_>>()
        .ok_or_else(|| {
            Error::invalid("the patch holds code points wider than the text's storage")
        })?;
    let padding = add_padding(&mut hunks, opts.margin);
    let pl = padding.len();
    let mut text: Vec<T> = {
        let mut t = Vec::with_capacity(text.len() + 2 * pl);
        t.extend_from_slice(&padding);
        t.extend_from_slice(text);
        t.extend_from_slice(&padding);
        t
    };
    split_max(&mut hunks, opts.margin);

    let mut delta: i64 = 0;
    let mut results = Vec::with_capacity(hunks.len());
    for hunk in &hunks {
        let expected_loc = hunk.start2 as i64 + delta;
        let text1 = text1(&hunk.diffs);
        let loc_in = |loc: i64, len: usize| loc.clamp(0, len as i64) as usize;
        let mut end_loc: Option<usize> = None;
        let start_loc = if text1.len() > max_bits {
            // A monster delete: match its start and end separately.
            let start = match_main(
                &text,
                &text1[..max_bits],
                loc_in(expected_loc, text.len()),
                &opts.matching,
            )?;
            match start {
                Some(s) => {
                    let end_expected = expected_loc + text1.len() as i64 - max_bits as i64;
                    let end = match_main(
                        &text,
                        &text1[text1.len() - max_bits..],
                        loc_in(end_expected, text.len()),
                        &opts.matching,
                    )?;
                    match end {
                        Some(e) if s < e => {
                            end_loc = Some(e);
                            Some(s)
                        }
                        _ => None,
                    }
                }
                None => None,
            }
        } else {
            match_main(
                &text,
                &text1,
                loc_in(expected_loc, text.len()),
                &opts.matching,
            )?
        };
        let Some(start_loc) = start_loc else {
            // No match found.
            results.push(false);
            delta -= hunk.length2 as i64 - hunk.length1 as i64;
            continue;
        };
        // Found a match.
        results.push(true);
        delta = start_loc as i64 - expected_loc;
        let found_end = match end_loc {
            None => start_loc as i64 + text1.len() as i64,
            Some(e) => (e + max_bits) as i64,
        };
        let (fs, fe) = clamp(text.len(), start_loc as i64, found_end);
        if text1[..] == text[fs..fe] {
            // Perfect match, just shove the replacement text in.
            text.splice(start_loc..start_loc + text1.len(), text2(&hunk.diffs));
            continue;
        }
        // Imperfect match: run a diff to get a framework of equivalent indices.
        let found = text[fs..fe].to_vec();
        let mut diffs = diff_main_impl(&text1, &found, false, Deadline::after(opts.diff_timeout));
        if text1.len() > max_bits
            && levenshtein(&diffs) as f64 / text1.len() as f64 > opts.delete_threshold
        {
            // The end points match, but the content is unacceptably bad.
            if let Some(r) = results.last_mut() {
                *r = false;
            }
            continue;
        }
        cleanup_semantic_lossless(&mut diffs);
        let mut index1 = 0usize;
        let mut index2 = 0usize;
        for d in &hunk.diffs {
            if d.op != Op::Equal {
                index2 = x_index(&diffs, index1);
            }
            match d.op {
                Op::Insert => {
                    let at = (start_loc + index2).min(text.len());
                    text.splice(at..at, d.text.iter().copied());
                }
                Op::Delete => {
                    let a = (start_loc + index2).min(text.len());
                    let b = (start_loc + x_index(&diffs, index1 + d.text.len())).min(text.len());
                    if b >= a {
                        text.drain(a..b);
                    } else {
                        // text[:a] + text[b:], as the reference slices it.
                        let dup = text[b..a].to_vec();
                        text.splice(a..a, dup);
                    }
                }
                Op::Equal => {}
            }
            if d.op != Op::Delete {
                index1 += d.text.len();
            }
        }
    }
    // Strip the padding off.
    let out = if text.len() >= 2 * pl {
        text[pl..text.len() - pl].to_vec()
    } else {
        Vec::new()
    };
    Ok((out, results))
}
