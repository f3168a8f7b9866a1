//! Deltas: an edit as *keep n / insert s / delete n*, with no context.
//!
//! A link sends an edit as a delta when both sides hold the same shadow
//! (which their versions and the shadow checksum establish), so the receiver
//! needs no context to place it: a delta applies exactly or not at all.
//!
//! Binary form, patch format version 2 (all integers are canonical LEB128
//! varints):
//!
//! ```text
//! delta = version:u8 (=2) op_count op*
//! op    = tag [text]     tag = (n << 2) | kind
//!         kind 0: keep n code points      kind 1: insert n UTF-8 bytes (they follow)
//!         kind 2: delete n code points
//! ```
//!
//! What follows the last op is kept. Decoding is strict: truncation,
//! trailing bytes, kind 3, an op of length 0, invalid UTF-8 and counts above
//! 2^40 are errors.

use super::{diff, Diff, DiffOptions, Op, Unit};
use crate::error::{Error, Result};
use crate::varint::{write_u64, Reader};

/// Version byte of the binary delta form (the patch form is version 1).
pub const DELTA_FORMAT_VERSION: u8 = 2;

/// Largest keep or delete count a decoded delta may carry (in code points).
const MAX_DELTA_COUNT: u64 = 1 << 40;

/// One step of a [`Delta`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DeltaOp {
    /// Copy this many code points of the source.
    Keep(usize),
    /// Insert this text.
    Insert(String),
    /// Skip this many code points of the source.
    Delete(usize),
}

/// An edit of one exact source text: ops in order, the rest of the source kept.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Delta {
    /// The steps, in source order.
    pub ops: Vec<DeltaOp>,
}

/// The delta turning `a` into `b` (a diff with the given options; the
/// efficiency cleanup makes the fewest ops).
pub fn make_delta<T: Unit>(a: &[T], b: &[T], opts: &DiffOptions) -> Delta {
    delta_from_diffs(&diff(a, b, opts))
}

/// The delta of a diff (its equal parts become keeps).
pub fn delta_from_diffs<T: Unit>(diffs: &[Diff<T>]) -> Delta {
    let mut ops: Vec<DeltaOp> = Vec::with_capacity(diffs.len());
    for d in diffs {
        if d.text.is_empty() {
            continue;
        }
        match d.op {
            Op::Equal => match ops.last_mut() {
                Some(DeltaOp::Keep(n)) => *n += d.text.len(),
                _ => ops.push(DeltaOp::Keep(d.text.len())),
            },
            Op::Delete => match ops.last_mut() {
                Some(DeltaOp::Delete(n)) => *n += d.text.len(),
                _ => ops.push(DeltaOp::Delete(d.text.len())),
            },
            Op::Insert => {
                let s: String = d.text.iter().filter_map(|u| u.to_char()).collect();
                match ops.last_mut() {
                    Some(DeltaOp::Insert(t)) => t.push_str(&s),
                    _ => ops.push(DeltaOp::Insert(s)),
                }
            }
        }
    }
    if matches!(ops.last(), Some(DeltaOp::Keep(_))) {
        ops.pop(); // the rest is kept anyway
    }
    Delta { ops }
}

impl Delta {
    /// Number of ops.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the delta changes nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The largest code point the delta inserts (0 if none).
    pub fn max_code(&self) -> u32 {
        self.ops
            .iter()
            .filter_map(|op| match op {
                DeltaOp::Insert(s) => s.chars().map(|c| c as u32).max(),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }

    /// Apply to the exact source `text`: `None` when the delta does not fit
    /// (it keeps or deletes past the end), or inserts a code point `T`
    /// cannot hold.
    pub fn apply<T: Unit>(&self, text: &[T]) -> Option<Vec<T>> {
        let mut out: Vec<T> = Vec::with_capacity(text.len() + 16);
        let mut pos = 0usize;
        for op in &self.ops {
            match op {
                DeltaOp::Keep(n) => {
                    let end = pos.checked_add(*n)?;
                    out.extend_from_slice(text.get(pos..end)?);
                    pos = end;
                }
                DeltaOp::Delete(n) => {
                    let end = pos.checked_add(*n)?;
                    if end > text.len() {
                        return None;
                    }
                    pos = end;
                }
                DeltaOp::Insert(s) => {
                    for c in s.chars() {
                        out.push(T::from_code(c as u32)?);
                    }
                }
            }
        }
        out.extend_from_slice(text.get(pos..)?);
        Some(out)
    }

    /// Encode into the binary form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            4 + self
                .ops
                .iter()
                .map(|op| match op {
                    DeltaOp::Insert(s) => s.len() + 3,
                    _ => 4,
                })
                .sum::<usize>(),
        );
        out.push(DELTA_FORMAT_VERSION);
        write_u64(&mut out, self.ops.len() as u64);
        for op in &self.ops {
            match op {
                DeltaOp::Keep(n) => write_u64(&mut out, (*n as u64) << 2),
                DeltaOp::Insert(s) => {
                    write_u64(&mut out, ((s.len() as u64) << 2) | 1);
                    out.extend_from_slice(s.as_bytes());
                }
                DeltaOp::Delete(n) => write_u64(&mut out, ((*n as u64) << 2) | 2),
            }
        }
        out
    }

    /// Decode the binary form; any malformed input is an [`Error::Decode`].
    pub fn from_bytes(data: &[u8]) -> Result<Delta> {
        let mut r = Reader::new(data);
        let version = r.u8().map_err(|_| Error::decode("empty delta encoding"))?;
        if version != DELTA_FORMAT_VERSION {
            return Err(Error::decode(format!(
                "unknown delta format version {version} (this build reads version {DELTA_FORMAT_VERSION})"
            )));
        }
        // Every op takes at least one byte: a bound before allocating.
        let count = r.usize_max(r.remaining(), "delta op count")?;
        let mut ops = Vec::with_capacity(count);
        for _ in 0..count {
            let at = r.position();
            let tag = r.u64()?;
            let n = tag >> 2;
            if n == 0 {
                return Err(Error::decode(format!("empty delta op at byte {at}")));
            }
            let op = match tag & 3 {
                1 => {
                    let len = usize::try_from(n).map_err(|_| {
                        Error::decode(format!("delta insert length out of range at byte {at}"))
                    })?;
                    let bytes = r.bytes(len)?;
                    let s = std::str::from_utf8(bytes).map_err(|e| {
                        Error::decode(format!("delta insert at byte {at} is not UTF-8: {e}"))
                    })?;
                    DeltaOp::Insert(s.to_owned())
                }
                3 => return Err(Error::decode(format!("invalid delta op 3 at byte {at}"))),
                kind => {
                    if n > MAX_DELTA_COUNT {
                        return Err(Error::decode(format!(
                            "delta count {n} at byte {at} is out of range"
                        )));
                    }
                    let n = n as usize;
                    if kind == 0 {
                        DeltaOp::Keep(n)
                    } else {
                        DeltaOp::Delete(n)
                    }
                }
            };
            ops.push(op);
        }
        r.finish()?;
        Ok(Delta { ops })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chars(s: &str) -> Vec<char> {
        s.chars().collect()
    }

    fn opts() -> DiffOptions {
        DiffOptions {
            timeout: None,
            cleanup: super::super::Cleanup::Efficiency,
            ..DiffOptions::default()
        }
    }

    #[test]
    fn an_insert_is_a_keep_and_the_text() {
        let d = make_delta(&chars("hello world"), &chars("hello brave world"), &opts());
        assert_eq!(
            d.ops,
            vec![DeltaOp::Keep(6), DeltaOp::Insert("brave ".into())]
        );
        assert_eq!(d.to_bytes(), b"\x02\x02\x18\x19brave ".to_vec());
    }

    #[test]
    fn a_delta_past_the_end_does_not_fit() {
        let d = Delta {
            ops: vec![DeltaOp::Keep(4), DeltaOp::Delete(2)],
        };
        assert_eq!(d.apply(&chars("abcdef")), Some(chars("abcd")));
        assert_eq!(d.apply(&chars("abcde")), None);
        assert_eq!(d.apply(&chars("abc")), None);
    }

    #[test]
    fn malformed_bytes_are_refused() {
        for bad in [
            &b""[..],
            b"\x01\x00",
            b"\x02",
            b"\x02\x01",
            b"\x02\x01\x00",
            b"\x02\x01\x03",
            b"\x02\x01\x05",
            b"\x02\x01\x05\xff",
            b"\x02\x00\x00",
            b"\x02\x02\x04",
        ] {
            assert!(Delta::from_bytes(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Delta::from_bytes(b"\x02\x00").unwrap(), Delta::default());
    }

    proptest! {
        #[test]
        fn make_apply_and_codec_round_trip(a in "[ab\u{e9}\u{1F600} ]{0,40}", b in "[ab\u{e9}\u{1F600} ]{0,40}") {
            let (ca, cb) = (chars(&a), chars(&b));
            let d = make_delta(&ca, &cb, &opts());
            prop_assert_eq!(d.apply(&ca), Some(cb.clone()));
            let back = Delta::from_bytes(&d.to_bytes()).unwrap();
            prop_assert_eq!(&back, &d);
            let wide: Vec<u32> = ca.iter().map(|&c| c as u32).collect();
            let out = d.apply(&wide).unwrap();
            prop_assert_eq!(out, cb.iter().map(|&c| c as u32).collect::<Vec<_>>());
        }

        #[test]
        fn decoding_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut data = data;
            if let Some(first) = data.first_mut() { *first = 2; }
            if let Ok(d) = Delta::from_bytes(&data) {
                prop_assert_eq!(Delta::from_bytes(&d.to_bytes()).unwrap(), d.clone());
                let _ = d.apply(&chars("some text"));
            }
        }
    }
}
