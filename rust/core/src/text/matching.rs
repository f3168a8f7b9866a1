//! Bitap fuzzy matching.

use super::{find, rfind, Unit};
use crate::error::{Error, Result};

/// Longest pattern Bitap searches for inside patch application
/// (`Match_MaxBits` of the reference).
pub const MATCH_MAX_BITS: usize = 32;

/// Longest pattern [`match_main`] accepts (one machine word of state).
pub const MATCH_MAX_PATTERN: usize = 64;

/// Options of fuzzy matching.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MatchOptions {
    /// At what point no match is declared (0.0 = perfection, 1.0 = very loose).
    pub threshold: f64,
    /// How far to search for a match (0 = exact location, 1000+ = broad
    /// match); a match this many characters away adds 1.0 to its score.
    pub distance: usize,
}

impl Default for MatchOptions {
    fn default() -> Self {
        MatchOptions {
            threshold: 0.5,
            distance: 1000,
        }
    }
}

/// Best location of `pattern` in `text` near `loc`, or `None`.
///
/// Fails only when `pattern` is longer than [`MATCH_MAX_PATTERN`] code
/// points and no exact match is at `loc`.
pub fn match_main<T: Unit>(
    text: &[T],
    pattern: &[T],
    loc: usize,
    opts: &MatchOptions,
) -> Result<Option<usize>> {
    let loc = loc.min(text.len());
    if text == pattern {
        return Ok(Some(0));
    }
    if text.is_empty() {
        return Ok(None);
    }
    if text.len() >= loc + pattern.len() && text[loc..loc + pattern.len()] == *pattern {
        return Ok(Some(loc));
    }
    if pattern.len() > MATCH_MAX_PATTERN {
        return Err(Error::LimitExceeded(format!(
            "pattern of {} code points is longer than the fuzzy-match limit of {MATCH_MAX_PATTERN}",
            pattern.len()
        )));
    }
    if pattern.is_empty() {
        // An empty pattern matches exactly at `loc` (handled above).
        return Ok(Some(loc));
    }
    Ok(bitap(text, pattern, loc, opts))
}

/// Per-character bit masks of the pattern.
struct Alphabet {
    ascii: [u64; 128],
    other: Vec<(u32, u64)>,
}

impl Alphabet {
    fn new<T: Unit>(pattern: &[T]) -> Self {
        let mut a = Alphabet {
            ascii: [0; 128],
            other: Vec::new(),
        };
        let n = pattern.len();
        for (i, &u) in pattern.iter().enumerate() {
            let c = u.code();
            let bit = 1u64 << (n - i - 1);
            if c < 128 {
                a.ascii[c as usize] |= bit;
            } else if let Some(e) = a.other.iter_mut().find(|e| e.0 == c) {
                e.1 |= bit;
            } else {
                a.other.push((c, bit));
            }
        }
        a
    }

    #[inline]
    fn get<T: Unit>(&self, u: T) -> u64 {
        let c = u.code();
        if c < 128 {
            self.ascii[c as usize]
        } else {
            self.other.iter().find(|e| e.0 == c).map_or(0, |e| e.1)
        }
    }
}

fn bitap<T: Unit>(text: &[T], pattern: &[T], loc: usize, opts: &MatchOptions) -> Option<usize> {
    let s = Alphabet::new(pattern);
    let plen = pattern.len();
    let loc_i = loc as i64;
    let score = |e: usize, x: i64| -> f64 {
        let accuracy = e as f64 / plen as f64;
        let proximity = (loc_i - x).abs();
        if opts.distance == 0 {
            return if proximity != 0 { 1.0 } else { accuracy };
        }
        accuracy + proximity as f64 / opts.distance as f64
    };

    // Highest score beyond which we give up.
    let mut score_threshold = opts.threshold;
    // Is there a nearby exact match? (speedup)
    if let Some(best) = find(text, pattern, loc) {
        score_threshold = score(0, best as i64).min(score_threshold);
        // What about in the other direction? (speedup)
        if let Some(best) = rfind(text, pattern, loc + plen) {
            score_threshold = score(0, best as i64).min(score_threshold);
        }
    }

    let match_mask = 1u64 << (plen - 1);
    let mut best_loc: i64 = -1;
    let text_len = text.len() as i64;
    let mut bin_max = (plen + text.len()) as i64;
    // Bit arrays cover only the window scanned at each error level,
    // rd[j - base] for j in base ..= finish + 1; windows only shrink.
    let mut last_rd: Vec<u64> = Vec::new();
    let mut last_base: i64 = 0;
    for d in 0..plen {
        // Scan for the best match; each iteration allows for one more error.
        // Binary search for how far from `loc` we can stray at this error level.
        let mut bin_min: i64 = 0;
        let mut bin_mid = bin_max;
        while bin_min < bin_mid {
            if score(d, loc_i + bin_mid) <= score_threshold {
                bin_min = bin_mid;
            } else {
                bin_max = bin_mid;
            }
            bin_mid = (bin_max - bin_min) / 2 + bin_min;
        }
        // Use the result from this iteration as the maximum for the next.
        bin_max = bin_mid;
        // The scan runs from `finish` down to this `start`, fixed when the
        // scan begins (as in the reference Python port, whose `range` is
        // evaluated once).
        let start = (loc_i - bin_mid + 1).max(1);
        let finish = (loc_i + bin_mid).min(text_len) + plen as i64;
        let base = start;
        let mut rd = vec![0u64; (finish + 2 - base) as usize];
        rd[(finish + 1 - base) as usize] = (1u64 << d) - 1;
        let last = |j: i64| -> u64 {
            usize::try_from(j - last_base)
                .ok()
                .and_then(|i| last_rd.get(i))
                .copied()
                .unwrap_or(0)
        };
        let mut j = finish;
        while j >= start {
            let char_match = if text_len < j {
                0
            } else {
                s.get(text[(j - 1) as usize])
            };
            let ju = (j - base) as usize;
            rd[ju] = if d == 0 {
                // First pass: exact match.
                ((rd[ju + 1] << 1) | 1) & char_match
            } else {
                // Subsequent passes: fuzzy match.
                (((rd[ju + 1] << 1) | 1) & char_match)
                    | (((last(j + 1) | last(j)) << 1) | 1)
                    | last(j + 1)
            };
            if rd[ju] & match_mask != 0 {
                let sc = score(d, j - 1);
                // This match will almost certainly be better than any existing match.
                if sc <= score_threshold {
                    score_threshold = sc;
                    best_loc = j - 1;
                    if best_loc <= loc_i {
                        // Already passed loc, downhill from here on in.
                        break;
                    }
                }
            }
            j -= 1;
        }
        // No hope for a (better) match at greater error levels.
        if score(d + 1, loc_i) > score_threshold {
            break;
        }
        last_rd = rd;
        last_base = base;
    }
    usize::try_from(best_loc).ok()
}
