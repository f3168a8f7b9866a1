//! Bindings of the frame codec (`hybridsync_core::frame`).
//!
//! The Python frame module keeps its dataclasses; these functions move their
//! fields across in the cheapest form: entries and the metadata block are
//! read by attribute, KV entries arrive as tuples of buffers (numpy arrays
//! are read in place), and decoding returns plain tuples, with patches
//! already parsed into `Patch` objects and KV arrays and payloads as byte
//! offsets into the frame (so the caller slices them without a copy).
//! :func:`decode_frame_as` builds the caller's frame dataclasses directly
//! (with ``kv_types``, the KV entries, runs and geometries too).
//! Frames of 4 KiB or more are encoded and decoded without the GIL.

use hybridsync_core::frame::{
    self, Change, EncodeOptions, Entry, Frame, Geometry, Kind, KvEntry, KvKind, KvRun, Limits,
    MetaBlock, MetaKind, Payload,
};
use hybridsync_core::Error;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{
    PyByteArray, PyBytes, PyDict, PyList, PyMemoryView, PySlice, PyString, PyTuple, PyType,
};
use pyo3::{intern, IntoPyObjectExt};

use crate::buf::Buf;
use crate::kv::PageGather;
use crate::{invalid, maybe_detach, CoreError, Delta, Patch, DETACH_THRESHOLD};

/// A decoded edit's change as a Python object: a ``Delta`` or a ``Patch``.
fn change_obj(py: Python<'_>, change: Option<Change>) -> PyResult<Bound<'_, PyAny>> {
    Ok(match change {
        Some(Change::Delta(d)) => Py::new(py, Delta(d))?.into_bound(py).into_any(),
        Some(Change::Patch(p)) => Py::new(py, Patch(p))?.into_bound(py).into_any(),
        None => Py::new(py, Patch(Default::default()))?
            .into_bound(py)
            .into_any(),
    })
}

/// Bytes from Python: a `bytes` object (read in place), or any other
/// C-contiguous buffer (bytearray, memoryview, numpy array).
enum Blob<'py> {
    Bytes(Bound<'py, PyBytes>),
    Buffer(Buf<'py>),
}

impl<'py> Blob<'py> {
    fn new(obj: Bound<'py, PyAny>) -> PyResult<Self> {
        match obj.cast_into::<PyBytes>() {
            Ok(b) => Ok(Blob::Bytes(b)),
            Err(e) => Ok(Blob::Buffer(Buf::get(&e.into_inner(), "bytes")?)),
        }
    }

    fn as_bytes(&self) -> PyResult<&[u8]> {
        match self {
            Blob::Bytes(b) => Ok(b.as_bytes()),
            Blob::Buffer(b) => Ok(b.bytes()),
        }
    }
}

fn opt_bytes<'a>(b: &'a Option<Blob<'_>>) -> PyResult<&'a [u8]> {
    b.as_ref().map_or(Ok(&[][..]), |b| b.as_bytes())
}

fn kind<T: TryFrom<u8, Error = Error>>(v: u8) -> PyResult<T> {
    T::try_from(v).map_err(|e| CoreError(e).into())
}

/// The Python objects one entry borrows from.
struct EntryObj<'py> {
    name: Bound<'py, PyString>,
    reference: i64,
    kind: Kind,
    ack: u64,
    local: u64,
    edits: Vec<(u64, Blob<'py>)>,
    checksum: u32,
    text: Option<Bound<'py, PyString>>,
}

struct MetaObj<'py> {
    epoch: u64,
    epoch_id: u64,
    kind: MetaKind,
    a: Option<Blob<'py>>,
    b: Option<Blob<'py>>,
}

struct RunObj<'py> {
    layer: u64,
    kind: u8,
    offset: u64,
    heads: Buf<'py>,
    pages: Buf<'py>,
    hashes: Buf<'py>,
    payload: RunPayload<'py>,
}

/// A run's payload as the sender handed it: a buffer, or the planned pages
/// where they lie (a `PageGather`: copied straight into the frame).
enum RunPayload<'py> {
    Whole(Buf<'py>),
    Gather(Buf<'py>, Vec<std::ops::Range<usize>>),
}

impl<'py> RunPayload<'py> {
    fn get(obj: &Bound<'py, PyAny>) -> PyResult<Self> {
        match obj.cast::<PageGather>() {
            Ok(g) => {
                let (buf, ranges) = g.get().source(obj.py())?;
                Ok(RunPayload::Gather(buf, ranges.to_vec()))
            }
            Err(_) => Ok(RunPayload::Whole(Buf::get(obj, "payload")?)),
        }
    }

    fn payload(&self) -> PyResult<Payload<'_>> {
        match self {
            RunPayload::Whole(b) => Ok(Payload::Whole(b.bytes())),
            RunPayload::Gather(b, ranges) => {
                let src = b.bytes();
                ranges
                    .iter()
                    .map(|r| {
                        src.get(r.clone())
                            .ok_or_else(|| invalid("a planned page lies outside its tensor"))
                    })
                    .collect::<PyResult<Vec<_>>>()
                    .map(Payload::Parts)
            }
        }
    }
}

/// The payload of a decoded run (always whole).
fn whole<'a>(p: &Payload<'a>) -> PyResult<&'a [u8]> {
    p.whole()
        .ok_or_else(|| invalid("a decoded KV run holds its payload in pieces"))
}

struct KvObj<'py> {
    name: Bound<'py, PyString>,
    kind: KvKind,
    owner: Bound<'py, PyString>,
    uid: u64,
    geometry: Option<Geometry>,
    runtime: Option<Bound<'py, PyString>>,
    tokens: u64,
    digest: u64,
    flags: u8,
    runs: Vec<RunObj<'py>>,
    table: Option<Buf<'py>>,
}

type GeometryTuple<'py> = (u8, u64, u64, u64, u64, Bound<'py, PyString>);
type RunTuple<'py> = (
    u64,
    u8,
    u64,
    Bound<'py, PyAny>,
    Bound<'py, PyAny>,
    Bound<'py, PyAny>,
    Bound<'py, PyAny>,
);
type KvTuple<'py> = (
    Bound<'py, PyString>,
    u8,
    Bound<'py, PyString>,
    u64,
    Option<GeometryTuple<'py>>,
    u64,
    u64,
    u8,
    Vec<RunTuple<'py>>,
    Option<Bound<'py, PyAny>>,
);

fn entry_obj<'py>(e: &Bound<'py, PyAny>) -> PyResult<EntryObj<'py>> {
    let py = e.py();
    let name = e.getattr(intern!(py, "name"))?.cast_into::<PyString>()?;
    let kind: Kind = kind(e.getattr(intern!(py, "kind"))?.extract()?)?;
    let reference: i64 = e.getattr(intern!(py, "ref"))?.extract()?;
    if reference.unsigned_abs() > frame::MAX_DOC_INDEX {
        return Err(invalid(format!(
            "document index {reference} is out of range"
        )));
    }
    let mut obj = EntryObj {
        name,
        reference,
        kind,
        ack: 0,
        local: 0,
        edits: Vec::new(),
        checksum: 0,
        text: None,
    };
    if matches!(kind, Kind::Edits | Kind::Full | Kind::Ack) {
        obj.ack = e.getattr(intern!(py, "ack"))?.extract()?;
        obj.local = e.getattr(intern!(py, "local"))?.extract()?;
    }
    if kind == Kind::Edits {
        for edit in e.getattr(intern!(py, "edits"))?.try_iter()? {
            let edit = edit?;
            let version: u64 = edit.getattr(intern!(py, "version"))?.extract()?;
            let raw = Blob::new(edit.getattr(intern!(py, "raw"))?)?;
            obj.edits.push((version, raw));
        }
        obj.checksum = e.getattr(intern!(py, "checksum"))?.extract()?;
    } else if kind == Kind::Full {
        obj.text = Some(e.getattr(intern!(py, "text"))?.cast_into::<PyString>()?);
    }
    Ok(obj)
}

fn meta_obj<'py>(m: &Bound<'py, PyAny>) -> PyResult<MetaObj<'py>> {
    let py = m.py();
    let kind: MetaKind = kind(m.getattr(intern!(py, "kind"))?.extract()?)?;
    let (a, b) = if kind == MetaKind::None {
        (None, None)
    } else {
        (
            Some(Blob::new(m.getattr(intern!(py, "a"))?)?),
            Some(Blob::new(m.getattr(intern!(py, "b"))?)?),
        )
    };
    Ok(MetaObj {
        epoch: m.getattr(intern!(py, "epoch"))?.extract()?,
        epoch_id: m.getattr(intern!(py, "epoch_id"))?.extract()?,
        kind,
        a,
        b,
    })
}

fn kv_obj<'py>(t: KvTuple<'py>) -> PyResult<KvObj<'py>> {
    let (name, kind_code, owner, uid, geometry, tokens, digest, flags, runs, table) = t;
    let runs = runs
        .into_iter()
        .map(|(layer, kind, offset, heads, pages, hashes, payload)| {
            Ok(RunObj {
                layer,
                kind,
                offset,
                heads: Buf::get(&heads, "heads")?,
                pages: Buf::get(&pages, "pages")?,
                hashes: Buf::get(&hashes, "hashes")?,
                payload: RunPayload::get(&payload)?,
            })
        })
        .collect::<PyResult<Vec<_>>>()?;
    let (geometry, runtime) = match geometry {
        Some((code, layers, kv_heads, head_dim, page_tokens, runtime)) => (
            Some(Geometry {
                code,
                layers,
                kv_heads,
                head_dim,
                page_tokens,
            }),
            Some(runtime),
        ),
        None => (None, None),
    };
    Ok(KvObj {
        name,
        kind: kind(kind_code)?,
        owner,
        uid,
        geometry,
        runtime,
        tokens,
        digest,
        flags,
        runs,
        table: table.map(|t| Buf::get(&t, "table")).transpose()?,
    })
}

/// Encode a frame (see ``hybridsync.sync.frame.encode_frame``).
///
/// ``entries`` are objects with the attributes of ``Entry`` (edits with
/// ``version`` and ``raw``), ``meta`` one with those of ``MetaBlock``;
/// ``kv`` holds ``(name, kind, owner, uid, geometry, tokens, digest, flags,
/// runs, table)`` tuples, ``geometry`` as ``(format_code, layers, kv_heads,
/// head_dim, page_tokens, runtime)`` (``runtime``: the geometry's runtime
/// record, a ``str``, empty for none), each run as ``(layer, kind, offset, heads,
/// pages, hashes, payload)`` with little-endian ``u32``/``u32``/``u64``
/// buffers, ``table`` a little-endian ``u64`` buffer or ``None``. A negative
/// ``compress_threshold`` never compresses.
#[pyfunction]
#[pyo3(signature = (sender, epoch, seq, reply, resume, entries, meta, kv, *, rename=false, compress_threshold=1024, level=3))]
#[allow(clippy::too_many_arguments)]
pub fn encode_frame<'py>(
    py: Python<'py>,
    sender: &Bound<'py, PyString>,
    epoch: u64,
    seq: u64,
    reply: bool,
    resume: bool,
    entries: &Bound<'py, PyAny>,
    meta: Option<&Bound<'py, PyAny>>,
    kv: Vec<KvTuple<'py>>,
    rename: bool,
    compress_threshold: i64,
    level: i32,
) -> PyResult<Bound<'py, PyBytes>> {
    let entry_objs = entries
        .try_iter()?
        .map(|e| entry_obj(&e?))
        .collect::<PyResult<Vec<_>>>()?;
    let meta_obj = meta.map(meta_obj).transpose()?;
    let kv_objs = kv.into_iter().map(kv_obj).collect::<PyResult<Vec<_>>>()?;

    let mut size = 0usize;
    let mut frame_entries = Vec::with_capacity(entry_objs.len());
    for o in &entry_objs {
        let mut e = Entry::bare(o.name.to_str()?, o.kind);
        e.reference = o.reference;
        if o.reference < 0 {
            e.name = "";
        }
        e.ack = o.ack;
        e.local = o.local;
        e.checksum = o.checksum;
        e.edits = o
            .edits
            .iter()
            .map(|(version, raw)| {
                Ok(frame::Edit {
                    version: *version,
                    raw: raw.as_bytes()?,
                    patch: None,
                })
            })
            .collect::<PyResult<_>>()?;
        if let Some(t) = &o.text {
            e.text = t.to_str()?;
        }
        size = size
            .saturating_add(e.text.len())
            .saturating_add(e.edits.iter().map(|x| x.raw.len()).sum());
        frame_entries.push(e);
    }
    let meta = match &meta_obj {
        Some(m) => Some(MetaBlock {
            epoch: m.epoch,
            epoch_id: m.epoch_id,
            kind: m.kind,
            a: opt_bytes(&m.a)?,
            b: opt_bytes(&m.b)?,
        }),
        None => None,
    };
    if let Some(m) = &meta {
        size = size.saturating_add(m.a.len()).saturating_add(m.b.len());
    }
    let mut frame_kv = Vec::with_capacity(kv_objs.len());
    for o in &kv_objs {
        let runs = o
            .runs
            .iter()
            .map(|r| {
                Ok(KvRun {
                    layer: r.layer,
                    kind: r.kind,
                    offset: r.offset,
                    heads: r.heads.bytes(),
                    pages: r.pages.bytes(),
                    hashes: r.hashes.bytes(),
                    payload: r.payload.payload()?,
                })
            })
            .collect::<PyResult<Vec<_>>>()?;
        size = size.saturating_add(runs.iter().map(|r| r.payload.len()).sum());
        frame_kv.push(KvEntry {
            name: o.name.to_str()?,
            kind: o.kind,
            owner: o.owner.to_str()?,
            uid: o.uid,
            geometry: o.geometry,
            runtime: match &o.runtime {
                Some(r) => r.to_str()?.as_bytes(),
                None => &[],
            },
            tokens: o.tokens,
            digest: o.digest,
            flags: o.flags,
            runs,
            table: o.table.as_ref().map(|t| t.bytes()),
        });
    }
    let frame = Frame {
        sender: sender.to_str()?,
        epoch,
        seq,
        reply,
        resume,
        rename,
        entries: frame_entries,
        meta,
        kv: frame_kv,
    };
    let opts = EncodeOptions {
        compress_threshold: usize::try_from(compress_threshold).ok(),
        level,
    };
    // The body first (compressed when due), then the frame written straight
    // into the new bytes object: KV pages are copied once.
    let prepared =
        maybe_detach(py, size, || frame::prepare_frame(&frame, &opts)).map_err(CoreError)?;
    new_bytes_written(py, prepared.len(), size, |out| prepared.write_parts(out))
}

/// A new bytes object of `len` bytes, written by `write` (which hands its
/// bytes over in order) without zero-filling it first: a frame of megabytes
/// is written once, not twice. Fails, and the object is dropped unseen,
/// unless `write` succeeded and handed over exactly `len` bytes.
fn new_bytes_written<'py>(
    py: Python<'py>,
    len: usize,
    work: usize,
    write: impl FnOnce(&mut dyn FnMut(&[u8])) -> Result<(), Error> + Send,
) -> PyResult<Bound<'py, PyBytes>> {
    if len == 0 {
        // CPython shares one empty bytes object: never written into. (A
        // frame has at least its header and checksum.)
        return Err(invalid("a frame of no bytes"));
    }
    let size = ffi::Py_ssize_t::try_from(len).map_err(|_| invalid("a frame too large"))?;
    // SAFETY: PyBytes_FromStringAndSize(NULL, n) returns a new reference to a
    // bytes object with n uninitialised bytes (or NULL with an exception set).
    let obj = unsafe {
        Bound::from_owned_ptr_or_err(py, ffi::PyBytes_FromStringAndSize(std::ptr::null(), size))?
    };
    // SAFETY: the object is new and not shared: its `len` bytes are ours to
    // write, seen as MaybeUninit (they are not initialised yet).
    let buf: &mut [std::mem::MaybeUninit<u8>] =
        unsafe { std::slice::from_raw_parts_mut(ffi::PyBytes_AsString(obj.as_ptr()).cast(), len) };
    let (pos, overflow) = maybe_detach(py, work, move || {
        let mut pos = 0usize;
        let mut overflow = false;
        let mut out = |part: &[u8]| {
            let end = pos.saturating_add(part.len());
            match buf.get_mut(pos..end) {
                Some(dst) if !overflow => {
                    // SAFETY: MaybeUninit<u8> has the layout of u8; `dst` is
                    // `part.len()` bytes of the new object, which `part`
                    // (borrowed from elsewhere) cannot overlap.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            part.as_ptr(),
                            dst.as_mut_ptr().cast::<u8>(),
                            part.len(),
                        );
                    }
                    pos = end;
                }
                _ => overflow = true,
            }
        };
        write(&mut out).map(|()| (pos, overflow))
    })
    .map_err(CoreError)?;
    if overflow || pos != len {
        return Err(invalid("a frame came out of another size than planned"));
    }
    // Every byte written: the object may be seen now.
    Ok(obj.cast_into::<PyBytes>()?)
}

// The Python signature spells the defaults out.
const _: () = assert!(frame::DEFAULT_MAX_BYTES == 67108864);
const _: () = assert!(frame::DEFAULT_MAX_KV_BYTES == 68719476736);

/// Byte offset of `part` inside `data` (both from the same buffer).
fn offset_in(data: &[u8], part: &[u8]) -> usize {
    (part.as_ptr() as usize).wrapping_sub(data.as_ptr() as usize)
}

fn run_decode<'a>(
    py: Python<'_>,
    bytes: &'a [u8],
    max_bytes: u64,
    max_kv_bytes: u64,
    scratch: &'a mut Vec<u8>,
) -> PyResult<Frame<'a>> {
    let limits = Limits {
        max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
        max_kv_bytes,
    };
    let decoded = if bytes.len() >= DETACH_THRESHOLD {
        py.detach(move || frame::decode_frame(bytes, &limits, scratch))
    } else {
        frame::decode_frame(bytes, &limits, scratch)
    };
    Ok(decoded.map_err(CoreError)?)
}

/// The KV entries as tuples, arrays and payloads as offsets into `bytes`.
fn kv_list<'py>(
    py: Python<'py>,
    bytes: &[u8],
    kv: Vec<KvEntry<'_>>,
) -> PyResult<Bound<'py, PyList>> {
    let out = PyList::empty(py);
    for k in kv {
        // The decoder checked that the runtime record is UTF-8.
        let runtime = PyString::new(py, std::str::from_utf8(k.runtime).unwrap_or(""));
        let geometry = k.geometry.map(|g| {
            (
                g.code,
                g.layers,
                g.kv_heads,
                g.head_dim,
                g.page_tokens,
                runtime,
            )
        });
        let runs = k
            .runs
            .iter()
            .map(|r| {
                Ok((
                    r.layer,
                    r.kind,
                    r.offset,
                    r.len(),
                    offset_in(bytes, r.heads),
                    offset_in(bytes, r.pages),
                    offset_in(bytes, r.hashes),
                    offset_in(bytes, whole(&r.payload)?),
                    r.payload.len(),
                ))
            })
            .collect::<PyResult<Vec<_>>>()?;
        let table = k.table.map(|t| (offset_in(bytes, t), t.len() / 8));
        let t = (
            PyString::new(py, k.name),
            k.kind as u8,
            PyString::new(py, k.owner),
            k.uid,
            geometry,
            k.tokens,
            k.digest,
            k.flags,
            runs,
            table,
        );
        out.append(t)?;
    }
    Ok(out)
}

/// The checksum trailer (``u32``) a frame whose other bytes are ``signed``
/// must carry: the low 32 bits of xxh3-64 of ``signed`` less the payloads of
/// whole KV pages (decoding the KV section, when flagged, to find them). For
/// tests and tools that build frames by hand.
///
/// Raises:
///     DecodeError: the KV section does not decode.
///     LimitExceededError: a KV cache over the default limit.
#[pyfunction]
pub fn frame_checksum(signed: &[u8]) -> PyResult<u32> {
    Ok(frame::frame_checksum(signed).map_err(CoreError)?)
}

/// Decode and validate a frame (see ``hybridsync.sync.frame.decode_frame``).
///
/// Returns ``(sender, epoch, seq, reply, resume, entries, meta, kv, rename)``:
/// entries as ``(name, kind, ack, local, edits, checksum, text, ref)`` with edits
/// as ``(version, Delta | Patch, raw)``; ``meta`` as ``(epoch, kind, a, b,
/// epoch_id)`` or ``None``; KV entries as ``(name, kind, owner, uid,
/// geometry, tokens, digest, flags, runs, table)`` with ``geometry`` as
/// ``(format_code, layers, kv_heads, head_dim, page_tokens, runtime)`` or ``None``,
/// each run as ``(layer, kind, offset, pages, heads_at, pages_at, hashes_at,
/// payload_at, payload_len)`` and ``table`` as ``(table_at, count)`` or
/// ``None``: the ``*_at`` are byte offsets into ``data``.
///
/// Raises:
///     DecodeError: malformed, truncated, unknown version, bad patch or KV page.
///     LimitExceededError: over ``max_bytes`` (compressed or not), or a KV
///         cache over ``max_kv_bytes``.
#[pyfunction]
// The defaults are `frame::DEFAULT_MAX_BYTES` and `frame::DEFAULT_MAX_KV_BYTES`.
#[pyo3(signature = (data, *, max_bytes=67108864, max_kv_bytes=68719476736))]
pub fn decode_frame<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyBytes>,
    max_bytes: u64,
    max_kv_bytes: u64,
) -> PyResult<Bound<'py, PyTuple>> {
    let bytes = data.as_bytes();
    let mut scratch = Vec::new();
    let f = run_decode(py, bytes, max_bytes, max_kv_bytes, &mut scratch)?;

    let entries = PyList::empty(py);
    for e in f.entries {
        let edits = e
            .edits
            .into_iter()
            .map(|x| {
                (x.version, change_obj(py, x.patch)?, PyBytes::new(py, x.raw)).into_bound_py_any(py)
            })
            .collect::<PyResult<Vec<_>>>()?;
        let t = (
            PyString::new(py, e.name),
            e.kind as u8,
            e.ack,
            e.local,
            PyTuple::new(py, edits)?,
            e.checksum,
            PyString::new(py, e.text),
            e.reference,
        );
        entries.append(t)?;
    }
    let meta = match f.meta {
        Some(m) => (
            m.epoch,
            m.kind as u8,
            PyBytes::new(py, m.a),
            PyBytes::new(py, m.b),
            m.epoch_id,
        )
            .into_bound_py_any(py)?,
        None => py.None().into_bound(py),
    };
    let kv = kv_list(py, bytes, f.kv)?;
    PyTuple::new(
        py,
        [
            PyString::new(py, f.sender).into_any(),
            f.epoch.into_bound_py_any(py)?,
            f.seq.into_bound_py_any(py)?,
            f.reply.into_bound_py_any(py)?,
            f.resume.into_bound_py_any(py)?,
            entries.into_any(),
            meta,
            kv.into_any(),
            f.rename.into_bound_py_any(py)?,
        ],
    )
}

/// A new instance of a plain class with the given attributes, made without
/// running its ``__init__`` (``object.__new__`` and its instance dict).
fn instance<'py>(
    cls: &Bound<'py, PyType>,
    fields: &[(&Bound<'py, PyString>, Bound<'py, PyAny>)],
) -> PyResult<Bound<'py, PyAny>> {
    static OBJECT_NEW: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let py = cls.py();
    let new = OBJECT_NEW.get_or_try_init(py, || {
        Ok::<_, PyErr>(
            py.import("builtins")?
                .getattr("object")?
                .getattr("__new__")?
                .unbind(),
        )
    })?;
    let obj = new.bind(py).call1((cls,))?;
    let dict = obj
        .getattr(intern!(py, "__dict__"))?
        .cast_into::<PyDict>()?;
    for (name, value) in fields {
        dict.set_item(*name, value)?;
    }
    Ok(obj)
}

/// The member of `kinds` for wire code `code`.
fn member<'py>(kinds: &Bound<'py, PyTuple>, code: u8) -> PyResult<Bound<'py, PyAny>> {
    kinds.get_item(usize::from(code))
}

/// Decode and validate a frame into instances of the caller's frame classes.
///
/// ``types`` is ``(Frame, Entry, Edit, MetaBlock, kinds, meta_kinds)``: four
/// dataclasses with the fields of ``hybridsync.sync.frame``'s (plain, no
/// ``__slots__``, no ``__post_init__``: instances are made without calling
/// ``__init__``) and two tuples of enum members indexed by wire code. Returns
/// ``(frame, kv)``: the frame with ``kv=()`` and the KV entries as
/// :func:`decode_frame` returns them. With ``kv_types`` (``(KVEntry, KVRun,
/// Geometry, kv_kinds, formats, frombuffer, u32, u64)``, see
/// [`KvTypes`]) the KV entries are instances too, made the same way, in the
/// frame's ``kv``, and ``kv`` is empty. Raises as :func:`decode_frame` does.
#[pyfunction]
#[pyo3(signature = (data, types, *, max_bytes=67108864, max_kv_bytes=68719476736, kv_types=None))]
pub fn decode_frame_as<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyBytes>,
    types: &Bound<'py, PyTuple>,
    max_bytes: u64,
    max_kv_bytes: u64,
    kv_types: Option<&Bound<'py, PyTuple>>,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyList>)> {
    let (frame_cls, entry_cls, edit_cls, meta_cls, kinds, meta_kinds): FrameTypes<'py> =
        types.extract()?;
    let kv_types: Option<KvTypes<'py>> = kv_types.map(|t| t.extract()).transpose()?;
    let bytes = data.as_bytes();
    let mut scratch = Vec::new();
    let f = run_decode(py, bytes, max_bytes, max_kv_bytes, &mut scratch)?;

    let (k_name, k_kind, k_ref) = (intern!(py, "name"), intern!(py, "kind"), intern!(py, "ref"));
    let (k_ack, k_local) = (intern!(py, "ack"), intern!(py, "local"));
    let (k_edits, k_checksum, k_text) = (
        intern!(py, "edits"),
        intern!(py, "checksum"),
        intern!(py, "text"),
    );
    let (k_version, k_patch, k_raw) = (
        intern!(py, "version"),
        intern!(py, "patch"),
        intern!(py, "raw"),
    );
    let empty = PyTuple::empty(py).into_any();
    let mut entries = Vec::with_capacity(f.entries.len());
    for e in f.entries {
        let edits = if e.edits.is_empty() {
            empty.clone()
        } else {
            let edits = e
                .edits
                .into_iter()
                .map(|x| {
                    let patch = change_obj(py, x.patch)?;
                    instance(
                        &edit_cls,
                        &[
                            (k_version, x.version.into_bound_py_any(py)?),
                            (k_patch, patch),
                            (k_raw, PyBytes::new(py, x.raw).into_any()),
                        ],
                    )
                })
                .collect::<PyResult<Vec<_>>>()?;
            PyTuple::new(py, edits)?.into_any()
        };
        entries.push(instance(
            &entry_cls,
            &[
                (k_name, PyString::new(py, e.name).into_any()),
                (k_kind, member(&kinds, e.kind as u8)?),
                (k_ack, e.ack.into_bound_py_any(py)?),
                (k_local, e.local.into_bound_py_any(py)?),
                (k_edits, edits),
                (k_checksum, e.checksum.into_bound_py_any(py)?),
                (k_text, PyString::new(py, e.text).into_any()),
                (k_ref, e.reference.into_bound_py_any(py)?),
            ],
        )?);
    }
    let meta = match f.meta {
        Some(m) => instance(
            &meta_cls,
            &[
                (intern!(py, "epoch"), m.epoch.into_bound_py_any(py)?),
                (k_kind, member(&meta_kinds, m.kind as u8)?),
                (intern!(py, "a"), PyBytes::new(py, m.a).into_any()),
                (intern!(py, "b"), PyBytes::new(py, m.b).into_any()),
                (intern!(py, "epoch_id"), m.epoch_id.into_bound_py_any(py)?),
            ],
        )?,
        None => py.None().into_bound(py),
    };
    // With `kv_types` the KV entries are objects in the frame; else tuples.
    let (kv_objects, kv) = match &kv_types {
        Some(t) if !f.kv.is_empty() => (kv_instances(py, data, f.kv, t)?, PyList::empty(py)),
        Some(_) => (empty.clone(), PyList::empty(py)),
        None => (empty.clone(), kv_list(py, bytes, f.kv)?),
    };
    let frame = instance(
        &frame_cls,
        &[
            (
                intern!(py, "sender"),
                PyString::new(py, f.sender).into_any(),
            ),
            (intern!(py, "epoch"), f.epoch.into_bound_py_any(py)?),
            (intern!(py, "seq"), f.seq.into_bound_py_any(py)?),
            (intern!(py, "reply"), f.reply.into_bound_py_any(py)?),
            (
                intern!(py, "entries"),
                PyTuple::new(py, entries)?.into_any(),
            ),
            (intern!(py, "meta"), meta),
            (intern!(py, "kv"), kv_objects),
            (intern!(py, "resume"), f.resume.into_bound_py_any(py)?),
            (intern!(py, "rename"), f.rename.into_bound_py_any(py)?),
        ],
    )?;
    Ok((frame, kv))
}

type FrameTypes<'py> = (
    Bound<'py, PyType>,
    Bound<'py, PyType>,
    Bound<'py, PyType>,
    Bound<'py, PyType>,
    Bound<'py, PyTuple>,
    Bound<'py, PyTuple>,
);

/// ``(KVEntry, KVRun, Geometry, kv_kinds, formats, frombuffer, u32, u64)``:
/// the KV dataclasses, the members of ``KVKind`` by wire code, ``(fmt,
/// scale_type)`` (or None) by format code, ``numpy.frombuffer`` and the
/// little-endian ``u32`` and ``u64`` dtypes.
type KvTypes<'py> = (
    Bound<'py, PyType>,
    Bound<'py, PyType>,
    Bound<'py, PyType>,
    Bound<'py, PyTuple>,
    Bound<'py, PyTuple>,
    Bound<'py, PyAny>,
    Bound<'py, PyAny>,
    Bound<'py, PyAny>,
);

/// A new writable array of `dtype` holding a copy of `raw`.
fn array<'py>(
    frombuffer: &Bound<'py, PyAny>,
    dtype: &Bound<'py, PyAny>,
    raw: &[u8],
) -> PyResult<Bound<'py, PyAny>> {
    let py = frombuffer.py();
    frombuffer.call1((PyByteArray::new(py, raw), dtype))
}

/// The KV entries as instances of the caller's KV classes: index arrays and
/// hashes as new writable numpy arrays, payloads as memoryviews of `data`
/// (no copy), the HAVE table as a ``[layers, 2, heads, pages]`` array.
fn kv_instances<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyBytes>,
    kv: Vec<KvEntry<'_>>,
    types: &KvTypes<'py>,
) -> PyResult<Bound<'py, PyAny>> {
    let (entry_cls, run_cls, geometry_cls, kinds, formats, frombuffer, u32le, u64le) = types;
    let bytes = data.as_bytes();
    let (k_name, k_kind, k_owner, k_uid) = (
        intern!(py, "name"),
        intern!(py, "kind"),
        intern!(py, "owner"),
        intern!(py, "uid"),
    );
    let (k_geometry, k_tokens, k_digest, k_flags, k_runs, k_table) = (
        intern!(py, "geometry"),
        intern!(py, "tokens"),
        intern!(py, "digest"),
        intern!(py, "flags"),
        intern!(py, "runs"),
        intern!(py, "table"),
    );
    let mut view: Option<Bound<'py, PyAny>> = None;
    let none = || py.None().into_bound(py);
    let zero = || 0u8.into_bound_py_any(py);
    let mut out = Vec::with_capacity(kv.len());
    for k in kv {
        let head = [
            (k_name, PyString::new(py, k.name).into_any()),
            (k_kind, member(kinds, k.kind as u8)?),
            (k_owner, PyString::new(py, k.owner).into_any()),
            (k_uid, k.uid.into_bound_py_any(py)?),
        ];
        let Some(g) = k.geometry else {
            let [a, b, c, d] = head;
            out.push(instance(
                entry_cls,
                &[
                    a,
                    b,
                    c,
                    d,
                    (k_geometry, none()),
                    (k_tokens, zero()?),
                    (k_digest, zero()?),
                    (k_flags, zero()?),
                    (k_runs, PyTuple::empty(py).into_any()),
                    (k_table, none()),
                ],
            )?);
            continue;
        };
        let (fmt, scale_type): (Bound<'py, PyAny>, Bound<'py, PyAny>) =
            member(formats, g.code)?.extract()?;
        // The decoder checked that the runtime record is UTF-8.
        let runtime = std::str::from_utf8(k.runtime).unwrap_or("");
        let geometry = instance(
            geometry_cls,
            &[
                (intern!(py, "layers"), g.layers.into_bound_py_any(py)?),
                (intern!(py, "kv_heads"), g.kv_heads.into_bound_py_any(py)?),
                (intern!(py, "head_dim"), g.head_dim.into_bound_py_any(py)?),
                (intern!(py, "fmt"), fmt),
                (
                    intern!(py, "page_tokens"),
                    g.page_tokens.into_bound_py_any(py)?,
                ),
                (intern!(py, "scale_type"), scale_type),
                (
                    intern!(py, "runtime"),
                    PyString::new(py, runtime).into_any(),
                ),
            ],
        )?;
        let mut runs = Vec::with_capacity(k.runs.len());
        for r in &k.runs {
            let view = match &view {
                Some(v) => v,
                None => view.insert(PyMemoryView::from(data.as_any())?.into_any()),
            };
            let at = offset_in(bytes, whole(&r.payload)?);
            let payload = view.get_item(PySlice::new(
                py,
                isize::try_from(at).map_err(|_| invalid("payload offset overflows"))?,
                isize::try_from(at + r.payload.len())
                    .map_err(|_| invalid("payload offset overflows"))?,
                1,
            ))?;
            runs.push(instance(
                run_cls,
                &[
                    (intern!(py, "layer"), r.layer.into_bound_py_any(py)?),
                    (k_kind, r.kind.into_bound_py_any(py)?),
                    (intern!(py, "heads"), array(frombuffer, u32le, r.heads)?),
                    (intern!(py, "pages"), array(frombuffer, u32le, r.pages)?),
                    (intern!(py, "hashes"), array(frombuffer, u64le, r.hashes)?),
                    (intern!(py, "payload"), payload),
                    (intern!(py, "offset"), r.offset.into_bound_py_any(py)?),
                ],
            )?);
        }
        let table = match k.table {
            Some(t) => {
                let pages = if g.page_tokens == 0 {
                    0
                } else {
                    k.tokens.div_ceil(g.page_tokens)
                };
                array(frombuffer, u64le, t)?.call_method1(
                    intern!(py, "reshape"),
                    ((g.layers, 2u8, g.kv_heads, pages),),
                )?
            }
            None => none(),
        };
        let [a, b, c, d] = head;
        out.push(instance(
            entry_cls,
            &[
                a,
                b,
                c,
                d,
                (k_geometry, geometry),
                (k_tokens, k.tokens.into_bound_py_any(py)?),
                (k_digest, k.digest.into_bound_py_any(py)?),
                (k_flags, k.flags.into_bound_py_any(py)?),
                (k_runs, PyTuple::new(py, runs)?.into_any()),
                (k_table, table),
            ],
        )?);
    }
    Ok(PyTuple::new(py, out)?.into_any())
}
