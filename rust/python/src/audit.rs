//! Bindings of the audit log's kernels (`hybridsync_core::audit`).
//!
//! Hashes cross as 32-byte `bytes`; content to hash may be any C-contiguous
//! buffer (bytes, numpy arrays, memoryviews), read in place. Hashing inputs
//! of 256 KiB or more and verifying chains that long run without the GIL.

use std::collections::HashMap;

use hybridsync_core::audit::incremental::{common_prefix, TreeCache};
use hybridsync_core::audit::{self, Entry, Hash, HASH_LEN};
use pyo3::buffer::PyUntypedBuffer;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::{invalid, CoreError};

/// Inputs at least this large are hashed without the GIL (below it, giving
/// the GIL up and taking it back costs more than the hashing: BLAKE3 runs at
/// several GB/s).
const HASH_DETACH_THRESHOLD: usize = 1 << 18;

fn maybe_detach<T: Send>(py: Python<'_>, size: usize, f: impl FnOnce() -> T + Send) -> T {
    if size >= HASH_DETACH_THRESHOLD {
        py.detach(f)
    } else {
        f()
    }
}

fn bytes_of<'a>(buf: &'a PyUntypedBuffer, what: &str) -> PyResult<&'a [u8]> {
    if !buf.is_c_contiguous() {
        return Err(invalid(format!("{what} must be a C-contiguous buffer")));
    }
    let len = buf.len_bytes();
    if len == 0 {
        return Ok(&[]);
    }
    // SAFETY: the exporter guarantees `len_bytes` readable bytes at `buf_ptr`
    // while the buffer is held; the slice does not outlive `buf`.
    Ok(unsafe { std::slice::from_raw_parts(buf.buf_ptr() as *const u8, len) })
}

fn hash_arg(h: &[u8], what: &str) -> PyResult<Hash> {
    <Hash>::try_from(h).map_err(|_| invalid(format!("{what} must be {HASH_LEN} bytes")))
}

/// BLAKE3 of a buffer.
#[pyfunction]
pub fn audit_hash<'py>(py: Python<'py>, data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    let buf = PyUntypedBuffer::get(data)?;
    let b = bytes_of(&buf, "data")?;
    let h = maybe_detach(py, b.len(), || audit::content_hash(b));
    Ok(PyBytes::new(py, &h))
}

/// BLAKE3 of the concatenation of buffers. With `rows=(first, tokens)`, a
/// KV change: the first part is hashed whole, every other part is one
/// layer's K or V rows, a `uint8 [heads, >= tokens, row_bytes]` view whose
/// heads' rows are contiguous (as `KVCache.quantized` returns), of which rows
/// `first..tokens` of every head are hashed, head by head (read in place).
#[pyfunction]
#[pyo3(signature = (parts, *, rows=None))]
pub fn audit_hash_parts<'py>(
    py: Python<'py>,
    parts: Vec<Bound<'py, PyAny>>,
    rows: Option<(usize, usize)>,
) -> PyResult<Bound<'py, PyBytes>> {
    let bufs = parts
        .iter()
        .map(PyUntypedBuffer::get)
        .collect::<PyResult<Vec<_>>>()?;
    let mut slices = Vec::with_capacity(bufs.len());
    match rows {
        None => {
            for b in &bufs {
                slices.push(bytes_of(b, "part")?);
            }
        }
        Some((first, tokens)) => {
            for (i, b) in bufs.iter().enumerate() {
                if i == 0 {
                    slices.push(bytes_of(b, "part")?);
                } else {
                    slices.extend(head_rows(b, first, tokens)?);
                }
            }
        }
    }
    let size = slices.iter().map(|s| s.len()).sum();
    let h = maybe_detach(py, size, || {
        audit::content_hash_parts(slices.iter().copied())
    });
    Ok(PyBytes::new(py, &h))
}

/// The rows `first..tokens` of every head of one layer's K or V view:
/// `uint8 [heads, >= tokens, row_bytes]`, each head's rows contiguous.
fn head_rows(buf: &PyUntypedBuffer, first: usize, tokens: usize) -> PyResult<Vec<&[u8]>> {
    let bad =
        || invalid("KV rows must be uint8 views [heads, tokens, row_bytes] with contiguous rows");
    if buf.item_size() != 1 || buf.dimensions() != 3 || buf.suboffsets().is_some() {
        return Err(bad());
    }
    let (shape, strides) = (buf.shape(), buf.strides());
    let (heads, rows, row_bytes) = (shape[0], shape[1], shape[2]);
    let row_stride = isize::try_from(row_bytes).map_err(|_| bad())?;
    if (row_bytes > 1 && strides[2] != 1) || (rows > 1 && strides[1] != row_stride) {
        return Err(bad());
    }
    if first > tokens || tokens > rows {
        return Err(invalid(format!(
            "rows {first}..{tokens} of a view of {rows} tokens"
        )));
    }
    let n = (tokens - first) * row_bytes;
    let mut out = Vec::with_capacity(heads);
    for h in 0..heads {
        if n == 0 {
            out.push(&[][..]);
            continue;
        }
        let ptr = buf.get_ptr(&[h, first, 0]) as *const u8;
        // SAFETY: `get_ptr` is the address of row `first` of head `h` inside
        // the exporter's memory; the strides checked above make the `n` bytes
        // from it rows `first..tokens` of that head (within the view's shape),
        // readable while `buf` is held; the slice does not outlive `buf`.
        out.push(unsafe { std::slice::from_raw_parts(ptr, n) });
    }
    Ok(out)
}

/// Encode an entry: returns its body and its hash.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn audit_entry<'py>(
    py: Python<'py>,
    seq: u64,
    time_ns: u64,
    channel: u8,
    kind: u8,
    origin: u8,
    subject: String,
    writer: String,
    via: String,
    writer_seq: u64,
    content: &[u8],
    prev: &[u8],
) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
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
        content: hash_arg(content, "content")?,
        prev: hash_arg(prev, "prev")?,
    };
    let body = audit::encode_entry(&e).map_err(CoreError)?;
    let h = audit::entry_hash(&body);
    Ok((PyBytes::new(py, &body), PyBytes::new(py, &h)))
}

/// An entry body's fields: (seq, time_ns, channel, kind, origin, subject,
/// writer, via, writer_seq, content, prev).
#[pyfunction]
#[allow(clippy::type_complexity)]
pub fn audit_decode_entry<'py>(
    py: Python<'py>,
    body: &[u8],
) -> PyResult<(
    u64,
    u64,
    u8,
    u8,
    u8,
    String,
    String,
    String,
    u64,
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
)> {
    let e = audit::decode_entry(body).map_err(CoreError)?;
    Ok((
        e.seq,
        e.time_ns,
        e.channel,
        e.kind,
        e.origin,
        e.subject,
        e.writer,
        e.via,
        e.writer_seq,
        PyBytes::new(py, &e.content),
        PyBytes::new(py, &e.prev),
    ))
}

/// The hash of an entry body.
#[pyfunction]
pub fn audit_entry_hash<'py>(py: Python<'py>, body: &[u8]) -> Bound<'py, PyBytes> {
    PyBytes::new(py, &audit::entry_hash(body))
}

/// Verify a run of length-prefixed entry bodies: (entries that verified,
/// hash of the last good one, why the next failed or None).
#[pyfunction]
pub fn audit_verify_chain<'py>(
    py: Python<'py>,
    buf: &[u8],
    first_seq: u64,
    prev: &[u8],
) -> PyResult<(usize, Bound<'py, PyBytes>, Option<String>)> {
    let prev = hash_arg(prev, "prev")?;
    let v = maybe_detach(py, buf.len(), || audit::verify_chain(buf, first_seq, &prev));
    Ok((v.good, PyBytes::new(py, &v.head), v.error))
}

/// The bytes a replica signs for its log head.
#[pyfunction]
pub fn audit_head_message<'py>(
    py: Python<'py>,
    replica: &str,
    seq: u64,
    head: &[u8],
    time_ns: u64,
) -> PyResult<Bound<'py, PyBytes>> {
    let head = hash_arg(head, "head")?;
    let msg = audit::head_message(replica, seq, &head, time_ns).map_err(CoreError)?;
    Ok(PyBytes::new(py, &msg))
}

/// One pending entry: (seq, time_ns, channel, kind, origin, subject, writer,
/// via, writer_seq, content), `content` a text (hashed here) or a 32-byte
/// content hash; `writer` None: the writer of a claim in `claims` for this
/// content, else `via`.
type Pending<'py> = (
    u64,
    u64,
    u8,
    u8,
    u8,
    String,
    Option<String>,
    String,
    u64,
    Bound<'py, PyAny>,
);

const CHANNEL_NAMES: [&str; 3] = ["text", "meta", "kv"];

/// Encode and chain a batch of entries after `prev`: returns the records
/// (each body behind its varint length, as segment files hold them), the
/// entries' hashes and their content hashes (32 bytes per entry each,
/// concatenated: one object each, however many entries). `claims` maps
/// (channel name, subject, content hash) to the replica that claimed that
/// write.
#[pyfunction]
#[allow(clippy::type_complexity)]
#[pyo3(signature = (entries, prev, claims, texts = None))]
pub fn audit_append<'py>(
    py: Python<'py>,
    entries: Vec<Pending<'py>>,
    prev: &[u8],
    claims: &Bound<'py, pyo3::types::PyDict>,
    texts: Option<&Bound<'py, TextHashes>>,
) -> PyResult<(
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
)> {
    let mut head = hash_arg(prev, "prev")?;
    let mut records = Vec::with_capacity(entries.len() * 160);
    let mut hashes = Vec::with_capacity(entries.len() * HASH_LEN);
    let mut contents = Vec::with_capacity(entries.len() * HASH_LEN);
    for (seq, time_ns, channel, kind, origin, subject, writer, via, writer_seq, content) in entries
    {
        let content: Hash = if let Ok(text) = content.cast::<PyString>() {
            match texts {
                Some(t) if channel == 0 => {
                    busy(t.try_borrow_mut())?.hash_text(py, &subject, text)?
                }
                _ => text_hash(py, text)?,
            }
        } else {
            let b = content
                .cast::<PyBytes>()
                .map_err(|_| invalid("an entry's content is a str (hashed) or a 32-byte hash"))?;
            if let (Some(t), 0) = (texts, channel) {
                busy(t.try_borrow_mut())?.forget(&subject);
            }
            hash_arg(b.as_bytes(), "content")?
        };
        let writer = match writer {
            Some(w) => w,
            None => {
                let name = CHANNEL_NAMES
                    .get(usize::from(channel))
                    .ok_or_else(|| invalid(format!("unknown channel {channel}")))?;
                let key = (*name, subject.as_str(), PyBytes::new(py, &content));
                match claims.get_item(key)? {
                    Some(w) => w.extract::<String>()?,
                    None => via.clone(),
                }
            }
        };
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
            prev: head,
        };
        let body = audit::encode_entry(&e).map_err(CoreError)?;
        head = audit::entry_hash(&body);
        hybridsync_core::varint::write_u64(&mut records, body.len() as u64);
        records.extend_from_slice(&body);
        hashes.extend_from_slice(&head);
        contents.extend_from_slice(&content);
    }
    Ok((
        PyBytes::new(py, &records),
        PyBytes::new(py, &hashes),
        PyBytes::new(py, &contents),
    ))
}

/// A TextHashes in use elsewhere (another thread, while hashing without the
/// GIL) is an error, not a panic.
fn busy<T>(r: Result<T, pyo3::pycell::PyBorrowMutError>) -> PyResult<T> {
    r.map_err(|_| invalid("this TextHashes is in use by another thread"))
}

/// BLAKE3 of a str's UTF-8.
fn text_hash(py: Python<'_>, text: &Bound<'_, PyString>) -> PyResult<Hash> {
    if is_ascii(text) {
        // An ASCII str holds its UTF-8 in place: read, not copied.
        let s = text.to_str()?.as_bytes();
        Ok(maybe_detach(py, s.len(), || audit::content_hash(s)))
    } else {
        // A temporary UTF-8 copy: `to_str` would cache one inside every
        // non-ASCII text hashed, for as long as the text lives.
        let utf8 = text.encode_utf8()?;
        let s = utf8.as_bytes();
        Ok(maybe_detach(py, s.len(), || audit::content_hash(s)))
    }
}

fn is_ascii(text: &Bound<'_, PyString>) -> bool {
    // SAFETY: `text` is a live str; PyUnicode_IS_ASCII only reads its header.
    unsafe { pyo3::ffi::PyUnicode_IS_ASCII(text.as_ptr()) != 0 }
}

/// A document's previous version and the chaining values of its runs.
struct Doc {
    prev: Py<PyString>,
    len: usize,
    cache: TreeCache,
    used: u64,
}

/// Content hashes of successive versions of documents: BLAKE3 of each
/// version's UTF-8, a document of at least `min_len` bytes of ASCII
/// rehashing only what follows the part a version shares with the one hashed
/// before (`hybridsync_core::audit::incremental`); shorter or non-ASCII texts
/// are hashed whole. Keeps, for documents of at most `max_bytes` bytes in
/// all (the least recently hashed go first), a reference to the previous
/// version and the chaining values of its 16 KiB runs (about 0.4% of it).
#[pyclass(module = "hybridsync._core")]
pub struct TextHashes {
    docs: HashMap<String, Doc>,
    bytes: usize,
    min_len: usize,
    max_bytes: usize,
    tick: u64,
}

impl TextHashes {
    fn hash_text(
        &mut self,
        py: Python<'_>,
        name: &str,
        text: &Bound<'_, PyString>,
    ) -> PyResult<Hash> {
        if !is_ascii(text) || text.to_str()?.len() < self.min_len {
            self.forget(name);
            return text_hash(py, text);
        }
        let new = text.to_str()?.as_bytes();
        let (common, mut cache) = match self.docs.remove(name) {
            Some(doc) => {
                self.bytes -= doc.len;
                let prev = doc.prev.bind(py).to_str()?.as_bytes();
                (common_prefix(prev, new), doc.cache)
            }
            None => (0, TreeCache::new()),
        };
        let h = maybe_detach(py, new.len() - common.min(new.len()), || {
            cache.hash(common, new)
        });
        self.tick += 1;
        self.bytes += new.len();
        self.docs.insert(
            name.to_owned(),
            Doc {
                prev: text.clone().unbind(),
                len: new.len(),
                cache,
                used: self.tick,
            },
        );
        while self.bytes > self.max_bytes {
            let Some(oldest) = self
                .docs
                .iter()
                .min_by_key(|(_, d)| d.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.forget(&oldest);
        }
        Ok(h)
    }

    fn forget(&mut self, name: &str) {
        if let Some(doc) = self.docs.remove(name) {
            self.bytes -= doc.len;
        }
    }
}

#[pymethods]
impl TextHashes {
    #[new]
    #[pyo3(signature = (min_len = 65536, max_bytes = 67108864))]
    fn new(min_len: usize, max_bytes: usize) -> Self {
        Self {
            docs: HashMap::new(),
            bytes: 0,
            min_len,
            max_bytes,
            tick: 0,
        }
    }

    /// BLAKE3 of the UTF-8 of `text`, the new version of document `name`.
    #[pyo3(name = "hash")]
    fn py_hash<'py>(
        &mut self,
        py: Python<'py>,
        name: &str,
        text: &Bound<'py, PyString>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let h = self.hash_text(py, name, text)?;
        Ok(PyBytes::new(py, &h))
    }

    /// Drop what is kept of document `name` (deleted).
    #[pyo3(name = "forget")]
    fn py_forget(&mut self, name: &str) {
        self.forget(name);
    }

    /// Bytes of the documents whose previous version is kept.
    #[getter]
    fn kept_bytes(&self) -> usize {
        self.bytes
    }

    /// How many documents have their previous version kept.
    fn __len__(&self) -> usize {
        self.docs.len()
    }
}
