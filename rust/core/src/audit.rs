//! The audit log's kernels: content hashing, the canonical encoding of one
//! log entry, entry hashes, hash-chain verification over a buffer of entries,
//! and the byte string a replica signs for its log head.
//!
//! Every hash is BLAKE3 (32 bytes). Entry hashes and head messages use
//! BLAKE3's key-derivation mode with their own context strings, so that no
//! entry hash can be mistaken for a content hash or a head message and the
//! other way round.
//!
//! An entry's body (version 1):
//!
//! ```text
//! u8 version (1) | varint seq | varint time_ns | u8 channel | u8 kind | u8 origin
//! | str subject | str writer | str via | varint writer_seq
//! | [32] content hash | [32] previous entry's hash
//! ```
//!
//! `str` is a varint byte length and UTF-8 bytes. `channel`: 0 text, 1
//! metadata, 2 KV; `kind`: 0 create, 1 update, 2 delete; `origin`: 0 local,
//! 1 remote. The first entry's previous hash is 32 zero bytes, or the hash
//! its log was pruned after (a checkpoint). The encoding is canonical:
//! [`decode_entry`] accepts exactly what [`encode_entry`] writes.

pub mod incremental;

use crate::varint::{write_u64, Reader};
use crate::{Error, Result};

/// Bytes of every hash.
pub const HASH_LEN: usize = 32;
/// A BLAKE3 hash.
pub type Hash = [u8; HASH_LEN];
/// The version byte entries start with.
pub const ENTRY_VERSION: u8 = 1;
/// Longest subject (document name, key paths, cache name), in bytes.
pub const MAX_SUBJECT: usize = 1 << 16;
/// Longest replica id (writer, via), in bytes.
pub const MAX_ID: usize = 4096;
/// Longest encoded entry.
pub const MAX_ENTRY: usize = MAX_SUBJECT + 2 * MAX_ID + 128;

const ENTRY_CONTEXT: &str = "hybridsync 2026-12 audit log entry v1";
const HEAD_CONTEXT: &str = "hybridsync 2026-12 audit log head v1";

/// One entry of a replica's audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Position in the log (the first entry is 1).
    pub seq: u64,
    /// When it was appended, nanoseconds since the Unix epoch.
    pub time_ns: u64,
    /// 0 text, 1 metadata, 2 KV.
    pub channel: u8,
    /// 0 create, 1 update, 2 delete.
    pub kind: u8,
    /// 0 a local write, 1 integrated from a peer.
    pub origin: u8,
    /// The document, metadata key paths or KV cache changed.
    pub subject: String,
    /// The replica that wrote the change (as far as this replica knows).
    pub writer: String,
    /// The peer the change came through (empty for a local write).
    pub via: String,
    /// The writer's own log position of the change (0: not known).
    pub writer_seq: u64,
    /// Hash of what changed (see the protocol documentation per channel).
    pub content: Hash,
    /// Hash of the previous entry.
    pub prev: Hash,
}

/// BLAKE3 of `data`.
pub fn content_hash(data: &[u8]) -> Hash {
    *blake3::hash(data).as_bytes()
}

/// BLAKE3 of the concatenation of `parts`.
pub fn content_hash_parts<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> Hash {
    let mut h = ContentHasher::new();
    for p in parts {
        h.update(p);
    }
    h.finalize()
}

/// Bytes [`ContentHasher`] hands BLAKE3 at a time: 16 chunks of 1 KiB, the
/// widest SIMD degree of the `blake3` crate (AVX-512).
const FEED: usize = 16 * 1024;

/// BLAKE3 of a stream fed in pieces of any size, at full SIMD speed.
///
/// `blake3::Hasher::update` hashes chunks in parallel only within subtrees
/// aligned to the number of bytes hashed so far: fed pieces whose sizes are
/// not multiples of 16 KiB (a KV change is 512 runs of rows of 18 KB behind a
/// short prefix), it falls back to subtrees of one or two chunks and runs at
/// half speed. This hasher hands BLAKE3 whole 16 KiB blocks at positions that
/// are multiples of 16 KiB only: straight from the input where it can,
/// through a 16 KiB staging buffer (which stays in the L1 cache) across the
/// pieces' edges. The hash is BLAKE3 of the concatenation, unchanged.
pub struct ContentHasher {
    hasher: blake3::Hasher,
    stage: Vec<u8>,
}

impl Default for ContentHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl ContentHasher {
    /// An empty hasher.
    pub fn new() -> Self {
        Self {
            hasher: blake3::Hasher::new(),
            stage: Vec::with_capacity(FEED),
        }
    }

    /// Append `data` to the stream.
    pub fn update(&mut self, mut data: &[u8]) {
        if !self.stage.is_empty() {
            let take = (FEED - self.stage.len()).min(data.len());
            self.stage.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.stage.len() < FEED {
                return;
            }
            self.hasher.update(&self.stage);
            self.stage.clear();
        }
        // The stream hashed so far is a multiple of FEED bytes long.
        let whole = data.len() - data.len() % FEED;
        if whole > 0 {
            self.hasher.update(&data[..whole]);
        }
        self.stage.extend_from_slice(&data[whole..]);
    }

    /// The hash of everything fed.
    pub fn finalize(mut self) -> Hash {
        self.hasher.update(&self.stage);
        *self.hasher.finalize().as_bytes()
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    write_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn read_str(r: &mut Reader<'_>, max: usize, what: &str) -> Result<String> {
    let n = r.usize_max(max, what)?;
    let b = r.bytes(n)?;
    std::str::from_utf8(b)
        .map(str::to_owned)
        .map_err(|_| Error::decode(format!("{what} is not UTF-8")))
}

fn check(e: &Entry) -> Result<()> {
    if e.channel > 2 {
        return Err(Error::invalid(format!("unknown channel {}", e.channel)));
    }
    if e.kind > 2 {
        return Err(Error::invalid(format!("unknown change kind {}", e.kind)));
    }
    if e.origin > 1 {
        return Err(Error::invalid(format!("unknown origin {}", e.origin)));
    }
    if e.subject.len() > MAX_SUBJECT {
        return Err(Error::LimitExceeded(format!(
            "an audit subject is at most {MAX_SUBJECT} bytes, got {}",
            e.subject.len()
        )));
    }
    if e.writer.len() > MAX_ID || e.via.len() > MAX_ID {
        return Err(Error::LimitExceeded(format!(
            "replica ids in the audit log are at most {MAX_ID} bytes"
        )));
    }
    Ok(())
}

/// The canonical body of `e`.
pub fn encode_entry(e: &Entry) -> Result<Vec<u8>> {
    check(e)?;
    let mut out =
        Vec::with_capacity(96 + e.subject.len() + e.writer.len() + e.via.len() + 2 * HASH_LEN);
    out.push(ENTRY_VERSION);
    write_u64(&mut out, e.seq);
    write_u64(&mut out, e.time_ns);
    out.push(e.channel);
    out.push(e.kind);
    out.push(e.origin);
    write_str(&mut out, &e.subject);
    write_str(&mut out, &e.writer);
    write_str(&mut out, &e.via);
    write_u64(&mut out, e.writer_seq);
    out.extend_from_slice(&e.content);
    out.extend_from_slice(&e.prev);
    Ok(out)
}

fn hash32(r: &mut Reader<'_>) -> Result<Hash> {
    let mut h = [0u8; HASH_LEN];
    h.copy_from_slice(r.bytes(HASH_LEN)?);
    Ok(h)
}

/// Parse an entry body; every malformed input is a [`Error::Decode`].
pub fn decode_entry(body: &[u8]) -> Result<Entry> {
    if body.len() > MAX_ENTRY {
        return Err(Error::decode(format!(
            "an audit entry of {} bytes is longer than {MAX_ENTRY}",
            body.len()
        )));
    }
    let mut r = Reader::new(body);
    let version = r.u8()?;
    if version != ENTRY_VERSION {
        return Err(Error::decode(format!(
            "unknown audit entry version {version}"
        )));
    }
    let seq = r.u64()?;
    let time_ns = r.u64()?;
    let channel = r.u8()?;
    let kind = r.u8()?;
    let origin = r.u8()?;
    let subject = read_str(&mut r, MAX_SUBJECT, "subject")?;
    let writer = read_str(&mut r, MAX_ID, "writer")?;
    let via = read_str(&mut r, MAX_ID, "via")?;
    let writer_seq = r.u64()?;
    let content = hash32(&mut r)?;
    let prev = hash32(&mut r)?;
    r.finish()?;
    let e = Entry {
        seq,
        time_ns,
        channel,
        kind,
        origin,
        subject,
        writer,
        via,
        writer_seq,
        content,
        prev,
    };
    check(&e).map_err(|err| Error::decode(err.to_string()))?;
    Ok(e)
}

/// The hash of an entry body (what the next entry's `prev` holds).
pub fn entry_hash(body: &[u8]) -> Hash {
    // The context's key derived once: a copy of the keyed hasher per entry.
    static ENTRY: std::sync::OnceLock<blake3::Hasher> = std::sync::OnceLock::new();
    let mut h = ENTRY
        .get_or_init(|| blake3::Hasher::new_derive_key(ENTRY_CONTEXT))
        .clone();
    h.update(body);
    *h.finalize().as_bytes()
}

/// What a replica signs for its log head: its id, the head's position, its
/// hash and the signing time, under the head context.
pub fn head_message(replica: &str, seq: u64, head: &Hash, time_ns: u64) -> Result<Vec<u8>> {
    if replica.is_empty() || replica.len() > MAX_ID {
        return Err(Error::invalid(format!(
            "a replica id is 1 to {MAX_ID} bytes"
        )));
    }
    let mut out = Vec::with_capacity(HEAD_CONTEXT.len() + replica.len() + 64);
    out.extend_from_slice(HEAD_CONTEXT.as_bytes());
    out.push(0);
    write_str(&mut out, replica);
    write_u64(&mut out, seq);
    out.extend_from_slice(head);
    write_u64(&mut out, time_ns);
    Ok(out)
}

/// The outcome of [`verify_chain`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Entries that verified, from the first.
    pub good: usize,
    /// Hash of the last good entry (the starting hash when none was).
    pub head: Hash,
    /// Why the entry after the good ones failed (`None`: all verified).
    pub error: Option<String>,
}

/// Verify a run of entries: `buf` holds each body behind its varint length.
/// The first must have position `first_seq` and previous hash `prev`; each
/// next one the next position and the hash of the one before. Stops at the
/// first entry that fails, and says why.
pub fn verify_chain(buf: &[u8], first_seq: u64, prev: &Hash) -> Verified {
    let mut r = Reader::new(buf);
    let mut head = *prev;
    let mut good = 0usize;
    let mut expected = first_seq;
    while r.remaining() > 0 {
        let fail = |msg: String| Verified {
            good,
            head,
            error: Some(msg),
        };
        let body = match r
            .usize_max(MAX_ENTRY, "audit entry length")
            .and_then(|n| r.bytes(n))
        {
            Ok(b) => b,
            Err(e) => return fail(format!("cannot read the entry: {e}")),
        };
        let e = match decode_entry(body) {
            Ok(e) => e,
            Err(err) => return fail(format!("malformed entry: {err}")),
        };
        if e.seq != expected {
            return fail(format!(
                "entry says position {}, the log has it at {expected}",
                e.seq
            ));
        }
        if e.prev != head {
            return fail("its previous-entry hash does not match the entry before it".into());
        }
        head = entry_hash(body);
        good += 1;
        expected = expected.wrapping_add(1);
    }
    Verified {
        good,
        head,
        error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(seq: u64, prev: Hash) -> Entry {
        Entry {
            seq,
            time_ns: 1_700_000_000_000_000_000 + seq,
            channel: (seq % 3) as u8,
            kind: 1,
            origin: (seq % 2) as u8,
            subject: format!("doc-{seq}"),
            writer: "agent-1".into(),
            via: if seq % 2 == 1 {
                "hub".into()
            } else {
                String::new()
            },
            writer_seq: seq,
            content: content_hash(format!("v{seq}").as_bytes()),
            prev,
        }
    }

    fn chain(n: u64) -> (Vec<Vec<u8>>, Hash) {
        let mut prev = [0u8; HASH_LEN];
        let mut bodies = Vec::new();
        for seq in 1..=n {
            let body = encode_entry(&entry(seq, prev)).unwrap_or_default();
            prev = entry_hash(&body);
            bodies.push(body);
        }
        (bodies, prev)
    }

    fn framed(bodies: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for b in bodies {
            write_u64(&mut out, b.len() as u64);
            out.extend_from_slice(b);
        }
        out
    }

    #[test]
    fn blake3_reference_vector() {
        // The BLAKE3 paper's test vector for the empty input.
        let h = content_hash(b"");
        assert_eq!(
            h[..4],
            [0xaf, 0x13, 0x49, 0xb9],
            "BLAKE3(\"\") starts af1349b9"
        );
        assert_eq!(content_hash_parts([&b"ab"[..], b"c"]), content_hash(b"abc"));
    }

    #[test]
    fn kv_like_parts_hash_as_their_concatenation() {
        // A short prefix, then runs of 18 KiB (256 q4_0 rows of 72 bytes).
        let data: Vec<u8> = (0..15 + 40 * 18_432).map(|i| (i % 251) as u8).collect();
        let mut parts = vec![&data[..15]];
        parts.extend(data[15..].chunks(18_432));
        assert_eq!(content_hash_parts(parts), content_hash(&data));
    }

    #[test]
    fn chain_verifies_and_names_the_first_bad_entry() {
        let (mut bodies, head) = chain(10);
        let v = verify_chain(&framed(&bodies), 1, &[0; HASH_LEN]);
        assert_eq!(v.good, 10);
        assert_eq!(v.head, head);
        assert!(v.error.is_none());
        // Reordering two entries breaks the chain at the first of them.
        bodies.swap(4, 5);
        let v = verify_chain(&framed(&bodies), 1, &[0; HASH_LEN]);
        assert_eq!(v.good, 4);
        assert!(v.error.is_some());
        // Truncated buffers fail, never panic.
        let (bodies, _) = chain(3);
        let buf = framed(&bodies);
        for cut in 0..buf.len() {
            let v = verify_chain(&buf[..cut], 1, &[0; HASH_LEN]);
            assert!(v.good <= 3);
        }
    }

    #[test]
    fn head_message_binds_every_field() {
        let h = [7u8; HASH_LEN];
        let a = head_message("a", 1, &h, 5).unwrap_or_default();
        assert_ne!(a, head_message("b", 1, &h, 5).unwrap_or_default());
        assert_ne!(a, head_message("a", 2, &h, 5).unwrap_or_default());
        assert_ne!(
            a,
            head_message("a", 1, &[8; HASH_LEN], 5).unwrap_or_default()
        );
        assert_ne!(a, head_message("a", 1, &h, 6).unwrap_or_default());
        assert!(head_message("", 1, &h, 5).is_err());
    }

    #[test]
    fn bad_fields_are_refused() {
        let mut e = entry(1, [0; HASH_LEN]);
        e.channel = 3;
        assert!(encode_entry(&e).is_err());
        let mut body = encode_entry(&entry(1, [0; HASH_LEN])).unwrap_or_default();
        body[0] = 2;
        assert!(decode_entry(&body).is_err());
    }

    proptest! {
        #[test]
        fn entries_round_trip(seq in 0u64.., t in 0u64.., ch in 0u8..3, kind in 0u8..3,
                              origin in 0u8..2, subject in ".{0,40}", writer in ".{0,20}",
                              via in ".{0,20}", ws in 0u64.., c in any::<[u8; 32]>(),
                              p in any::<[u8; 32]>()) {
            let e = Entry { seq, time_ns: t, channel: ch, kind, origin, subject, writer, via,
                            writer_seq: ws, content: c, prev: p };
            let body = encode_entry(&e).unwrap_or_default();
            prop_assert_eq!(decode_entry(&body), Ok(e));
        }

        #[test]
        fn parts_hash_as_their_concatenation(
            sizes in proptest::collection::vec(0usize..40_000, 0..12), seed in any::<u8>()
        ) {
            let total: usize = sizes.iter().sum();
            let data: Vec<u8> = (0..total).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
            let mut parts = Vec::new();
            let mut at = 0;
            for n in &sizes {
                parts.push(&data[at..at + n]);
                at += n;
            }
            prop_assert_eq!(content_hash_parts(parts), content_hash(&data));
        }

        #[test]
        fn any_bytes_decode_or_fail(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = verify_chain(&data, 1, &[0; HASH_LEN]);
            if let Ok(e) = decode_entry(&data) {
                prop_assert_eq!(encode_entry(&e).unwrap_or_default(), data);
            }
        }

        #[test]
        fn any_flipped_byte_is_caught(n in 1u64..8, at in any::<prop::sample::Index>(),
                                      bit in 0u8..8) {
            let (bodies, head) = chain(n);
            let mut buf = framed(&bodies);
            let i = at.index(buf.len());
            buf[i] ^= 1 << bit;
            let v = verify_chain(&buf, 1, &[0; HASH_LEN]);
            prop_assert!(v.error.is_some() || v.head != head || (v.good as u64) < n);
        }
    }
}
