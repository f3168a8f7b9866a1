//! Serialized forms of a [`Patch`]: the compact binary wire form and the
//! standard diff-match-patch patch text.
//!
//! Binary form, version 1 (all integers are LEB128 varints, canonical):
//!
//! ```text
//! patch   = version:u8 (=1) hunk_count hunk*
//! hunk    = start1 (start2 - start1 as zigzag) diff_count diff+
//! diff    = tag text          tag = (utf8_len << 2) | op, op: 0 equal, 1 insert, 2 delete
//! ```
//!
//! Lengths (`length1`, `length2`) are implied by the diffs. Offsets count
//! Unicode code points. Decoding is strict: truncation, trailing bytes,
//! non-canonical varints, invalid UTF-8, empty hunks and
//! out-of-range offsets are all errors.

use super::{Diff, Hunk, Op, Patch};
use crate::error::{Error, Result};
use crate::varint::{write_i64, write_u64, Reader};

/// Version byte of the binary patch form.
pub const PATCH_FORMAT_VERSION: u8 = 1;

/// Largest offset or length a decoded patch may carry (in code points).
pub const MAX_PATCH_OFFSET: usize = 1 << 40;

impl Hunk {
    fn recompute_lengths(&mut self) {
        self.length1 = self
            .diffs
            .iter()
            .filter(|d| d.op != Op::Insert)
            .map(|d| d.text.len())
            .sum();
        self.length2 = self
            .diffs
            .iter()
            .filter(|d| d.op != Op::Delete)
            .map(|d| d.text.len())
            .sum();
    }
}

impl Patch {
    /// Number of hunks.
    pub fn len(&self) -> usize {
        self.hunks.len()
    }

    /// Whether the patch has no hunks (applying it changes nothing).
    pub fn is_empty(&self) -> bool {
        self.hunks.is_empty()
    }

    /// Encode into the compact binary form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            16 + self
                .hunks
                .iter()
                .map(|h| h.length1 + h.length2)
                .sum::<usize>(),
        );
        out.push(PATCH_FORMAT_VERSION);
        write_u64(&mut out, self.hunks.len() as u64);
        let mut buf = String::new();
        for h in &self.hunks {
            write_u64(&mut out, h.start1 as u64);
            write_i64(&mut out, h.start2 as i64 - h.start1 as i64);
            write_u64(&mut out, h.diffs.len() as u64);
            for d in &h.diffs {
                buf.clear();
                buf.extend(d.text.iter());
                let op = match d.op {
                    Op::Equal => 0u64,
                    Op::Insert => 1,
                    Op::Delete => 2,
                };
                write_u64(&mut out, ((buf.len() as u64) << 2) | op);
                out.extend_from_slice(buf.as_bytes());
            }
        }
        out
    }

    /// Decode the binary form; any malformed input is an [`Error::Decode`].
    pub fn from_bytes(data: &[u8]) -> Result<Patch> {
        let mut r = Reader::new(data);
        let version = r.u8().map_err(|_| Error::decode("empty patch encoding"))?;
        if version != PATCH_FORMAT_VERSION {
            return Err(Error::decode(format!(
                "unknown patch format version {version} (this build reads version {PATCH_FORMAT_VERSION})"
            )));
        }
        // Every hunk takes at least 4 bytes: a bound before allocating.
        let count = r.usize_max(r.remaining() / 4, "hunk count")?;
        let mut hunks = Vec::with_capacity(count);
        for _ in 0..count {
            let start1 = r.usize_max(MAX_PATCH_OFFSET, "hunk start")?;
            let shift = r.i64()?;
            let start2 = i64::try_from(start1)
                .ok()
                .and_then(|s| s.checked_add(shift))
                .filter(|&s| s >= 0 && s as u64 <= MAX_PATCH_OFFSET as u64)
                .ok_or_else(|| {
                    Error::decode(format!(
                        "hunk destination start out of range at byte {}",
                        r.position()
                    ))
                })? as usize;
            let n = r.usize_max(r.remaining(), "diff count")?;
            if n == 0 {
                return Err(Error::decode(format!(
                    "hunk without diffs at byte {}",
                    r.position()
                )));
            }
            let mut diffs = Vec::with_capacity(n);
            for _ in 0..n {
                let at = r.position();
                let tag = r.u64()?;
                let op = match tag & 3 {
                    0 => Op::Equal,
                    1 => Op::Insert,
                    2 => Op::Delete,
                    _ => return Err(Error::decode(format!("invalid diff op 3 at byte {at}"))),
                };
                let len = usize::try_from(tag >> 2)
                    .map_err(|_| Error::decode(format!("diff length out of range at byte {at}")))?;
                let bytes = r.bytes(len)?;
                let text = std::str::from_utf8(bytes).map_err(|e| {
                    Error::decode(format!("diff text at byte {at} is not UTF-8: {e}"))
                })?;
                diffs.push(Diff::new(op, text.chars().collect()));
            }
            let mut hunk = Hunk {
                diffs,
                start1,
                start2,
                length1: 0,
                length2: 0,
            };
            hunk.recompute_lengths();
            if hunk.length1 > MAX_PATCH_OFFSET || hunk.length2 > MAX_PATCH_OFFSET {
                return Err(Error::decode("hunk length out of range"));
            }
            hunks.push(hunk);
        }
        r.finish()?;
        Ok(Patch { hunks })
    }

    /// The standard diff-match-patch patch text (`@@ -1,4 +1,5 @@` headers,
    /// one line per diff, `%xx`-escaped UTF-8), identical to the reference's
    /// `patch_toText`.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for h in &self.hunks {
            out.push_str("@@ -");
            push_coords(&mut out, h.start1, h.length1);
            out.push_str(" +");
            push_coords(&mut out, h.start2, h.length2);
            out.push_str(" @@\n");
            for d in &h.diffs {
                out.push(match d.op {
                    Op::Insert => '+',
                    Op::Delete => '-',
                    Op::Equal => ' ',
                });
                let mut utf8 = [0u8; 4];
                for &c in &d.text {
                    for &b in c.encode_utf8(&mut utf8).as_bytes() {
                        if is_unescaped(b) {
                            out.push(b as char);
                        } else {
                            out.push('%');
                            out.push(HEX[(b >> 4) as usize] as char);
                            out.push(HEX[(b & 15) as usize] as char);
                        }
                    }
                }
                out.push('\n');
            }
        }
        out
    }

    /// Parse the standard patch text. Stricter than the reference: bad
    /// `%` escapes, invalid UTF-8, hunks without lines and headers whose
    /// lengths disagree with the lines are errors.
    pub fn from_text(text: &str) -> Result<Patch> {
        let mut hunks: Vec<Hunk> = Vec::new();
        let mut lines = text.split('\n').enumerate().peekable();
        while let Some((lineno, line)) = lines.next() {
            if line.is_empty() && lines.peek().is_none() {
                break; // the newline ending the last line
            }
            let (start1, length1, start2, length2) = parse_header(line).ok_or_else(|| {
                Error::decode(format!(
                    "line {}: invalid patch header {:?}",
                    lineno + 1,
                    clip(line)
                ))
            })?;
            let mut hunk = Hunk {
                diffs: Vec::new(),
                start1,
                start2,
                length1: 0,
                length2: 0,
            };
            while let Some(&(n, l)) = lines.peek() {
                let op = match l.as_bytes().first() {
                    Some(b'+') => Op::Insert,
                    Some(b'-') => Op::Delete,
                    Some(b' ') => Op::Equal,
                    Some(b'@') => break,
                    None => {
                        lines.next();
                        continue;
                    }
                    Some(_) => {
                        return Err(Error::decode(format!(
                            "line {}: invalid patch mode {:?}",
                            n + 1,
                            l.chars().next().unwrap_or(' ')
                        )))
                    }
                };
                let body =
                    unescape(&l[1..]).map_err(|e| Error::decode(format!("line {}: {e}", n + 1)))?;
                hunk.diffs.push(Diff::new(op, body.chars().collect()));
                lines.next();
            }
            if hunk.diffs.is_empty() {
                return Err(Error::decode(format!(
                    "line {}: hunk without lines",
                    lineno + 1
                )));
            }
            hunk.recompute_lengths();
            if (hunk.length1, hunk.length2) != (length1, length2) {
                return Err(Error::decode(format!(
                    "line {}: header says lengths {length1},{length2} but the lines add up to {},{}",
                    lineno + 1,
                    hunk.length1,
                    hunk.length2
                )));
            }
            hunks.push(hunk);
        }
        Ok(Patch { hunks })
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Bytes that Python's `urllib.parse.quote(s, "!~*'();/?:@&=+$,# ")` keeps.
fn is_unescaped(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"_.-~!*'();/?:@&=+$,# ".contains(&b)
}

fn push_coords(out: &mut String, start: usize, length: usize) {
    use std::fmt::Write;
    let _ = match length {
        0 => write!(out, "{start},0"),
        1 => write!(out, "{}", start + 1),
        _ => write!(out, "{},{length}", start + 1),
    };
}

fn clip(s: &str) -> String {
    s.chars().take(60).collect()
}

/// Parse `@@ -a[,b] +c[,d] @@` into (start1, length1, start2, length2).
fn parse_header(line: &str) -> Option<(usize, usize, usize, usize)> {
    let rest = line.strip_prefix("@@ -")?.strip_suffix(" @@")?;
    let (one, two) = rest.split_once(" +")?;
    let (s1, l1) = parse_coords(one)?;
    let (s2, l2) = parse_coords(two)?;
    Some((s1, l1, s2, l2))
}

fn parse_number(s: &str) -> Option<usize> {
    if s.is_empty() || s.len() > 15 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<usize>()
        .ok()
        .filter(|&v| v <= super::codec::MAX_PATCH_OFFSET)
}

fn parse_coords(s: &str) -> Option<(usize, usize)> {
    match s.split_once(',') {
        None => Some((parse_number(s)?.checked_sub(1)?, 1)),
        Some((a, "0")) => Some((parse_number(a)?, 0)),
        Some((a, b)) => Some((parse_number(a)?.checked_sub(1)?, parse_number(b)?)),
    }
}

fn unescape(s: &str) -> std::result::Result<String, String> {
    let bytes = s.as_bytes();
    if !bytes.contains(&b'%') {
        return Ok(s.to_string());
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = |b: u8| (b as char).to_digit(16);
            match (
                bytes.get(i + 1).and_then(|&b| hex(b)),
                bytes.get(i + 2).and_then(|&b| hex(b)),
            ) {
                (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                _ => return Err(format!("invalid %-escape at column {}", i + 2)),
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|e| format!("escaped text is not UTF-8: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::{apply_patch, make_patch, DiffOptions, PatchOptions};

    fn c(s: &str) -> Vec<char> {
        s.chars().collect()
    }

    #[test]
    fn text_form_matches_reference_example() {
        // From the reference's own test suite.
        let a = c("The quick brown fox jumps over the lazy dog.");
        let b = c("That quick brown fox jumped over a lazy dog.");
        let p = make_patch(
            &a,
            &b,
            &DiffOptions {
                timeout: None,
                ..DiffOptions::default()
            },
            4,
        )
        .unwrap_or_default();
        assert_eq!(
            p.to_text(),
            "@@ -1,11 +1,12 @@\n Th\n-e\n+at\n  quick b\n@@ -22,18 +22,17 @@\n jump\n-s\n+ed\n  over \n-the\n+a\n  laz\n"
        );
        assert_eq!(Patch::from_text(&p.to_text()), Ok(p.clone()));
        assert_eq!(Patch::from_bytes(&p.to_bytes()), Ok(p.clone()));
        let (out, ok) = apply_patch(&p, &a, &PatchOptions::default()).unwrap_or_default();
        assert_eq!(out, b);
        assert_eq!(ok, vec![true, true]);
    }

    #[test]
    fn strict_binary_decoding() {
        let p = make_patch(
            &c("héllo 😀 world"),
            &c("héllo 🎉 wide world"),
            &DiffOptions::default(),
            4,
        )
        .unwrap_or_default();
        let bytes = p.to_bytes();
        for cut in 0..bytes.len() {
            assert!(
                matches!(Patch::from_bytes(&bytes[..cut]), Err(Error::Decode(_))),
                "prefix {cut}"
            );
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(Patch::from_bytes(&extra).is_err());
        let mut bad_version = bytes;
        bad_version[0] = 9;
        let err = Patch::from_bytes(&bad_version).err();
        assert!(
            matches!(err, Some(Error::Decode(m)) if m.contains("unknown patch format version 9"))
        );
    }

    #[test]
    fn text_form_rejects_garbage() {
        for bad in [
            "@@ -1 +1 @@\n",
            "@@ -x +1 @@\n x\n",
            "@@ -1,1 +1,1 @@\n*a\n",
            "@@ -1,1 +1,1 @@\n %zz\n",
        ] {
            assert!(Patch::from_text(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Patch::from_text(""), Ok(Patch::default()));
    }
}
