//! The wire format of a link: one frame per exchange (`docs/protocol.md`).
//!
//! A frame is a mark byte holding the protocol version, a flag byte, the KV
//! section (when flagged), the body (zstd-compressed when flagged) and the low
//! 32 bits of the xxh3-64 of everything before it but the payloads of whole
//! KV pages (their 64-bit page hashes, checked when decoding, cover those
//! bytes; version 2 summed them too). The body holds the sender
//! (when flagged), its epoch and sequence number, one entry per document and
//! the metadata block (when flagged).
//!
//! [`encode_frame`] writes exactly the bytes of the Python reference codec
//! (`hybridsync.sync.frame`); [`decode_frame`] accepts exactly the frames it
//! accepts and reports every defect as an [`Error`] of the same class
//! ([`Error::Decode`] or [`Error::LimitExceeded`]), never by panicking.
//! Decoded strings, patches' bytes and KV arrays and payloads are borrowed
//! from the input (or from the decompressed body), not copied.

use std::collections::HashSet;

use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use crate::error::{Error, Result};
use crate::kv::{self, Float, Format, PageLayout};
use crate::text::{Delta, Patch, DELTA_FORMAT_VERSION};
use crate::varint::Reader;

/// The high nibble of a frame's first byte; the low nibble is the version.
pub const MARK: u8 = 0xA0;
/// The first four bytes of a version 1 frame (recognised to name its version).
pub const V1_MAGIC: &[u8; 4] = b"HSYN";
/// The protocol version this codec speaks.
pub const PROTOCOL_VERSION: u8 = 3;
/// The body is zstd-compressed.
pub const FLAG_COMPRESSED: u8 = 0x01;
/// The frame answers a request.
pub const FLAG_REPLY: u8 = 0x02;
/// The body ends with a metadata block.
pub const FLAG_META: u8 = 0x04;
/// A KV section precedes the body.
pub const FLAG_KV: u8 = 0x08;
/// The sender reopened a durable replica (its link state comes from disk).
pub const FLAG_RESUME: u8 = 0x10;
/// Largest document index an entry may carry.
pub const MAX_DOC_INDEX: u64 = (1 << 62) - 1;
/// The body starts with the sender's replica id.
pub const FLAG_SENDER: u8 = 0x20;
/// The sender lost what the receiver told it before (the document indices
/// it bound, its metadata epoch): send names and a metadata block again.
pub const FLAG_RENAME: u8 = 0x40;
const KNOWN_FLAGS: u8 =
    FLAG_COMPRESSED | FLAG_REPLY | FLAG_META | FLAG_KV | FLAG_RESUME | FLAG_SENDER | FLAG_RENAME;
/// KV PAGES flag: after these pages the receiver holds the sender's cache.
pub const KV_COMPLETE: u8 = 0x01;
/// KV PAGES flag: the sender does not know the receiver's table.
pub const KV_PROBE: u8 = 0x02;
/// Bytes of the header: magic, version, flags.
pub const HEADER_LEN: usize = 2;
/// Bytes of the trailing checksum.
pub const CHECKSUM_LEN: usize = 4;
/// Most items a decoder reserves room for from a count the frame declares
/// (counts are checked against the bytes left, but an item takes more memory
/// decoded than its few bytes on the wire): more grow as they are read.
const RESERVE_MAX: usize = 1024;
/// The default limit on a frame's size, compressed or not.
pub const DEFAULT_MAX_BYTES: usize = 64 << 20;
/// The default limit on the size of one KV cache a frame describes.
pub const DEFAULT_MAX_KV_BYTES: u64 = 1 << 36;
/// Bodies of at least this many bytes are compressed by default.
pub const DEFAULT_COMPRESS_THRESHOLD: usize = 1024;
/// The default zstd level.
pub const DEFAULT_LEVEL: i32 = 3;

/// Largest layer count of a KV geometry.
pub const MAX_LAYERS: u64 = 4096;
/// Largest KV head count of a KV geometry.
pub const MAX_HEADS: u64 = 4096;
/// Largest head dimension of a KV geometry.
pub const MAX_HEAD_DIM: u64 = 1 << 16;
/// Largest page size (tokens) of a KV geometry.
pub const MAX_PAGE_TOKENS: u64 = 1 << 16;
/// Largest page (bytes) of a KV geometry.
pub const MAX_PAGE_BYTES: u64 = 16 << 20;
/// Token counts of a KV cache must stay below this.
pub const MAX_KV_TOKENS: u64 = 1 << 40;
/// Largest runtime record of a KV geometry (UTF-8 bytes).
pub const MAX_RUNTIME_BYTES: usize = 4096;
/// Set in a geometry's format code byte when a runtime record follows the
/// four sizes.
pub const FMT_RUNTIME: u8 = 0x80;

macro_rules! wire_enum {
    ($(#[$doc:meta])* $name:ident, $what:literal { $($(#[$vdoc:meta])* $variant:ident = $code:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum $name {
            $($(#[$vdoc])* $variant = $code,)+
        }

        impl $name {
            /// The kind of a wire code, if known.
            pub fn from_u8(code: u8) -> Option<Self> {
                match code {
                    $($code => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl TryFrom<u8> for $name {
            type Error = Error;
            fn try_from(code: u8) -> Result<Self> {
                Self::from_u8(code).ok_or_else(|| Error::invalid(format!("unknown {} {code}", $what)))
            }
        }
    };
}

wire_enum!(
    /// What a frame entry says about one document.
    Kind, "entry kind" {
        /// Edits (possibly none: an acknowledgement) with a shadow checksum.
        Edits = 1,
        /// The sender deleted the document.
        Delete = 2,
        /// The sender acknowledges the peer's DELETE.
        Deleted = 3,
        /// The sender's whole shadow.
        Full = 4,
        /// The sender asks for a FULL.
        Resync = 5,
        /// The sender has neither the document nor state for it.
        Absent = 6,
        /// The sender applied the peer's edits up to `ack` and holds `local`
        /// of its own; it has no edits to send (no checksum: the receiver
        /// verified the shadow when it applied those edits).
        Ack = 7,
    }
);

wire_enum!(
    /// What a frame's metadata block carries.
    MetaKind, "metadata block kind" {
        /// Only the sender's epoch.
        None = 0,
        /// A state vector and a Yjs update.
        Update = 1,
        /// Move to the sender's epoch.
        Epoch = 2,
        /// Like `Epoch`, after a merge by value.
        Merge = 3,
    }
);

wire_enum!(
    /// What a frame's KV entry says about one cache.
    KvKind, "KV entry kind" {
        /// Token count, table digest and pages.
        Pages = 1,
        /// The receiver's token count and digest, maybe its page table.
        Have = 2,
        /// The owner deleted the cache.
        Delete = 3,
    }
);

/// What an edit carries: a delta (the usual form) or a patch with context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Keep / insert / delete, for a receiver holding the same shadow.
    Delta(Delta),
    /// A diff-match-patch patch (hunks with context).
    Patch(Patch),
}

impl Change {
    /// Decode an edit's bytes: the first byte names the form.
    pub fn from_bytes(raw: &[u8]) -> Result<Change> {
        if raw.first() == Some(&DELTA_FORMAT_VERSION) {
            Ok(Change::Delta(Delta::from_bytes(raw)?))
        } else {
            Ok(Change::Patch(Patch::from_bytes(raw)?))
        }
    }
}

/// One versioned edit of an EDITS entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edit<'a> {
    /// The shadow version the change applies to.
    pub version: u64,
    /// The change's binary form, as it travels.
    pub raw: &'a [u8],
    /// The parsed change: always set by [`decode_frame`]; the encoder writes
    /// `raw` and ignores it.
    pub patch: Option<Change>,
}

/// What one frame carries for one document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The document's name (empty, and not sent, for a reference).
    pub name: &'a str,
    /// The document's index on the link: 0 none (the name travels alone),
    /// `i > 0` the name travels and is bound to index `i`, `-i` a reference
    /// to index `i` bound before (the name does not travel).
    pub reference: i64,
    /// What the entry says.
    pub kind: Kind,
    /// EDITS: peer edits applied; FULL: the sender's remote version.
    pub ack: u64,
    /// EDITS / FULL: the sender's local version after the edits.
    pub local: u64,
    /// EDITS: the edits, versions increasing and below `local`.
    pub edits: Vec<Edit<'a>>,
    /// EDITS: the low 32 bits of the xxh3-64 of the sender's shadow after
    /// the edits.
    pub checksum: u32,
    /// FULL: the sender's shadow text.
    pub text: &'a str,
}

impl<'a> Entry<'a> {
    /// An entry of a kind without fields (DELETE, DELETED, RESYNC, ABSENT).
    pub fn bare(name: &'a str, kind: Kind) -> Self {
        Entry {
            name,
            reference: 0,
            kind,
            ack: 0,
            local: 0,
            edits: Vec::new(),
            checksum: 0,
            text: "",
        }
    }
}

/// The structured-metadata block of a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaBlock<'a> {
    /// The sender's epoch number.
    pub epoch: u64,
    /// The sender's epoch id.
    pub epoch_id: u64,
    /// What the block carries.
    pub kind: MetaKind,
    /// First payload (not sent for [`MetaKind::None`]).
    pub a: &'a [u8],
    /// Second payload (not sent for [`MetaKind::None`]).
    pub b: &'a [u8],
}

/// A KV cache's geometry as it travels: a format code and four sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// 1 q4_0, 2 q8_0, 3/4/5 mlx4 with f16/bf16/f32 scales, 6 f16.
    pub code: u8,
    /// Layers.
    pub layers: u64,
    /// KV heads.
    pub kv_heads: u64,
    /// Values per row.
    pub head_dim: u64,
    /// Tokens per page.
    pub page_tokens: u64,
}

impl Geometry {
    /// The row format of a wire code.
    pub fn format_of(code: u8) -> Option<Format> {
        Some(match code {
            1 => Format::Q4_0,
            2 => Format::Q8_0,
            3 => Format::Mlx4(Float::F16),
            4 => Format::Mlx4(Float::BF16),
            5 => Format::Mlx4(Float::F32),
            6 => Format::F16,
            _ => return None,
        })
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> Result<u64> {
        let format = Self::format_of(self.code)
            .ok_or_else(|| Error::invalid(format!("unknown KV format code {}", self.code)))?;
        let n = usize::try_from(self.head_dim)
            .map_err(|_| Error::invalid("head_dim does not fit in memory"))?;
        Ok(format.row_bytes(n)? as u64)
    }

    /// The checks of the Python `Geometry.check` (ranges, groups, page size).
    pub fn check(&self) -> Result<()> {
        let format = Self::format_of(self.code)
            .ok_or_else(|| Error::invalid(format!("unknown KV format code {}", self.code)))?;
        for (name, value, top) in [
            ("layers", self.layers, MAX_LAYERS),
            ("kv_heads", self.kv_heads, MAX_HEADS),
            ("head_dim", self.head_dim, MAX_HEAD_DIM),
            ("page_tokens", self.page_tokens, MAX_PAGE_TOKENS),
        ] {
            if !(1..=top).contains(&value) {
                return Err(Error::invalid(format!(
                    "{name} must be an int in 1..{top}, got {value}"
                )));
            }
        }
        let group = format.group() as u64;
        if self.head_dim % group != 0 {
            return Err(Error::invalid(format!(
                "head_dim {} is not a multiple of {group}",
                self.head_dim
            )));
        }
        let rb = self.row_bytes()?;
        if self.page_tokens.saturating_mul(rb) > MAX_PAGE_BYTES {
            return Err(Error::invalid(format!(
                "a page of {} tokens x {rb} bytes exceeds {MAX_PAGE_BYTES} bytes",
                self.page_tokens
            )));
        }
        Ok(())
    }
}

/// Pages of one (layer, K|V) of a KV entry: parallel little-endian arrays
/// (`u32` heads, `u32` pages, `u64` hashes) and the pages' bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvRun<'a> {
    /// The layer.
    pub layer: u64,
    /// 0 = K, 1 = V.
    pub kind: u8,
    /// Rows of each page the payload skips (0: whole pages).
    pub offset: u64,
    /// Head indices, `u32` little-endian.
    pub heads: &'a [u8],
    /// Page indices, `u32` little-endian.
    pub pages: &'a [u8],
    /// Page hashes, `u64` little-endian.
    pub hashes: &'a [u8],
    /// The pages' (or page tails') bytes, concatenated.
    pub payload: Payload<'a>,
}

/// The bytes of a run's pages (or page tails), back to back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload<'a> {
    /// In one slice: what a decoded run holds.
    Whole(&'a [u8]),
    /// In pieces, in order, that the encoder copies straight into the frame:
    /// a sender's pages where they lie in the cache's buffers.
    Parts(Vec<&'a [u8]>),
}

impl<'a> Payload<'a> {
    /// Number of bytes.
    pub fn len(&self) -> usize {
        match self {
            Payload::Whole(b) => b.len(),
            Payload::Parts(parts) => parts.iter().map(|p| p.len()).sum(),
        }
    }

    /// Whether it holds no byte.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes of a [`Payload::Whole`] (None for parts).
    pub fn whole(&self) -> Option<&'a [u8]> {
        match self {
            Payload::Whole(b) => Some(b),
            Payload::Parts(_) => None,
        }
    }
}

impl KvRun<'_> {
    /// Number of pages.
    pub fn len(&self) -> usize {
        self.heads.len() / 4
    }

    /// Whether the run holds no page.
    pub fn is_empty(&self) -> bool {
        self.heads.is_empty()
    }
}

/// What one frame carries for one KV cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvEntry<'a> {
    /// The cache's name.
    pub name: &'a str,
    /// What the entry says.
    pub kind: KvKind,
    /// The cache's owner.
    pub owner: &'a str,
    /// The cache's incarnation.
    pub uid: u64,
    /// PAGES / HAVE: the geometry.
    pub geometry: Option<Geometry>,
    /// PAGES / HAVE: the geometry's runtime record (UTF-8, at most
    /// [`MAX_RUNTIME_BYTES`]; empty: none): what a restore must match.
    pub runtime: &'a [u8],
    /// PAGES / HAVE: the token count.
    pub tokens: u64,
    /// PAGES / HAVE: the page table's digest.
    pub digest: u64,
    /// PAGES: [`KV_COMPLETE`], [`KV_PROBE`].
    pub flags: u8,
    /// PAGES: the runs.
    pub runs: Vec<KvRun<'a>>,
    /// HAVE: the page table, `u64` little-endian `[layers, 2, heads, pages]`.
    pub table: Option<&'a [u8]>,
}

/// One frame of a link exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The sender's replica name.
    pub sender: &'a str,
    /// The sender's link epoch.
    pub epoch: u64,
    /// The frame's sequence number.
    pub seq: u64,
    /// The frame answers a request.
    pub reply: bool,
    /// The sender reopened a durable replica.
    pub resume: bool,
    /// The sender lost what the receiver told it before (document
    /// indices, metadata epoch).
    pub rename: bool,
    /// One entry per document, names distinct.
    pub entries: Vec<Entry<'a>>,
    /// The metadata block.
    pub meta: Option<MetaBlock<'a>>,
    /// One entry per KV cache, names distinct.
    pub kv: Vec<KvEntry<'a>>,
}

/// How [`encode_frame`] compresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Bodies of at least this many bytes are compressed when that makes
    /// them smaller; `None`: never.
    pub compress_threshold: Option<usize>,
    /// The zstd level.
    pub level: i32,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            compress_threshold: Some(DEFAULT_COMPRESS_THRESHOLD),
            level: DEFAULT_LEVEL,
        }
    }
}

/// The limits of [`decode_frame`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame, and largest decompressed body.
    pub max_bytes: usize,
    /// Largest KV cache (all layers, K and V) an entry may describe.
    pub max_kv_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: DEFAULT_MAX_BYTES,
            max_kv_bytes: DEFAULT_MAX_KV_BYTES,
        }
    }
}

// -- encoding ----------------------------------------------------------------

/// Where encoded bytes go: a buffer, or a counter (the KV section's length
/// precedes it, so it is measured first and then written once).
trait Sink {
    fn put(&mut self, bytes: &[u8]);
    fn byte(&mut self, b: u8);
    fn uint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.byte((value as u8) | 0x80);
            value >>= 7;
        }
        self.byte(value as u8);
    }
    fn blob(&mut self, bytes: &[u8]) {
        self.uint(bytes.len() as u64);
        self.put(bytes);
    }
    fn u64le(&mut self, value: u64) {
        self.put(&value.to_le_bytes());
    }
    /// Bytes the frame checksum leaves out: the payloads of whole KV pages,
    /// which their page hashes cover.
    fn put_unsummed(&mut self, bytes: &[u8]) {
        self.put(bytes);
    }
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
    fn byte(&mut self, b: u8) {
        self.push(b);
    }
}

struct Counter(usize);

impl Sink for Counter {
    fn put(&mut self, bytes: &[u8]) {
        self.0 = self.0.saturating_add(bytes.len());
    }
    fn byte(&mut self, _: u8) {
        self.0 = self.0.saturating_add(1);
    }
}

fn check_run(name: &str, r: &KvRun<'_>) -> Result<()> {
    let n = r.heads.len();
    if n % 4 != 0 || r.pages.len() != n || r.hashes.len() != n.saturating_mul(2) {
        return Err(Error::invalid(format!(
            "a KV run of {name:?} has {} head bytes, {} page bytes and {} hash bytes: \
             not n x 4, n x 4 and n x 8",
            r.heads.len(),
            r.pages.len(),
            r.hashes.len()
        )));
    }
    Ok(())
}

fn write_kv<S: Sink>(out: &mut S, entries: &[KvEntry<'_>]) -> Result<()> {
    out.uint(entries.len() as u64);
    for e in entries {
        out.blob(e.name.as_bytes());
        out.byte(e.kind as u8);
        out.blob(e.owner.as_bytes());
        out.u64le(e.uid);
        if e.kind == KvKind::Delete {
            continue;
        }
        let g = e
            .geometry
            .ok_or_else(|| Error::invalid(format!("KV entry {:?} needs a geometry", e.name)))?;
        check_runtime(e.name, e.runtime).map_err(Error::invalid)?;
        out.byte(if e.runtime.is_empty() {
            g.code
        } else {
            g.code | FMT_RUNTIME
        });
        for v in [g.layers, g.kv_heads, g.head_dim, g.page_tokens] {
            out.uint(v);
        }
        if !e.runtime.is_empty() {
            out.blob(e.runtime);
        }
        out.uint(e.tokens);
        out.u64le(e.digest);
        if e.kind == KvKind::Pages {
            out.byte(e.flags);
            out.uint(e.runs.len() as u64);
            for r in &e.runs {
                check_run(e.name, r)?;
                out.uint(r.layer);
                out.byte(r.kind);
                out.uint(r.offset);
                out.uint(r.len() as u64);
                out.put(r.heads);
                out.put(r.pages);
                out.put(r.hashes);
                out.uint(r.payload.len() as u64);
                let parts = match &r.payload {
                    Payload::Whole(b) => std::slice::from_ref(b),
                    Payload::Parts(parts) => parts.as_slice(),
                };
                for p in parts {
                    if r.offset == 0 {
                        out.put_unsummed(p); // whole pages: their hashes cover them
                    } else {
                        out.put(p); // tails: checked only once applied
                    }
                }
            }
        } else if let Some(table) = e.table {
            out.byte(1);
            out.put(table);
        } else {
            out.byte(0);
        }
    }
    Ok(())
}

fn write_body(out: &mut Vec<u8>, frame: &Frame<'_>) {
    if !frame.sender.is_empty() {
        out.blob(frame.sender.as_bytes());
    }
    out.uint(frame.epoch);
    out.uint(frame.seq);
    out.uint(frame.entries.len() as u64);
    for e in &frame.entries {
        let index = e.reference.unsigned_abs();
        if e.reference < 0 {
            out.uint(index << 1);
        } else {
            out.uint((index << 1) | 1);
            out.blob(e.name.as_bytes());
        }
        out.byte(e.kind as u8);
        match e.kind {
            Kind::Edits => {
                out.uint(e.ack);
                out.uint(e.local);
                out.uint(e.edits.len() as u64);
                for edit in &e.edits {
                    out.uint(edit.version);
                    out.blob(edit.raw);
                }
                out.put(&e.checksum.to_le_bytes());
            }
            Kind::Ack => {
                out.uint(e.ack);
                out.uint(e.local);
            }
            Kind::Full => {
                out.uint(e.ack);
                out.uint(e.local);
                out.blob(e.text.as_bytes());
            }
            _ => {}
        }
    }
    if let Some(m) = &frame.meta {
        out.uint(m.epoch);
        out.u64le(m.epoch_id);
        out.byte(m.kind as u8);
        if m.kind != MetaKind::None {
            out.blob(m.a);
            out.blob(m.b);
        }
    }
}

/// Encode a frame, byte for byte as the reference codec does: bodies of
/// `compress_threshold` bytes or more are zstd-compressed when that makes
/// them smaller; the KV section is never compressed.
///
/// Fails ([`Error::InvalidArgument`]) on a KV entry without geometry or with
/// index and hash arrays of mismatched lengths, or on a bad zstd level.
pub fn encode_frame(frame: &Frame<'_>, opts: &EncodeOptions) -> Result<Vec<u8>> {
    let prepared = prepare_frame(frame, opts)?;
    let mut out = vec![0u8; prepared.len()];
    prepared.write_into(&mut out)?;
    Ok(out)
}

/// A frame with its body encoded (and compressed) and its size known, to be
/// written straight into a buffer of that size: KV pages are copied once,
/// from where they lie into the frame.
#[derive(Debug)]
pub struct PreparedFrame<'f, 'a> {
    kv: &'f [KvEntry<'a>],
    flags: u8,
    kv_len: usize,
    body: Vec<u8>,
}

/// Encode what precedes the KV pages' copy: the body (compressed as
/// [`encode_frame`] does) and the KV section's size. Fails as
/// [`encode_frame`] does.
pub fn prepare_frame<'f, 'a>(
    frame: &'f Frame<'a>,
    opts: &EncodeOptions,
) -> Result<PreparedFrame<'f, 'a>> {
    let mut flags = 0u8;
    if frame.reply {
        flags |= FLAG_REPLY;
    }
    if frame.resume {
        flags |= FLAG_RESUME;
    }
    if frame.rename {
        flags |= FLAG_RENAME;
    }
    if frame.meta.is_some() {
        flags |= FLAG_META;
    }
    if !frame.sender.is_empty() {
        flags |= FLAG_SENDER;
    }
    if let Some(e) = frame
        .entries
        .iter()
        .find(|e| e.reference.unsigned_abs() > MAX_DOC_INDEX)
    {
        return Err(Error::invalid(format!(
            "document index {} of {:?} is out of range",
            e.reference, e.name
        )));
    }
    let mut kv_len = 0usize;
    if !frame.kv.is_empty() {
        flags |= FLAG_KV;
        let mut counter = Counter(0);
        write_kv(&mut counter, &frame.kv)?;
        kv_len = counter.0;
    }
    let mut body = Vec::with_capacity(64);
    write_body(&mut body, frame);
    if let Some(threshold) = opts.compress_threshold {
        if body.len() >= threshold {
            let packed = zstd::bulk::compress(&body, opts.level)
                .map_err(|e| Error::invalid(format!("zstd compression failed: {e}")))?;
            if packed.len() < body.len() {
                body = packed;
                flags |= FLAG_COMPRESSED;
            }
        }
    }
    Ok(PreparedFrame {
        kv: &frame.kv,
        flags,
        kv_len,
        body,
    })
}

/// Hands a frame's bytes to `out`, in order: small writes gathered in a
/// buffer first, parts of [`HASH_ALONG`] bytes or more (KV pages) straight
/// from where they lie, in chunks of [`CHUNK`]. The checksum streams along,
/// each chunk hashed right after `out` copied it, while in cache.
struct PartSink<F: FnMut(&[u8])> {
    out: F,
    small: Vec<u8>,
    written: usize,
    hasher: Xxh3,
}

/// Parts at least this large go to the output without a stop in the small
/// buffer (a page of a few KiB, hashed later from a frame of megabytes,
/// would have left the cache by then).
const HASH_ALONG: usize = 4 << 10;
/// Larger parts are copied and hashed in chunks of this size; the small
/// buffer is handed over once it holds this much.
const CHUNK: usize = 64 << 10;

impl<F: FnMut(&[u8])> PartSink<F> {
    fn flush(&mut self) {
        if !self.small.is_empty() {
            (self.out)(&self.small);
            self.hasher.update(&self.small);
            self.written = self.written.saturating_add(self.small.len());
            self.small.clear();
        }
    }
}

impl<F: FnMut(&[u8])> Sink for PartSink<F> {
    fn put(&mut self, bytes: &[u8]) {
        if bytes.len() < HASH_ALONG {
            self.small.extend_from_slice(bytes);
            if self.small.len() >= CHUNK {
                self.flush();
            }
            return;
        }
        self.flush();
        for chunk in bytes.chunks(CHUNK) {
            (self.out)(chunk);
            self.hasher.update(chunk);
        }
        self.written = self.written.saturating_add(bytes.len());
    }
    fn byte(&mut self, b: u8) {
        self.small.push(b);
    }
    fn put_unsummed(&mut self, bytes: &[u8]) {
        self.flush();
        for chunk in bytes.chunks(CHUNK) {
            (self.out)(chunk);
        }
        self.written = self.written.saturating_add(bytes.len());
    }
}

impl PreparedFrame<'_, '_> {
    /// The frame's size in bytes.
    pub fn len(&self) -> usize {
        let mut n = Counter(HEADER_LEN + CHECKSUM_LEN);
        if !self.kv.is_empty() {
            n.uint(self.kv_len as u64);
            n.0 = n.0.saturating_add(self.kv_len);
        }
        n.0.saturating_add(self.body.len())
    }

    /// Never: a frame holds at least its header and checksum.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Hand the frame's bytes to `out` in order: their concatenation is the
    /// frame, [`PreparedFrame::len`] bytes (KV pages come as slices of where
    /// they lie, so that `out` copies them once). Fails, after handing out
    /// bytes that must then be discarded, if the frame came out of another
    /// size (a KV section that changed since [`prepare_frame`]).
    pub fn write_parts(&self, out: impl FnMut(&[u8])) -> Result<()> {
        let mut sink = PartSink {
            out,
            small: Vec::with_capacity(256),
            written: 0,
            hasher: Xxh3::new(),
        };
        sink.byte(MARK | PROTOCOL_VERSION);
        sink.byte(self.flags);
        if !self.kv.is_empty() {
            sink.uint(self.kv_len as u64);
            write_kv(&mut sink, self.kv)?;
        }
        sink.put(&self.body);
        sink.flush();
        let checksum = sink.hasher.digest() as u32;
        (sink.out)(&checksum.to_le_bytes());
        if sink.written.saturating_add(CHECKSUM_LEN) != self.len() {
            return Err(Error::invalid(
                "the KV section changed size while the frame was written",
            ));
        }
        Ok(())
    }

    /// Write the frame into `out`, which must be [`PreparedFrame::len`] bytes.
    pub fn write_into(&self, out: &mut [u8]) -> Result<()> {
        let total = out.len();
        if total != self.len() {
            return Err(Error::invalid(format!(
                "a frame of {} bytes does not fit a buffer of {total}",
                self.len()
            )));
        }
        let mut pos = 0usize;
        let mut overflow = false;
        self.write_parts(|part| {
            let end = pos.saturating_add(part.len());
            match out.get_mut(pos..end) {
                Some(dst) if !overflow => {
                    dst.copy_from_slice(part);
                    pos = end;
                }
                _ => overflow = true,
            }
        })?;
        if overflow || pos != total {
            return Err(Error::invalid(
                "the KV section changed size while the frame was written",
            ));
        }
        Ok(())
    }
}

// -- decoding ----------------------------------------------------------------

fn u64le(r: &mut Reader<'_>) -> Result<u64> {
    let b = r.bytes(8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Ok(u64::from_le_bytes(a))
}

fn blob<'a>(r: &mut Reader<'a>) -> Result<&'a [u8]> {
    let n = r.u64()?;
    match usize::try_from(n) {
        Ok(n) if n <= r.remaining() => r.bytes(n),
        _ => Err(Error::decode(format!(
            "frame truncated: {n} bytes needed at byte {}, {} left",
            r.position(),
            r.remaining()
        ))),
    }
}

fn text<'a>(r: &mut Reader<'a>, what: &str) -> Result<&'a str> {
    let at = r.position();
    std::str::from_utf8(blob(r)?)
        .map_err(|_| Error::decode(format!("{what} at byte {at} is not valid UTF-8")))
}

/// A count of items of at least `min_size` bytes each, which must fit in
/// what is left (so allocations stay within the input's size).
fn count(r: &mut Reader<'_>, what: &str, min_size: u64) -> Result<usize> {
    let n = r.u64()?;
    let left = r.remaining();
    match (n.checked_mul(min_size), usize::try_from(n)) {
        (Some(need), Ok(n)) if need <= left as u64 => Ok(n),
        _ => Err(Error::decode(format!(
            "{what} {n} cannot fit in the {left} bytes left"
        ))),
    }
}

/// `n` bytes of `n_items` items of `size` bytes.
fn array<'a>(r: &mut Reader<'a>, n_items: usize, size: usize) -> Result<&'a [u8]> {
    let n = n_items
        .checked_mul(size)
        .ok_or_else(|| Error::decode("frame truncated: array larger than the address space"))?;
    r.bytes(n)
}

fn decompress(body: &[u8], max_bytes: usize, out: &mut Vec<u8>) -> Result<()> {
    let size = match zstd::zstd_safe::get_frame_content_size(body) {
        Ok(Some(size)) => size,
        Ok(None) => {
            return Err(Error::decode(
                "compressed frame body does not declare its size",
            ))
        }
        Err(_) => return Err(Error::decode("corrupt compressed frame body")),
    };
    let size = match usize::try_from(size) {
        Ok(s) if s <= max_bytes => s,
        _ => {
            return Err(Error::LimitExceeded(format!(
                "decompressed frame of {size} bytes would exceed the limit of {max_bytes}"
            )))
        }
    };
    let frame_len = zstd::zstd_safe::find_frame_compressed_size(body)
        .map_err(|_| Error::decode("compressed frame body is corrupt or truncated"))?;
    if frame_len != body.len() {
        return Err(Error::decode(format!(
            "{} bytes after the compressed frame body",
            body.len().saturating_sub(frame_len)
        )));
    }
    out.clear();
    out.reserve_exact(size);
    let n = zstd::bulk::Decompressor::new()
        .and_then(|mut d| d.decompress_to_buffer(body, out))
        .map_err(|e| Error::decode(format!("corrupt compressed frame body: {e}")))?;
    if n != size || out.len() != size {
        return Err(Error::decode(format!(
            "compressed frame body holds {n} bytes, declares {size}"
        )));
    }
    Ok(())
}

/// A runtime record: at most [`MAX_RUNTIME_BYTES`] of UTF-8.
fn check_runtime(name: &str, runtime: &[u8]) -> std::result::Result<(), String> {
    if runtime.len() > MAX_RUNTIME_BYTES {
        return Err(format!(
            "the runtime record of KV cache {name:?} has {} bytes, over {MAX_RUNTIME_BYTES}",
            runtime.len()
        ));
    }
    if std::str::from_utf8(runtime).is_err() {
        return Err(format!(
            "the runtime record of KV cache {name:?} is not valid UTF-8"
        ));
    }
    Ok(())
}

/// A geometry and its runtime record (empty when the format code does not
/// announce one).
fn get_geometry<'a>(r: &mut Reader<'a>, name: &str) -> Result<(Geometry, &'a [u8])> {
    let byte = r.u8()?;
    let code = byte & !FMT_RUNTIME;
    if Geometry::format_of(code).is_none() {
        return Err(Error::decode(format!(
            "unknown KV format code {byte} for {name:?}"
        )));
    }
    let g = Geometry {
        code,
        layers: r.u64()?,
        kv_heads: r.u64()?,
        head_dim: r.u64()?,
        page_tokens: r.u64()?,
    };
    g.check()
        .map_err(|e| Error::decode(format!("bad geometry for {name:?}: {e}")))?;
    let mut runtime: &[u8] = &[];
    if byte & FMT_RUNTIME != 0 {
        runtime = blob(r)?;
        if runtime.is_empty() {
            return Err(Error::decode(format!(
                "KV cache {name:?} announces an empty runtime record"
            )));
        }
        check_runtime(name, runtime).map_err(Error::decode)?;
    }
    Ok((g, runtime))
}

fn u32s(b: &[u8]) -> impl Iterator<Item = u32> + '_ {
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

fn u64s(b: &[u8]) -> impl Iterator<Item = u64> + '_ {
    b.chunks_exact(8).map(|c| {
        let mut a = [0u8; 8];
        a.copy_from_slice(c);
        u64::from_le_bytes(a)
    })
}

/// Page tails from row `offset` on: inside the geometry, each at least one
/// row, and exactly `size` bytes together.
fn check_tails(
    name: &str,
    g: &Geometry,
    tokens: u64,
    heads: &[u32],
    pages: &[u32],
    size: usize,
    offset: u64,
) -> Result<()> {
    let rb = g.row_bytes().map_err(|e| Error::decode(e.to_string()))?;
    let pages_in_use = tokens.div_ceil(g.page_tokens);
    if heads.iter().any(|&h| u64::from(h) >= g.kv_heads)
        || pages.iter().any(|&p| u64::from(p) >= pages_in_use)
    {
        return Err(Error::decode(format!(
            "a page tail of {name:?} lies outside the cache"
        )));
    }
    let mut rows_total: u128 = 0;
    for &p in pages {
        // p < pages_in_use: the page starts below `tokens`.
        let start = u64::from(p) * g.page_tokens;
        let rows = g.page_tokens.min(tokens - start);
        if rows <= offset {
            return Err(Error::decode(format!(
                "a page tail of {name:?} starts past the rows in use"
            )));
        }
        rows_total += u128::from(rows - offset);
    }
    if rows_total * u128::from(rb) != size as u128 {
        return Err(Error::decode(format!(
            "page tails of {name:?} hold {size} bytes, not {rows_total} rows"
        )));
    }
    Ok(())
}

fn decode_kv<'a>(data: &'a [u8], max_kv_bytes: u64) -> Result<Vec<KvEntry<'a>>> {
    let mut r = Reader::new(data);
    let n = count(&mut r, "KV entry count", 3)?;
    let mut out = Vec::with_capacity(n.min(RESERVE_MAX));
    let mut names: HashSet<&str> = HashSet::with_capacity(n.min(RESERVE_MAX));
    for _ in 0..n {
        let name = text(&mut r, "KV cache name")?;
        if name.is_empty() || !names.insert(name) {
            return Err(Error::decode(format!(
                "KV cache name {name:?} is empty or appears twice in one frame"
            )));
        }
        let code = r.u8()?;
        let kind = KvKind::from_u8(code)
            .ok_or_else(|| Error::decode(format!("unknown KV entry kind {code} for {name:?}")))?;
        let owner = text(&mut r, "KV cache owner")?;
        if owner.is_empty() {
            return Err(Error::decode(format!(
                "KV cache {name:?} has an empty owner"
            )));
        }
        let uid = u64le(&mut r)?;
        let mut entry = KvEntry {
            name,
            kind,
            owner,
            uid,
            geometry: None,
            runtime: &[],
            tokens: 0,
            digest: 0,
            flags: 0,
            runs: Vec::new(),
            table: None,
        };
        if kind == KvKind::Delete {
            out.push(entry);
            continue;
        }
        let (g, runtime) = get_geometry(&mut r, name)?;
        let tokens = r.u64()?;
        if tokens >= MAX_KV_TOKENS {
            return Err(Error::LimitExceeded(format!(
                "KV cache {name:?} declares {tokens} tokens"
            )));
        }
        let rb = g.row_bytes().map_err(|e| Error::decode(e.to_string()))?;
        // All factors are bounded (tokens < 2^40, the rest by the geometry
        // limits): the product fits in 128 bits.
        let total =
            u128::from(tokens) * u128::from(rb) * u128::from(g.kv_heads) * u128::from(g.layers) * 2;
        if total > u128::from(max_kv_bytes) {
            return Err(Error::LimitExceeded(format!(
                "KV cache {name:?} of {tokens} tokens would exceed the limit of \
                 {max_kv_bytes} bytes"
            )));
        }
        entry.geometry = Some(g);
        entry.runtime = runtime;
        entry.tokens = tokens;
        entry.digest = u64le(&mut r)?;
        let pages = tokens.div_ceil(g.page_tokens);
        if kind == KvKind::Have {
            let has_table = r.u8()?;
            if has_table > 1 {
                return Err(Error::decode(format!(
                    "bad table flag {has_table} for {name:?}"
                )));
            }
            if has_table == 1 {
                let need =
                    u128::from(g.layers) * 2 * u128::from(g.kv_heads) * u128::from(pages) * 8;
                match usize::try_from(need) {
                    Ok(need) if need <= r.remaining() => entry.table = Some(r.bytes(need)?),
                    _ => {
                        return Err(Error::decode(format!(
                            "frame truncated: {need} bytes of page table needed at byte {}, \
                             {} left",
                            r.position(),
                            r.remaining()
                        )))
                    }
                }
            }
            out.push(entry);
            continue;
        }
        let flags = r.u8()?;
        if flags & !(KV_COMPLETE | KV_PROBE) != 0 {
            return Err(Error::decode(format!(
                "unknown KV flags 0x{flags:02x} for {name:?}"
            )));
        }
        entry.flags = flags;
        let n_runs = count(&mut r, "KV run count", 5)?;
        let mut runs = Vec::with_capacity(n_runs.min(RESERVE_MAX));
        let mut seen: HashSet<(u64, u8, u64)> = HashSet::with_capacity(n_runs.min(RESERVE_MAX));
        let mut pages_seen: HashSet<u128> = HashSet::new();
        let layout = PageLayout {
            heads: usize::try_from(g.kv_heads).unwrap_or(usize::MAX),
            capacity: usize::try_from(tokens).unwrap_or(usize::MAX),
            row_bytes: usize::try_from(rb).unwrap_or(usize::MAX),
            page_rows: usize::try_from(g.page_tokens).unwrap_or(usize::MAX),
            rows: usize::try_from(tokens).unwrap_or(usize::MAX),
        };
        for _ in 0..n_runs {
            let layer = r.u64()?;
            let kv_kind = r.u8()?;
            let offset = r.u64()?;
            let key = (layer, kv_kind, offset);
            if layer >= g.layers || kv_kind > 1 || offset >= g.page_tokens || !seen.insert(key) {
                return Err(Error::decode(format!(
                    "bad or repeated KV run (layer {layer}, kind {kv_kind}, offset {offset})"
                )));
            }
            let n = count(&mut r, "page count", 16)?;
            let heads_raw = array(&mut r, n, 4)?;
            let pages_raw = array(&mut r, n, 4)?;
            let hashes_raw = array(&mut r, n, 8)?;
            let payload = blob(&mut r)?;
            let heads: Vec<u32> = u32s(heads_raw).collect();
            let pidx: Vec<u32> = u32s(pages_raw).collect();
            // The reference keys pages by (head << 32 | page) | (layer * 2 + kind) << 48.
            let tag = (u128::from(layer) * 2 + u128::from(kv_kind)) << 48;
            let unique: HashSet<u128> = heads
                .iter()
                .zip(&pidx)
                .map(|(&h, &p)| (u128::from(h) << 32 | u128::from(p)) | tag)
                .collect();
            if unique.len() != n || !pages_seen.is_disjoint(&unique) {
                return Err(Error::decode(format!(
                    "a page of {name:?} appears twice in one frame"
                )));
            }
            pages_seen.extend(unique);
            if offset == 0 {
                let hashes: Vec<u64> = u64s(hashes_raw).collect();
                kv::verify_pages(payload, &layout, &heads, &pidx, &hashes)?;
            } else {
                check_tails(name, &g, tokens, &heads, &pidx, payload.len(), offset)?;
            }
            runs.push(KvRun {
                layer,
                kind: kv_kind,
                offset,
                heads: heads_raw,
                pages: pages_raw,
                hashes: hashes_raw,
                payload: Payload::Whole(payload),
            });
        }
        entry.runs = runs;
        out.push(entry);
    }
    if r.remaining() != 0 {
        return Err(Error::decode(format!(
            "{} trailing bytes after the KV section",
            r.remaining()
        )));
    }
    Ok(out)
}

fn decode_body<'a>(body: &'a [u8], flags: u8, kv: Vec<KvEntry<'a>>) -> Result<Frame<'a>> {
    let mut r = Reader::new(body);
    let sender = if flags & FLAG_SENDER != 0 {
        let sender = text(&mut r, "sender")?;
        if sender.is_empty() {
            return Err(Error::decode("empty sender"));
        }
        sender
    } else {
        ""
    };
    let epoch = r.u64()?;
    let seq = r.u64()?;
    let n = count(&mut r, "entry count", 2)?;
    let mut entries = Vec::with_capacity(n.min(RESERVE_MAX));
    let mut names: HashSet<&str> = HashSet::with_capacity(n.min(RESERVE_MAX));
    let mut indices: HashSet<u64> = HashSet::new();
    for _ in 0..n {
        let at = r.position();
        let tag = r.u64()?;
        let index = tag >> 1;
        if index > MAX_DOC_INDEX {
            return Err(Error::decode(format!(
                "document index {index} at byte {at} is out of range"
            )));
        }
        if index > 0 && !indices.insert(index) {
            return Err(Error::decode(format!(
                "document index {index} appears twice in one frame"
            )));
        }
        let (name, reference) = if tag & 1 == 1 {
            let name = text(&mut r, "document name")?;
            if !names.insert(name) {
                return Err(Error::decode(format!(
                    "document {name:?} appears twice in one frame"
                )));
            }
            (name, index as i64)
        } else if index == 0 {
            return Err(Error::decode(format!(
                "entry at byte {at} has neither a name nor an index"
            )));
        } else {
            ("", -(index as i64))
        };
        let code = r.u8()?;
        let kind = Kind::from_u8(code).ok_or_else(|| {
            Error::decode(format!("unknown entry kind {code} for document {name:?}"))
        })?;
        let mut entry = Entry::bare(name, kind);
        entry.reference = reference;
        match kind {
            Kind::Edits => {
                entry.ack = r.u64()?;
                entry.local = r.u64()?;
                let n_edits = count(&mut r, "edit count", 2)?;
                let mut edits = Vec::with_capacity(n_edits.min(RESERVE_MAX));
                let mut previous: Option<u64> = None;
                for _ in 0..n_edits {
                    let version = r.u64()?;
                    if previous.is_some_and(|p| version <= p) {
                        return Err(Error::decode(format!(
                            "edit versions of {name:?} are not increasing"
                        )));
                    }
                    previous = Some(version);
                    let raw = blob(&mut r)?;
                    let patch = Change::from_bytes(raw)?;
                    edits.push(Edit {
                        version,
                        raw,
                        patch: Some(patch),
                    });
                }
                if let Some(last) = previous {
                    if last >= entry.local {
                        return Err(Error::decode(format!(
                            "edit version {last} of {name:?} is not below {}",
                            entry.local
                        )));
                    }
                }
                entry.edits = edits;
                let sum = r.bytes(4)?;
                entry.checksum = u32::from_le_bytes([sum[0], sum[1], sum[2], sum[3]]);
            }
            Kind::Ack => {
                entry.ack = r.u64()?;
                entry.local = r.u64()?;
            }
            Kind::Full => {
                entry.ack = r.u64()?;
                entry.local = r.u64()?;
                entry.text = text(&mut r, "text")?;
            }
            _ => {}
        }
        entries.push(entry);
    }
    let mut meta = None;
    if flags & FLAG_META != 0 {
        let epoch = r.u64()?;
        let epoch_id = u64le(&mut r)?;
        let code = r.u8()?;
        let kind = MetaKind::from_u8(code)
            .ok_or_else(|| Error::decode(format!("unknown metadata block kind {code}")))?;
        let (a, b) = if kind == MetaKind::None {
            (&[][..], &[][..])
        } else {
            (blob(&mut r)?, blob(&mut r)?)
        };
        meta = Some(MetaBlock {
            epoch,
            epoch_id,
            kind,
            a,
            b,
        });
    }
    if r.remaining() != 0 {
        return Err(Error::decode(format!(
            "{} trailing bytes after the frame body",
            r.remaining()
        )));
    }
    Ok(Frame {
        sender,
        epoch,
        seq,
        reply: flags & FLAG_REPLY != 0,
        resume: flags & FLAG_RESUME != 0,
        rename: flags & FLAG_RENAME != 0,
        entries,
        meta,
        kv,
    })
}

/// The frame checksum of the KV section's entries `kv` decoded from
/// `signed` (a frame less its trailer): xxh3-64 of `signed` less the payloads
/// of whole pages, low 32 bits.
fn summed(signed: &[u8], kv: &[KvEntry<'_>]) -> Result<u32> {
    let mut h = Xxh3::new();
    let mut at = 0usize;
    for p in kv
        .iter()
        .flat_map(|e| &e.runs)
        .filter(|run| run.offset == 0)
        .filter_map(|run| run.payload.whole())
    {
        let start = (p.as_ptr() as usize).wrapping_sub(signed.as_ptr() as usize);
        match signed.get(at..start) {
            Some(before) => h.update(before),
            None => return Err(Error::decode("KV payloads out of order in the frame")),
        }
        at = start.saturating_add(p.len());
    }
    match signed.get(at..) {
        Some(rest) => h.update(rest),
        None => return Err(Error::decode("a KV payload past the end of the frame")),
    }
    Ok(h.digest() as u32)
}

/// The checksum trailer a frame whose other bytes are `signed` must carry
/// (see [`decode_frame`]: the KV section, when flagged, is decoded to find
/// the payloads of whole pages the checksum leaves out; with default
/// limits). Fails as decoding the KV section fails. For tests and tools
/// that build frames by hand.
pub fn frame_checksum(signed: &[u8]) -> Result<u32> {
    let flags = match signed {
        [_, flags, ..] => *flags,
        _ => return Err(Error::decode("a frame is at least its 2-byte header")),
    };
    if flags & FLAG_KV == 0 {
        return Ok(xxh3_64(signed) as u32);
    }
    let mut r = Reader::new(signed.get(HEADER_LEN..).unwrap_or_default());
    let section = blob(&mut r)?;
    let kv = decode_kv(section, DEFAULT_MAX_KV_BYTES)?;
    summed(signed, &kv)
}

/// Decode and validate a frame, every patch and KV page hash included.
///
/// A compressed body is decompressed into `scratch` (the decoded frame
/// borrows from it); everything else is borrowed from `data`. Fails with
/// [`Error::LimitExceeded`] when the frame or its decompressed body exceed
/// `limits.max_bytes` or a KV cache exceeds `limits.max_kv_bytes`, and with
/// [`Error::Decode`] on any other defect (truncated, garbled, an unknown
/// version, kind or flag, a KV page whose hash does not match).
pub fn decode_frame<'a>(
    data: &'a [u8],
    limits: &Limits,
    scratch: &'a mut Vec<u8>,
) -> Result<Frame<'a>> {
    if data.len() > limits.max_bytes {
        return Err(Error::LimitExceeded(format!(
            "frame of {} bytes exceeds the limit of {}",
            data.len(),
            limits.max_bytes
        )));
    }
    let (head, rest) = match data.split_first_chunk::<HEADER_LEN>() {
        Some((head, rest)) if rest.len() >= CHECKSUM_LEN => (head, rest),
        _ => {
            return Err(Error::decode(format!(
                "frame of {} bytes is shorter than its header and checksum ({} bytes)",
                data.len(),
                HEADER_LEN + CHECKSUM_LEN
            )))
        }
    };
    let [mark, flags] = *head;
    if data.starts_with(V1_MAGIC) && data.len() > V1_MAGIC.len() {
        return Err(Error::decode(format!(
            "frame uses protocol version {}; this build speaks version \
             {PROTOCOL_VERSION} (upgrade the older side)",
            data[V1_MAGIC.len()]
        )));
    }
    if mark & 0xF0 != MARK {
        return Err(Error::decode(format!(
            "not a hybridsync frame (first byte 0x{mark:02x})"
        )));
    }
    let version = mark & 0x0F;
    if version != PROTOCOL_VERSION {
        return Err(Error::decode(format!(
            "frame uses protocol version {version}; this build speaks version \
             {PROTOCOL_VERSION} (upgrade the older side)"
        )));
    }
    let (body, sum) = match rest.split_last_chunk::<CHECKSUM_LEN>() {
        Some(split) => split,
        None => return Err(Error::decode("frame truncated before its checksum")),
    };
    let signed = data.get(..data.len() - CHECKSUM_LEN).unwrap_or_default();
    let mut body: &'a [u8] = body;
    let mut kv = Vec::new();
    let sum = u32::from_le_bytes(*sum);
    if flags & FLAG_KV != 0 {
        // The checksum leaves the payloads of whole pages out: decoding the
        // section checks them against their page hashes first.
        let mut r = Reader::new(body);
        let section = blob(&mut r)?;
        kv = decode_kv(section, limits.max_kv_bytes)?;
        body = body.get(r.position()..).unwrap_or_default();
        if sum != summed(signed, &kv)? {
            return Err(Error::decode(
                "frame checksum mismatch: the frame was garbled or truncated",
            ));
        }
    } else if sum != xxh3_64(signed) as u32 {
        return Err(Error::decode(
            "frame checksum mismatch: the frame was garbled or truncated",
        ));
    }
    if flags & !KNOWN_FLAGS != 0 {
        return Err(Error::decode(format!("unknown frame flags 0x{flags:02x}")));
    }
    if flags & FLAG_COMPRESSED != 0 {
        decompress(body, limits.max_bytes, scratch)?;
        let plain: &'a [u8] = scratch;
        return decode_body(plain, flags, kv);
    }
    decode_body(body, flags, kv)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;
    use crate::text::{make_delta, make_patch, DiffOptions};

    /// (version, patch bytes).
    type EditModel = (u64, Vec<u8>);
    /// (kind, ack, local, edits, checksum, text).
    type EntryModel = (Kind, u64, u64, Vec<EditModel>, u32, String);
    /// (epoch, epoch id, kind, a, b).
    type MetaModel = (u64, u64, MetaKind, Vec<u8>, Vec<u8>);
    /// (layer, K|V, offset, heads, pages, hashes, payload).
    type RunModel = (u64, u8, u64, Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>);

    /// Owned data a [`Frame`] borrows from.
    #[derive(Clone, Debug)]
    struct Model {
        sender: String,
        epoch: u64,
        seq: u64,
        reply: bool,
        resume: bool,
        rename: bool,
        entries: Vec<(String, EntryModel)>,
        /// Per entry: how it names its document (0 / bind / reference, by mode).
        refs: Vec<u8>,
        meta: Option<MetaModel>,
        kv: Vec<KvModel>,
    }

    #[derive(Clone, Debug)]
    struct KvModel {
        name: String,
        kind: KvKind,
        owner: String,
        uid: u64,
        geometry: Geometry,
        runtime: String,
        tokens: u64,
        digest: u64,
        flags: u8,
        runs: Vec<RunModel>,
        table: Option<Vec<u8>>,
    }

    impl Model {
        fn frame(&self) -> Frame<'_> {
            Frame {
                sender: &self.sender,
                epoch: self.epoch,
                seq: self.seq,
                reply: self.reply,
                resume: self.resume,
                rename: self.rename,
                entries: self
                    .entries
                    .iter()
                    .enumerate()
                    .map(|(i, (name, (kind, ack, local, edits, checksum, text)))| {
                        let mut e = Entry::bare(name, *kind);
                        let index = i as i64 + 1;
                        match self.refs.get(i).copied().unwrap_or(0) % 3 {
                            1 => e.reference = index,
                            2 => {
                                e.reference = -index;
                                e.name = "";
                            }
                            _ => {}
                        }
                        if *kind == Kind::Edits {
                            e.ack = *ack;
                            e.local = *local;
                            e.checksum = *checksum;
                            e.edits = edits
                                .iter()
                                .map(|(version, raw)| Edit {
                                    version: *version,
                                    raw,
                                    patch: Some(Change::from_bytes(raw).unwrap()),
                                })
                                .collect();
                        } else if *kind == Kind::Ack {
                            e.ack = *ack;
                            e.local = *local;
                        } else if *kind == Kind::Full {
                            e.ack = *ack;
                            e.local = *local;
                            e.text = text;
                        }
                        e
                    })
                    .collect(),
                meta: self.meta.as_ref().map(|(epoch, epoch_id, kind, a, b)| {
                    let none = *kind == MetaKind::None;
                    MetaBlock {
                        epoch: *epoch,
                        epoch_id: *epoch_id,
                        kind: *kind,
                        a: if none { &[] } else { a },
                        b: if none { &[] } else { b },
                    }
                }),
                kv: self
                    .kv
                    .iter()
                    .map(|k| {
                        let mut e = KvEntry {
                            name: &k.name,
                            kind: k.kind,
                            owner: &k.owner,
                            uid: k.uid,
                            geometry: None,
                            runtime: &[],
                            tokens: 0,
                            digest: 0,
                            flags: 0,
                            runs: Vec::new(),
                            table: None,
                        };
                        if k.kind != KvKind::Delete {
                            e.geometry = Some(k.geometry);
                            e.runtime = k.runtime.as_bytes();
                            e.tokens = k.tokens;
                            e.digest = k.digest;
                        }
                        if k.kind == KvKind::Pages {
                            e.flags = k.flags;
                            e.runs = k
                                .runs
                                .iter()
                                .map(|(layer, kind, offset, h, p, x, payload)| KvRun {
                                    layer: *layer,
                                    kind: *kind,
                                    offset: *offset,
                                    heads: h,
                                    pages: p,
                                    hashes: x,
                                    payload: Payload::Whole(payload),
                                })
                                .collect();
                        }
                        if k.kind == KvKind::Have {
                            e.table = k.table.as_deref();
                        }
                        e
                    })
                    .collect(),
            }
        }
    }

    /// A patch (even pairs) or a delta (odd pairs) turning `a` into `b`.
    fn patch_bytes(a: &str, b: &str, delta: bool) -> Vec<u8> {
        let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
        if delta {
            return make_delta(&a, &b, &DiffOptions::default()).to_bytes();
        }
        make_patch(&a, &b, &DiffOptions::default(), 4)
            .unwrap()
            .to_bytes()
    }

    const TEXT: &str = "[a-z é\u{4e2d}\u{1f600}]{0,24}";

    fn edits() -> impl Strategy<Value = (u64, u64, Vec<(u64, Vec<u8>)>)> {
        (
            prop::collection::btree_set(0u64..5000, 0..4),
            0u64..3,
            prop::collection::vec((TEXT, TEXT), 4),
            any::<u64>(),
        )
            .prop_map(|(versions, extra, texts, ack)| {
                let local = versions.iter().next_back().map_or(extra, |v| v + 1 + extra);
                let edits = versions
                    .into_iter()
                    .zip(texts)
                    .map(|(v, (a, b))| (v, patch_bytes(&a, &b, v % 2 == 1)))
                    .collect();
                (ack, local, edits)
            })
    }

    fn entry() -> impl Strategy<Value = EntryModel> {
        (1u8..=7, edits(), any::<u32>(), "\\PC{0,40}").prop_map(
            |(code, (ack, local, edits), checksum, text)| {
                let kind = Kind::from_u8(code).unwrap();
                (kind, ack, local, edits, checksum, text)
            },
        )
    }

    fn meta() -> impl Strategy<Value = Option<MetaModel>> {
        prop::option::of((
            any::<u64>(),
            any::<u64>(),
            0u8..=3,
            prop::collection::vec(any::<u8>(), 0..40),
            prop::collection::vec(any::<u8>(), 0..40),
        ))
        .prop_map(|m| {
            m.map(|(epoch, id, code, a, b)| {
                let kind = MetaKind::from_u8(code).unwrap();
                if kind == MetaKind::None {
                    (epoch, id, kind, Vec::new(), Vec::new())
                } else {
                    (epoch, id, kind, a, b)
                }
            })
        })
    }

    fn le32(v: &[u32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn le64(v: &[u64]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// A valid KV entry: pages hashed as the receiver checks them, page
    /// tails of the rows in use.
    fn kv_entry() -> impl Strategy<Value = KvModel> {
        (
            (1u8..=3, prop::sample::select(vec![1u8, 2, 3, 4, 5, 6])),
            (1u64..3, 1u64..3, 1u64..4, 0u64..12),
            (any::<u64>(), any::<u64>(), 0u8..4),
            prop::collection::vec((any::<bool>(), any::<u16>(), any::<u64>()), 0..24),
            any::<u64>(),
            "\\PC{0,24}",
        )
            .prop_map(
                |(
                    (kind, code),
                    (layers, heads, page, tokens),
                    (uid, digest, flags),
                    picks,
                    seed,
                    runtime,
                )| {
                    let group = Geometry::format_of(code).unwrap().group() as u64;
                    let geometry = Geometry {
                        code,
                        layers,
                        kv_heads: heads,
                        head_dim: group.max(2),
                        page_tokens: page,
                    };
                    let rb = geometry.row_bytes().unwrap() as usize;
                    let pages = tokens.div_ceil(page);
                    let kind = KvKind::from_u8(kind).unwrap();
                    let mut runs = Vec::new();
                    let mut table = None;
                    if kind == KvKind::Pages && pages > 0 {
                        // Group the picked pages by (layer, K|V, offset).
                        let mut by_run: BTreeMap<(u64, u8, u64), BTreeSet<(u32, u32)>> =
                            BTreeMap::new();
                        for (tail, pick, _) in &picks {
                            let pick = u64::from(*pick);
                            let layer = pick % layers;
                            let kv = (pick / 7 % 2) as u8;
                            let head = (pick / 3 % heads) as u32;
                            let p = pick / 11 % pages;
                            let rows = page.min(tokens - p * page);
                            let offset = if *tail && rows > 1 {
                                pick % (rows - 1) + 1
                            } else {
                                0
                            };
                            // Tails and whole pages of one page never meet in one frame.
                            if by_run.iter().any(|(k, v)| {
                                k.0 == layer && k.1 == kv && v.contains(&(head, p as u32))
                            }) {
                                continue;
                            }
                            by_run
                                .entry((layer, kv, offset))
                                .or_default()
                                .insert((head, p as u32));
                        }
                        let mut byte = seed;
                        for ((layer, kv, offset), set) in by_run {
                            let (mut hs, mut ps, mut xs, mut payload) =
                                (vec![], vec![], vec![], vec![]);
                            for (h, p) in set {
                                let rows = page.min(tokens - u64::from(p) * page) - offset;
                                let bytes: Vec<u8> = (0..rows as usize * rb)
                                    .map(|_| {
                                        byte =
                                            byte.wrapping_mul(6364136223846793005).wrapping_add(1);
                                        (byte >> 56) as u8
                                    })
                                    .collect();
                                hs.push(h);
                                ps.push(p);
                                xs.push(if offset == 0 {
                                    kv::page_hash(&bytes)
                                } else {
                                    byte | 1
                                });
                                payload.extend_from_slice(&bytes);
                            }
                            runs.push((
                                layer,
                                kv,
                                offset,
                                le32(&hs),
                                le32(&ps),
                                le64(&xs),
                                payload,
                            ));
                        }
                    }
                    if kind == KvKind::Have && seed % 2 == 1 {
                        let n = layers * 2 * heads * pages;
                        table = Some(le64(&(0..n).map(|i| i ^ seed).collect::<Vec<_>>()));
                    }
                    KvModel {
                        name: String::new(),
                        kind,
                        owner: format!("owner-{}", uid % 5),
                        uid,
                        geometry,
                        runtime,
                        tokens,
                        digest,
                        flags,
                        runs,
                        table,
                    }
                },
            )
    }

    fn model() -> impl Strategy<Value = Model> {
        (
            (
                "\\PC{0,12}",
                any::<u64>(),
                any::<u64>(),
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
            ),
            prop::collection::btree_map("\\PC{0,16}", entry(), 0..6),
            meta(),
            prop::collection::btree_map("[a-z]{1,8}", kv_entry(), 0..3),
            prop::collection::vec(any::<u8>(), 6),
        )
            .prop_map(
                |((sender, epoch, seq, reply, resume, rename), entries, meta, kv, refs)| Model {
                    sender,
                    epoch,
                    seq,
                    reply,
                    resume,
                    rename,
                    entries: entries.into_iter().collect(),
                    refs,
                    meta,
                    kv: kv
                        .into_iter()
                        .map(|(name, k)| KvModel { name, ..k })
                        .collect(),
                },
            )
    }

    fn decode(data: &[u8]) -> Result<()> {
        let mut scratch = Vec::new();
        decode_frame(data, &Limits::default(), &mut scratch).map(|_| ())
    }

    fn resign(data: &mut [u8]) {
        let n = data.len() - CHECKSUM_LEN;
        let sum = frame_checksum(&data[..n]).unwrap_or(xxh3_64(&data[..n]) as u32);
        data[n..].copy_from_slice(&sum.to_le_bytes());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn round_trip(m in model(), threshold in prop::option::of(0usize..300)) {
            let frame = m.frame();
            let opts = EncodeOptions { compress_threshold: threshold, level: 3 };
            let bytes = encode_frame(&frame, &opts).unwrap();
            let n = bytes.len() - CHECKSUM_LEN;
            prop_assert_eq!(&frame_checksum(&bytes[..n]).unwrap().to_le_bytes()[..], &bytes[n..]);
            let mut scratch = Vec::new();
            let back = decode_frame(&bytes, &Limits::default(), &mut scratch).unwrap();
            prop_assert_eq!(&back, &frame);
            // Decoding what was decoded re-encodes to the same bytes.
            let again = encode_frame(&back, &opts).unwrap();
            prop_assert_eq!(again, bytes);
        }

        #[test]
        fn payload_parts_encode_as_the_whole(
            m in model(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
            big in any::<bool>(),
        ) {
            // Payloads as pieces (where a sender's pages lie) encode to the
            // same bytes as the payloads whole; pages of several KiB too
            // (hashed right after their copy).
            let mut m = m;
            if big {
                for k in &mut m.kv {
                    for r in &mut k.runs {
                        let n = r.6.len();
                        r.6 = (0..(8 << 10) + n).map(|i| (i * 31 + n) as u8).collect();
                    }
                }
            }
            let whole = m.frame();
            let mut parts = whole.clone();
            for k in &mut parts.kv {
                for r in &mut k.runs {
                    let bytes = r.payload.whole().unwrap();
                    let mut at: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
                    at.push(0);
                    at.push(bytes.len());
                    at.sort_unstable();
                    r.payload = Payload::Parts(at.windows(2).map(|w| &bytes[w[0]..w[1]]).collect());
                }
            }
            let opts = EncodeOptions::default();
            prop_assert_eq!(
                encode_frame(&parts, &opts).unwrap(),
                encode_frame(&whole, &opts).unwrap()
            );
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode(&data);
        }

        #[test]
        fn signed_garbage_never_panics(flags in any::<u8>(), body in prop::collection::vec(any::<u8>(), 0..600)) {
            let mut data = b"HSYN\x01".to_vec();
            data.push(flags);
            data.extend_from_slice(&body);
            data.extend_from_slice(&[0; CHECKSUM_LEN]);
            resign(&mut data);
            let _ = decode(&data);
        }

        #[test]
        fn corrupted_frames_fail_cleanly(
            m in model(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
        ) {
            let mut data = encode_frame(&m.frame(), &EncodeOptions::default()).unwrap();
            let body = data.len() - CHECKSUM_LEN - HEADER_LEN;
            for (at, byte, op) in edits {
                if body == 0 {
                    break;
                }
                let i = HEADER_LEN + at.index(body);
                match op {
                    0 => data[i] = byte,
                    1 => data[i] ^= 1 << (byte % 8),
                    _ => data[i] = data[i].wrapping_add(1),
                }
            }
            resign(&mut data);
            let _ = decode(&data);
            // Truncations fail: the checksum no longer covers the frame.
            for cut in [0, 5, HEADER_LEN + CHECKSUM_LEN - 1, data.len() - 1] {
                let cut = cut.min(data.len() - 1);
                prop_assert!(decode(&data[..cut]).is_err());
            }
        }
    }

    fn small() -> Model {
        Model {
            sender: "alice".into(),
            epoch: 3,
            seq: 300,
            reply: true,
            resume: false,
            rename: false,
            refs: Vec::new(),
            entries: vec![(
                "notes".into(),
                (
                    Kind::Edits,
                    1,
                    2,
                    vec![(1, patch_bytes("hello", "hello world", false))],
                    0xdead_beef,
                    String::new(),
                ),
            )],
            meta: None,
            kv: Vec::new(),
        }
    }

    #[test]
    fn prepared_frames_write_into_their_size_only() {
        let mut m = small();
        m.kv.push(KvModel {
            name: "c".into(),
            kind: KvKind::Have,
            owner: "o".into(),
            uid: 1,
            geometry: Geometry {
                code: 6,
                layers: 1,
                kv_heads: 1,
                head_dim: 2,
                page_tokens: 2,
            },
            runtime: "{\"model\":\"m\"}".into(),
            tokens: 3,
            digest: 2,
            flags: 0,
            runs: Vec::new(),
            table: Some(le64(&[1, 2, 3, 4])),
        });
        let frame = m.frame();
        let opts = EncodeOptions::default();
        let whole = encode_frame(&frame, &opts).unwrap();
        let prepared = prepare_frame(&frame, &opts).unwrap();
        assert_eq!(prepared.len(), whole.len());
        let mut out = vec![0xaa; whole.len()];
        prepared.write_into(&mut out).unwrap();
        assert_eq!(out, whole);
        for n in [0, whole.len() - 1, whole.len() + 1] {
            let mut out = vec![0; n];
            assert!(matches!(
                prepared.write_into(&mut out),
                Err(Error::InvalidArgument(_))
            ));
        }
    }

    #[test]
    fn large_pages_hash_as_they_are_copied() {
        // Pages of 128 KiB (and a last one of 64 KiB): copied and hashed in chunks.
        let geometry = Geometry {
            code: 6,
            layers: 1,
            kv_heads: 1,
            head_dim: 4096,
            page_tokens: 16,
        };
        let rows = [16usize, 16, 8];
        let pages: Vec<Vec<u8>> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| (0..r * 8192).map(|j| (j * 31 + i) as u8).collect())
            .collect();
        let hashes: Vec<u64> = pages.iter().map(|p| kv::page_hash(p)).collect();
        let mut m = small();
        m.kv.push(KvModel {
            name: "big".into(),
            kind: KvKind::Pages,
            owner: "o".into(),
            uid: 3,
            geometry,
            runtime: String::new(),
            tokens: 40,
            digest: 1,
            flags: KV_COMPLETE,
            runs: vec![(
                0,
                1,
                0,
                le32(&[0, 0, 0]),
                le32(&[0, 1, 2]),
                le64(&hashes),
                pages.concat(),
            )],
            table: None,
        });
        let frame = m.frame();
        let bytes = encode_frame(&frame, &EncodeOptions::default()).unwrap();
        let n = bytes.len() - CHECKSUM_LEN;
        // The checksum sums everything but the whole pages' payload.
        let payload = pages.concat();
        let at = bytes
            .windows(payload.len())
            .position(|w| w == payload.as_slice())
            .unwrap();
        let mut summed = bytes[..at].to_vec();
        summed.extend_from_slice(&bytes[at + payload.len()..n]);
        assert_eq!(bytes[n..], (xxh3_64(&summed) as u32).to_le_bytes());
        // A page byte changed: its page hash no longer matches.
        let mut bad = bytes.clone();
        bad[at + 70_000] ^= 1;
        assert!(matches!(decode(&bad), Err(Error::Decode(m)) if m.contains("hash")));
        let mut scratch = Vec::new();
        assert_eq!(
            decode_frame(&bytes, &Limits::default(), &mut scratch).unwrap(),
            frame
        );
    }

    #[test]
    fn header_defects() {
        let bytes = encode_frame(&small().frame(), &EncodeOptions::default()).unwrap();
        assert!(decode(&bytes).is_ok());
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert!(matches!(decode(&bad), Err(Error::Decode(m)) if m.contains("not a hybridsync")));
        let mut bad = bytes.clone();
        bad[0] = MARK | 4;
        resign(&mut bad);
        assert!(matches!(decode(&bad), Err(Error::Decode(m)) if m.contains("version 4")));
        // A version 1 frame (its 4-byte magic, then the version) is named as such.
        let mut v1 = b"HSYN\x01\x04".to_vec();
        v1.extend_from_slice(&bytes[2..]);
        assert!(
            matches!(decode(&v1), Err(Error::Decode(m)) if m.contains("protocol version 1; this build speaks version 3"))
        );
        let mut bad = bytes.clone();
        bad[3] ^= 1;
        assert!(matches!(decode(&bad), Err(Error::Decode(m)) if m.contains("checksum")));
        let mut bad = bytes.clone();
        bad[1] |= 0x80;
        resign(&mut bad);
        assert!(matches!(decode(&bad), Err(Error::Decode(m)) if m.contains("flags")));
        let limits = Limits {
            max_bytes: bytes.len() - 1,
            ..Limits::default()
        };
        let mut scratch = Vec::new();
        assert!(matches!(
            decode_frame(&bytes, &limits, &mut scratch),
            Err(Error::LimitExceeded(_))
        ));
    }

    #[test]
    fn compression_and_its_limits() {
        let mut m = small();
        let text = "abc ".repeat(2000);
        m.entries
            .push(("big".into(), (Kind::Full, 0, 1, vec![], 0, text)));
        let opts = EncodeOptions::default();
        let bytes = encode_frame(&m.frame(), &opts).unwrap();
        assert_eq!(bytes[1] & FLAG_COMPRESSED, FLAG_COMPRESSED);
        assert!(bytes.len() < 1000);
        let mut scratch = Vec::new();
        let back = decode_frame(&bytes, &Limits::default(), &mut scratch).unwrap();
        assert_eq!(back, m.frame());
        // The decompressed body counts against the limit too.
        let limits = Limits {
            max_bytes: 4000,
            ..Limits::default()
        };
        let mut scratch = Vec::new();
        assert!(matches!(
            decode_frame(&bytes, &limits, &mut scratch),
            Err(Error::LimitExceeded(_))
        ));
        // Bytes after the zstd frame are refused.
        let mut extra = bytes[..bytes.len() - CHECKSUM_LEN].to_vec();
        extra.push(0);
        extra.extend_from_slice(&[0; CHECKSUM_LEN]);
        resign(&mut extra);
        assert!(matches!(decode(&extra), Err(Error::Decode(m)) if m.contains("after")));
        // Never compressed without a threshold; not when it would not shrink.
        let plain = EncodeOptions {
            compress_threshold: None,
            level: 3,
        };
        assert_eq!(
            encode_frame(&m.frame(), &plain).unwrap()[1] & FLAG_COMPRESSED,
            0
        );
        let tiny = EncodeOptions {
            compress_threshold: Some(0),
            level: 3,
        };
        assert_eq!(
            encode_frame(&small().frame(), &tiny).unwrap()[1] & FLAG_COMPRESSED,
            0
        );
    }

    #[test]
    fn document_indices_out_of_range_are_refused() {
        let mut m = small();
        m.refs = vec![1];
        let mut frame = m.frame();
        frame.entries[0].reference = i64::MIN;
        assert!(matches!(
            encode_frame(&frame, &EncodeOptions::default()),
            Err(Error::InvalidArgument(_))
        ));
        // On the wire: a tag of 0, an index above the range, one index twice.
        for body in [
            &[0x01, 0x00][..],
            &[
                0x01, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
        ] {
            let mut data = vec![MARK | PROTOCOL_VERSION, 0, 0, 0];
            data.extend_from_slice(body);
            data.extend_from_slice(&[0; CHECKSUM_LEN]);
            resign(&mut data);
            assert!(matches!(decode(&data), Err(Error::Decode(_))), "{body:?}");
        }
        let mut data = vec![
            MARK | PROTOCOL_VERSION,
            0,
            0,
            0,
            0x02,
            0x02,
            0x03,
            0x02,
            0x03,
        ];
        data.extend_from_slice(&[0; CHECKSUM_LEN]);
        resign(&mut data);
        assert!(matches!(decode(&data), Err(Error::Decode(m)) if m.contains("twice")));
    }

    #[test]
    fn body_defects() {
        let mut m = small();
        // Edit versions must increase and stay below `local`.
        m.entries[0].1 .3.push((1, patch_bytes("a", "b", false)));
        let bytes = encode_frame(&m.frame(), &EncodeOptions::default()).unwrap();
        assert!(matches!(decode(&bytes), Err(Error::Decode(m)) if m.contains("increasing")));
        let mut m = small();
        m.entries[0].1 .2 = 1;
        let bytes = encode_frame(&m.frame(), &EncodeOptions::default()).unwrap();
        assert!(matches!(decode(&bytes), Err(Error::Decode(m)) if m.contains("not below")));
        // Duplicate names.
        let mut m = small();
        m.entries.push(m.entries[0].clone());
        let bytes = encode_frame(&m.frame(), &EncodeOptions::default()).unwrap();
        assert!(matches!(decode(&bytes), Err(Error::Decode(m)) if m.contains("twice")));
        // A count that cannot fit allocates nothing.
        let mut data = vec![MARK | PROTOCOL_VERSION, 0, 0, 0];
        data.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        data.extend_from_slice(&[0; CHECKSUM_LEN]);
        resign(&mut data);
        assert!(matches!(decode(&data), Err(Error::Decode(m)) if m.contains("cannot fit")));
    }

    #[test]
    fn kv_defects() {
        let heads = 2u64;
        let geometry = Geometry {
            code: 6,
            layers: 1,
            kv_heads: heads,
            head_dim: 2,
            page_tokens: 2,
        };
        let page: Vec<u8> = (0..8).collect();
        let mut k = KvModel {
            name: "cache".into(),
            kind: KvKind::Pages,
            owner: "alice".into(),
            uid: 7,
            geometry,
            runtime: String::new(),
            tokens: 3,
            digest: 9,
            flags: KV_COMPLETE,
            runs: vec![(
                0,
                0,
                0,
                le32(&[1]),
                le32(&[0]),
                le64(&[kv::page_hash(&page)]),
                page,
            )],
            table: None,
        };
        let mut m = small();
        m.kv.push(k.clone());
        let ok = encode_frame(&m.frame(), &EncodeOptions::default()).unwrap();
        assert!(decode(&ok).is_ok());
        // A page whose hash does not match.
        k.runs[0].5 = le64(&[1]);
        m.kv = vec![k.clone()];
        let bytes = encode_frame(&m.frame(), &EncodeOptions::default()).unwrap();
        assert!(matches!(decode(&bytes), Err(Error::Decode(m)) if m.contains("hashes to")));
        // Over the KV limit.
        let limits = Limits {
            max_kv_bytes: 3 * 4 * 2 * 2 - 1,
            ..Limits::default()
        };
        let mut scratch = Vec::new();
        assert!(matches!(
            decode_frame(&ok, &limits, &mut scratch),
            Err(Error::LimitExceeded(_))
        ));
        // Too many tokens.
        k.tokens = MAX_KV_TOKENS;
        m.kv = vec![k.clone()];
        let bytes = encode_frame(&m.frame(), &EncodeOptions::default()).unwrap();
        assert!(matches!(decode(&bytes), Err(Error::LimitExceeded(_))));
        // A bad geometry.
        k.tokens = 3;
        k.geometry.head_dim = 0;
        m.kv = vec![k.clone()];
        let bytes = encode_frame(&m.frame(), &EncodeOptions::default()).unwrap();
        assert!(matches!(decode(&bytes), Err(Error::Decode(m)) if m.contains("geometry")));
        // A tail past the rows in use (page 1 holds one row).
        k.geometry.head_dim = 2;
        k.runs = vec![(0, 0, 1, le32(&[0]), le32(&[1]), le64(&[5]), vec![0; 4])];
        m.kv = vec![k.clone()];
        let bytes = encode_frame(&m.frame(), &EncodeOptions::default()).unwrap();
        assert!(matches!(decode(&bytes), Err(Error::Decode(m)) if m.contains("past the rows")));
        // The encoder refuses mismatched arrays and a missing geometry.
        k.runs = vec![(0, 0, 0, le32(&[0, 1]), le32(&[0]), le64(&[5]), vec![])];
        m.kv = vec![k.clone()];
        assert!(matches!(
            encode_frame(&m.frame(), &EncodeOptions::default()),
            Err(Error::InvalidArgument(_))
        ));
        let mut f = small();
        f.kv = vec![k];
        let mut frame = f.frame();
        frame.kv[0].geometry = None;
        assert!(matches!(
            encode_frame(&frame, &EncodeOptions::default()),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn runtime_records_travel_with_the_geometry_and_are_bounded() {
        let geometry = Geometry {
            code: 2,
            layers: 1,
            kv_heads: 1,
            head_dim: 32,
            page_tokens: 4,
        };
        let entry = |runtime: String| KvModel {
            name: "c".into(),
            kind: KvKind::Have,
            owner: "o".into(),
            uid: 1,
            geometry,
            runtime,
            tokens: 0,
            digest: 0,
            flags: 0,
            runs: Vec::new(),
            table: None,
        };
        let opts = EncodeOptions {
            compress_threshold: None,
            ..EncodeOptions::default()
        };
        for runtime in [String::new(), "{\"kv\":\"q8_0\"}".into(), "é".repeat(2048)] {
            let mut m = small();
            m.kv = vec![entry(runtime.clone())];
            let bytes = encode_frame(&m.frame(), &opts).unwrap();
            let mut scratch = Vec::new();
            let back = decode_frame(&bytes, &Limits::default(), &mut scratch).unwrap();
            assert_eq!(back.kv[0].runtime, runtime.as_bytes());
            assert_eq!(back.kv[0].geometry, Some(geometry));
        }
        // Over the bound: the encoder refuses it.
        let mut m = small();
        m.kv = vec![entry("a".repeat(MAX_RUNTIME_BYTES + 1))];
        assert!(matches!(
            encode_frame(&m.frame(), &opts),
            Err(Error::InvalidArgument(msg)) if msg.contains("runtime record")
        ));
        // Not UTF-8 on the wire: the decoder refuses it.
        m.kv = vec![entry("\u{1}\u{2}\u{3}\u{4}\u{5}\u{6}".into())];
        let mut bytes = encode_frame(&m.frame(), &opts).unwrap();
        let at = bytes
            .windows(6)
            .position(|w| w == [1, 2, 3, 4, 5, 6])
            .unwrap();
        bytes[at] = 0xff;
        resign(&mut bytes);
        assert!(matches!(
            decode(&bytes),
            Err(Error::Decode(msg)) if msg.contains("not valid UTF-8")
        ));
    }
}
