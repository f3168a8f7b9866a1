//! `hybridsync._core`: the thin pyo3 layer over `hybridsync-core`.
//!
//! Conversions and argument checks live here; every algorithm lives in the
//! core crate. Core errors map onto the `hybridsync.errors` hierarchy in one
//! place ([`CoreError`]); CPU-heavy calls release the GIL.
//!
//! Strings cross without copies: the kernels run directly over CPython's
//! 1-, 2- or 4-byte code-point storage (PEP 393), widening one side only
//! when two inputs are stored differently, and results are built with
//! `PyUnicode_FromKindAndData` (one memcpy).
#![allow(unsafe_code)]

use std::borrow::Cow;
use std::time::Duration;

use hybridsync_core::text::{
    self, Cleanup, Diff, DiffOptions, MatchOptions, Op, PatchOptions, Unit,
};
use hybridsync_core::Error;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::string::PyStringData;
use pyo3::types::{PyBytes, PyString, PyTuple, PyType};
use pyo3::IntoPyObjectExt;

mod audit;
mod buf;
mod frame;
mod kv;

/// Inputs at least this large (in UTF-8 bytes) are processed without the GIL.
const DETACH_THRESHOLD: usize = 4096;

/// A core error on its way to Python.
struct CoreError(Error);

impl From<Error> for CoreError {
    fn from(e: Error) -> Self {
        CoreError(e)
    }
}

impl From<CoreError> for PyErr {
    fn from(e: CoreError) -> PyErr {
        let (class, msg) = match e.0 {
            Error::Decode(m) => ("DecodeError", m),
            Error::InvalidArgument(m) => ("InvalidArgumentError", m),
            Error::LimitExceeded(m) => ("LimitExceededError", m),
        };
        Python::attach(|py| {
            let cls = py
                .import("hybridsync.errors")
                .and_then(|m| m.getattr(class))
                .and_then(|c| c.cast_into::<PyType>().map_err(PyErr::from));
            match cls {
                Ok(cls) => PyErr::from_type(cls, msg),
                Err(import_error) => import_error,
            }
        })
    }
}

fn invalid(msg: impl Into<String>) -> PyErr {
    CoreError(Error::invalid(msg)).into()
}

/// Run `f` without the GIL when the input is large.
fn maybe_detach<T: Send>(py: Python<'_>, size: usize, f: impl FnOnce() -> T + Send) -> T {
    if size >= DETACH_THRESHOLD {
        py.detach(f)
    } else {
        f()
    }
}

fn chars(s: &str) -> Vec<char> {
    s.chars().collect()
}

fn string(c: &[char]) -> String {
    c.iter().collect()
}

/// A code-point width CPython stores strings in, and its `PyUnicode_*_KIND`.
trait Storage: Unit {
    const KIND: u8;
    /// The string's code points in this width: borrowed when stored so,
    /// widened otherwise (callers pick the widest kind of their inputs).
    fn view<'a>(data: &PyStringData<'a>) -> Cow<'a, [Self]>;
}

macro_rules! storage {
    ($t:ty, $kind:expr, $variant:ident) => {
        impl Storage for $t {
            const KIND: u8 = $kind;
            fn view<'a>(data: &PyStringData<'a>) -> Cow<'a, [Self]> {
                #[allow(unreachable_patterns)] // one arm per width; the own width borrows
                match *data {
                    PyStringData::$variant(s) => Cow::Borrowed(s),
                    PyStringData::Ucs1(s) => Cow::Owned(s.iter().map(|&u| u as $t).collect()),
                    PyStringData::Ucs2(s) => Cow::Owned(s.iter().map(|&u| u as $t).collect()),
                    PyStringData::Ucs4(s) => Cow::Owned(s.iter().map(|&u| u as $t).collect()),
                }
            }
        }
    };
}
storage!(u8, 1, Ucs1);
storage!(u16, 2, Ucs2);
storage!(u32, 4, Ucs4);

/// Run `$body` with `$t` bound to the storage type of `$kind` (1, 2 or 4).
macro_rules! with_kind {
    ($kind:expr, $t:ident => $body:expr) => {
        match $kind {
            1 => {
                type $t = u8;
                $body
            }
            2 => {
                type $t = u16;
                $body
            }
            _ => {
                type $t = u32;
                $body
            }
        }
    };
}

fn kind_of(data: &PyStringData<'_>) -> u8 {
    match data {
        PyStringData::Ucs1(_) => 1,
        PyStringData::Ucs2(_) => 2,
        PyStringData::Ucs4(_) => 4,
    }
}

fn units_len(data: &PyStringData<'_>) -> usize {
    match data {
        PyStringData::Ucs1(d) => d.len(),
        PyStringData::Ucs2(d) => d.len(),
        PyStringData::Ucs4(d) => d.len(),
    }
}

/// The code points of a Python string, rejecting lone surrogates (they
/// cannot be encoded for the wire).
fn code_points<'a>(s: &'a Bound<'_, PyString>) -> PyResult<PyStringData<'a>> {
    // SAFETY: `data` reads the canonical PEP 393 buffer of an immutable str
    // that `s` keeps alive for 'a.
    let data = unsafe { s.data()? };
    let surrogate = match data {
        PyStringData::Ucs1(_) => None,
        PyStringData::Ucs2(d) => d.iter().position(|&u| (0xD800..=0xDFFF).contains(&u)),
        PyStringData::Ucs4(d) => d.iter().position(|&u| (0xD800..=0xDFFF).contains(&u)),
    };
    match surrogate {
        Some(i) => Err(invalid(format!(
            "text contains a lone surrogate code point at index {i}"
        ))),
        None => Ok(data),
    }
}

/// A Python str from code points of one storage width (one memcpy).
fn py_str<'py, T: Storage>(py: Python<'py>, units: &[T]) -> PyResult<Bound<'py, PyString>> {
    let len = pyo3::ffi::Py_ssize_t::try_from(units.len())
        .map_err(|_| CoreError(Error::LimitExceeded("text too long".into())))?;
    // SAFETY: the buffer holds `len` valid code points of width T::KIND; the
    // call copies them and returns a new reference (or NULL with an error set).
    unsafe {
        let ptr =
            pyo3::ffi::PyUnicode_FromKindAndData(i32::from(T::KIND), units.as_ptr().cast(), len);
        Bound::from_owned_ptr_or_err(py, ptr).map(|o| o.cast_into_unchecked::<PyString>())
    }
}

fn diffs_to_list<'py, T: Storage>(
    py: Python<'py>,
    diffs: &[Diff<T>],
) -> PyResult<Vec<(i8, Bound<'py, PyString>)>> {
    diffs
        .iter()
        .map(|d| Ok((d.op.as_i8(), py_str(py, &d.text)?)))
        .collect()
}

/// The storage width a patch's code points need.
fn patch_kind(p: &text::Patch) -> u8 {
    let max = p
        .hunks
        .iter()
        .flat_map(|h| h.diffs.iter())
        .flat_map(|d| d.text.iter())
        .map(|&c| c as u32)
        .max()
        .unwrap_or(0);
    match max {
        0..=0xFF => 1,
        0x100..=0xFFFF => 2,
        _ => 4,
    }
}

/// The default diff options with a caller's time budget and edit cost.
fn diff_options(timeout: f64, edit_cost: i64) -> PyResult<DiffOptions> {
    Ok(DiffOptions {
        timeout: timeout_arg(timeout)?,
        edit_cost: count_arg("edit_cost", edit_cost)?,
        ..DiffOptions::default()
    })
}

fn timeout_arg(seconds: f64) -> PyResult<Option<Duration>> {
    if seconds.is_nan() || seconds < 0.0 {
        return Err(invalid(format!(
            "timeout must be >= 0 seconds (0 = no limit), got {seconds}"
        )));
    }
    if seconds == 0.0 {
        return Ok(None);
    }
    // Beyond what a Duration holds: limited in principle, never reached.
    Ok(Some(
        Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX),
    ))
}

fn unit_arg(name: &str, v: f64) -> PyResult<f64> {
    if !(0.0..=1.0).contains(&v) {
        return Err(invalid(format!(
            "{name} must be within 0.0 ..= 1.0, got {v}"
        )));
    }
    Ok(v)
}

fn count_arg(name: &str, v: i64) -> PyResult<usize> {
    usize::try_from(v).map_err(|_| invalid(format!("{name} must be >= 0, got {v}")))
}

fn diffs_to_py(diffs: Vec<Diff>) -> Vec<(i8, String)> {
    diffs
        .into_iter()
        .map(|d| (d.op.as_i8(), string(&d.text)))
        .collect()
}

fn diffs_from_py(diffs: Vec<(i64, String)>) -> PyResult<Vec<Diff>> {
    diffs
        .into_iter()
        .map(|(op, text)| {
            let op = i8::try_from(op)
                .ok()
                .and_then(Op::from_i8)
                .ok_or_else(|| invalid(format!("diff op must be -1, 0 or 1, got {op}")))?;
            Ok(Diff::new(op, chars(&text)))
        })
        .collect()
}

/// Diff ``a`` into ``b``: a list of ``(op, text)`` with op -1 (delete),
/// 0 (equal) or 1 (insert).
///
/// Args:
///     timeout: seconds before the diff stops refining (0 = no limit, optimal).
///     cleanup: ``"semantic"`` (human-readable), ``"efficiency"`` or ``"none"``.
///     edit_cost: cost of an empty edit, for the efficiency cleanup.
///     checklines: run a line-level diff first on large texts.
#[pyfunction]
#[pyo3(signature = (a, b, *, timeout=1.0, cleanup="semantic", edit_cost=4, checklines=true))]
fn diff(
    py: Python<'_>,
    a: &Bound<'_, PyString>,
    b: &Bound<'_, PyString>,
    timeout: f64,
    cleanup: &str,
    edit_cost: i64,
    checklines: bool,
) -> PyResult<Py<PyAny>> {
    let cleanup = match cleanup {
        "semantic" => Cleanup::Semantic,
        "efficiency" => Cleanup::Efficiency,
        "none" => Cleanup::None,
        other => {
            return Err(invalid(format!(
                "cleanup must be 'semantic', 'efficiency' or 'none', got {other:?}"
            )))
        }
    };
    let opts = DiffOptions {
        timeout: timeout_arg(timeout)?,
        edit_cost: count_arg("edit_cost", edit_cost)?,
        checklines,
        cleanup,
    };
    let (da, db) = (code_points(a)?, code_points(b)?);
    let size = units_len(&da) + units_len(&db);
    with_kind!(kind_of(&da).max(kind_of(&db)), T => {
        let (a, b) = (T::view(&da), T::view(&db));
        let diffs = maybe_detach(py, size, || text::diff(&a, &b, &opts));
        Ok(diffs_to_list(py, &diffs)?.into_pyobject(py)?.into_any().unbind())
    })
}

/// Best location of ``pattern`` in ``text`` near ``loc`` (Bitap fuzzy
/// search), or ``None``.
///
/// Args:
///     threshold: 0.0 = exact only, 1.0 = anything goes.
///     distance: how far from ``loc`` a match may be; a match this many code
///         points away scores 1.0 worse.
#[pyfunction]
#[pyo3(signature = (text, pattern, loc, *, threshold=0.5, distance=1000))]
fn r#match(
    py: Python<'_>,
    text: &Bound<'_, PyString>,
    pattern: &Bound<'_, PyString>,
    loc: i64,
    threshold: f64,
    distance: i64,
) -> PyResult<Option<usize>> {
    let opts = MatchOptions {
        threshold: unit_arg("threshold", threshold)?,
        distance: count_arg("distance", distance)?,
    };
    let loc = usize::try_from(loc.max(0)).unwrap_or(usize::MAX);
    let (dt, dp) = (code_points(text)?, code_points(pattern)?);
    let size = units_len(&dt);
    let found = with_kind!(kind_of(&dt).max(kind_of(&dp)), T => {
        let (t, p) = (T::view(&dt), T::view(&dp));
        maybe_detach(py, size, || text::match_main(&t, &p, loc, &opts))
    });
    Ok(found.map_err(CoreError)?)
}

/// Make the patch that turns ``a`` into ``b``.
///
/// Args:
///     timeout: time budget of the underlying diff (0 = no limit).
///     edit_cost: cost of an empty edit, for the efficiency cleanup.
///     margin: context kept around each hunk, in code points (1..15).
#[pyfunction]
#[pyo3(signature = (a, b, *, timeout=1.0, edit_cost=4, margin=4))]
fn make_patch(
    py: Python<'_>,
    a: &Bound<'_, PyString>,
    b: &Bound<'_, PyString>,
    timeout: f64,
    edit_cost: i64,
    margin: i64,
) -> PyResult<Patch> {
    let opts = diff_options(timeout, edit_cost)?;
    let margin = count_arg("margin", margin)?;
    let (da, db) = (code_points(a)?, code_points(b)?);
    let size = units_len(&da) + units_len(&db);
    let patch = with_kind!(kind_of(&da).max(kind_of(&db)), T => {
        let (a, b) = (T::view(&da), T::view(&db));
        maybe_detach(py, size, || text::make_patch(&a, &b, &opts, margin))
    });
    Ok(Patch(patch.map_err(CoreError)?))
}

/// Make a patch from a source text and a diff of it (as returned by :func:`diff`).
#[pyfunction]
#[pyo3(signature = (a, diffs, *, margin=4))]
fn patch_from_diffs(a: &str, diffs: Vec<(i64, String)>, margin: i64) -> PyResult<Patch> {
    let diffs = diffs_from_py(diffs)?;
    let margin = count_arg("margin", margin)?;
    Ok(Patch(
        text::make_patch_from_diffs(&chars(a), &diffs, margin).map_err(CoreError)?,
    ))
}

/// Apply ``patch`` to ``text``, locating each hunk fuzzily.
///
/// Returns ``(new_text, applied)`` where ``applied`` holds one flag per hunk
/// (hunks longer than 32 code points are split first, as the reference does).
///
/// Args:
///     match_threshold: how loosely a hunk's context may match (0.0 .. 1.0).
///     match_distance: how far from its expected place a hunk may be found.
///     delete_threshold: how closely a large deletion must match (0.0 .. 1.0).
///     margin: the context margin the patch was made with (1..15).
///     timeout: time budget of the diffs run on imperfect matches (0 = none).
#[pyfunction]
#[pyo3(signature = (
    patch, text, *, match_threshold=0.5, match_distance=1000, delete_threshold=0.5, margin=4, timeout=1.0
))]
#[allow(clippy::too_many_arguments)]
fn apply_patch(
    py: Python<'_>,
    patch: &Bound<'_, PyAny>,
    text: &Bound<'_, PyString>,
    match_threshold: f64,
    match_distance: i64,
    delete_threshold: f64,
    margin: i64,
    timeout: f64,
) -> PyResult<(Py<PyString>, Vec<bool>)> {
    let patch = patch.cast::<Patch>().map_err(|_| {
        PyTypeError::new_err(format!(
            "apply_patch() expects a hybridsync.text.Patch, got {}",
            patch
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))
    })?;
    let opts = PatchOptions {
        margin: count_arg("margin", margin)?,
        matching: MatchOptions {
            threshold: unit_arg("match_threshold", match_threshold)?,
            distance: count_arg("match_distance", match_distance)?,
        },
        delete_threshold: unit_arg("delete_threshold", delete_threshold)?,
        diff_timeout: timeout_arg(timeout)?,
    };
    let patch = &patch.get().0;
    let dt = code_points(text)?;
    let size = units_len(&dt);
    with_kind!(kind_of(&dt).max(patch_kind(patch)), T => {
        let t = T::view(&dt);
        let (out, flags) = maybe_detach(py, size, || text::apply_patch(patch, &t, &opts)).map_err(CoreError)?;
        Ok((py_str(py, &out)?.unbind(), flags))
    })
}

/// One hunk of a :class:`Patch`: diffs with context and their place.
#[pyclass(module = "hybridsync._core", frozen, eq, hash)]
#[derive(Clone, PartialEq, Eq, Hash)]
struct Hunk(text::Hunk);

#[pymethods]
impl Hunk {
    /// Start in the source text (code points).
    #[getter]
    fn start1(&self) -> usize {
        self.0.start1
    }
    /// Start in the destination text (code points).
    #[getter]
    fn start2(&self) -> usize {
        self.0.start2
    }
    /// Length covered in the source text.
    #[getter]
    fn length1(&self) -> usize {
        self.0.length1
    }
    /// Length covered in the destination text.
    #[getter]
    fn length2(&self) -> usize {
        self.0.length2
    }
    /// The diffs as ``(op, text)`` pairs, context included.
    #[getter]
    fn diffs(&self) -> Vec<(i8, String)> {
        diffs_to_py(self.0.diffs.clone())
    }
    fn __repr__(&self) -> String {
        format!(
            "Hunk(start1={}, length1={}, start2={}, length2={}, diffs={})",
            self.0.start1,
            self.0.length1,
            self.0.start2,
            self.0.length2,
            self.0.diffs.len()
        )
    }
}

/// A patch: the hunks that turn one text into another.
///
/// Serialize with :meth:`to_bytes` (compact binary, for the wire) or
/// :meth:`to_text` (the standard diff-match-patch patch text).
#[pyclass(module = "hybridsync._core", frozen, eq, hash)]
#[derive(Clone, PartialEq, Eq, Hash)]
struct Patch(text::Patch);

#[pymethods]
impl Patch {
    fn __len__(&self) -> usize {
        self.0.hunks.len()
    }

    /// The hunks, in text order.
    #[getter]
    fn hunks(&self) -> Vec<Hunk> {
        self.0.hunks.iter().cloned().map(Hunk).collect()
    }

    /// Encode into the compact binary form (see ``docs/protocol.md``).
    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0.to_bytes())
    }

    /// Decode the binary form.
    ///
    /// Raises:
    ///     DecodeError: the bytes are truncated, garbled or of an unknown version.
    #[staticmethod]
    fn from_bytes(py: Python<'_>, data: &[u8]) -> PyResult<Patch> {
        let p = maybe_detach(py, data.len(), || text::Patch::from_bytes(data));
        Ok(Patch(p.map_err(CoreError)?))
    }

    /// The standard diff-match-patch patch text (``@@ -1,4 +1,5 @@`` ...).
    fn to_text(&self) -> String {
        self.0.to_text()
    }

    /// Parse the standard diff-match-patch patch text.
    ///
    /// Raises:
    ///     DecodeError: the text is not a well-formed patch.
    #[staticmethod]
    fn from_text(text: &str) -> PyResult<Patch> {
        Ok(Patch(text::Patch::from_text(text).map_err(CoreError)?))
    }

    fn __repr__(&self) -> String {
        let (ins, del): (usize, usize) = self.0.hunks.iter().fold((0, 0), |(i, d), h| {
            h.diffs.iter().fold((i, d), |(i, d), x| match x.op {
                Op::Insert => (i + x.text.len(), d),
                Op::Delete => (i, d + x.text.len()),
                Op::Equal => (i, d),
            })
        });
        format!("<Patch hunks={} +{ins} -{del}>", self.0.hunks.len())
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyTuple>> {
        let py = slf.py();
        let ctor = py.get_type::<Patch>().getattr("from_bytes")?;
        let args = PyTuple::new(py, [slf.get().to_bytes(py)])?;
        PyTuple::new(py, [ctor, args.into_any()])
    }
}

/// The storage width code points up to `max` need.
fn code_kind(max: u32) -> u8 {
    match max {
        0..=0xFF => 1,
        0x100..=0xFFFF => 2,
        _ => 4,
    }
}

/// An edit of one exact source text: keep / insert / delete, no context.
///
/// A link sends edits as deltas: both sides hold the same shadow (their
/// versions and the shadow checksum say so), so no context is needed to
/// place them; :meth:`apply` fits exactly or not at all.
#[pyclass(module = "hybridsync._core", frozen, eq, hash)]
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct Delta(pub(crate) text::Delta);

#[pymethods]
impl Delta {
    fn __len__(&self) -> usize {
        self.0.ops.len()
    }

    /// The ops, in source order: ``(0, n)`` keep n code points, ``(1, text)``
    /// insert, ``(2, n)`` delete n code points; the rest of the source is kept.
    #[getter]
    fn ops<'py>(&self, py: Python<'py>) -> PyResult<Vec<(u8, Bound<'py, PyAny>)>> {
        self.0
            .ops
            .iter()
            .map(|op| {
                Ok(match op {
                    text::DeltaOp::Keep(n) => (0, n.into_bound_py_any(py)?),
                    text::DeltaOp::Insert(s) => (1, PyString::new(py, s).into_any()),
                    text::DeltaOp::Delete(n) => (2, n.into_bound_py_any(py)?),
                })
            })
            .collect()
    }

    /// Apply to ``text``, the exact source: the new text, or ``None`` when
    /// the delta does not fit it (it keeps or deletes past its end).
    fn apply(&self, py: Python<'_>, text: &Bound<'_, PyString>) -> PyResult<Option<Py<PyString>>> {
        let dt = code_points(text)?;
        let size = units_len(&dt);
        with_kind!(kind_of(&dt).max(code_kind(self.0.max_code())), T => {
            let t = T::view(&dt);
            match maybe_detach(py, size, || self.0.apply(&t)) {
                Some(out) => Ok(Some(py_str(py, &out)?.unbind())),
                None => Ok(None),
            }
        })
    }

    /// Encode into the compact binary form (see ``docs/protocol.md``).
    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0.to_bytes())
    }

    /// Decode the binary form.
    ///
    /// Raises:
    ///     DecodeError: the bytes are truncated, garbled or of another format.
    #[staticmethod]
    fn from_bytes(data: &[u8]) -> PyResult<Delta> {
        Ok(Delta(text::Delta::from_bytes(data).map_err(CoreError)?))
    }

    fn __repr__(&self) -> String {
        let (ins, del) = self.0.ops.iter().fold((0, 0), |(i, d), op| match op {
            text::DeltaOp::Insert(s) => (i + s.chars().count(), d),
            text::DeltaOp::Delete(n) => (i, d + n),
            text::DeltaOp::Keep(_) => (i, d),
        });
        format!("<Delta ops={} +{ins} -{del}>", self.0.ops.len())
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyTuple>> {
        let py = slf.py();
        let ctor = py.get_type::<Delta>().getattr("from_bytes")?;
        let args = PyTuple::new(py, [slf.get().to_bytes(py)])?;
        PyTuple::new(py, [ctor, args.into_any()])
    }
}

/// The delta turning ``a`` into ``b`` (a diff with the efficiency cleanup).
///
/// Args:
///     timeout: time budget of the underlying diff (0 = no limit).
///     edit_cost: cost of an empty edit, for the efficiency cleanup.
#[pyfunction]
#[pyo3(signature = (a, b, *, timeout=1.0, edit_cost=4))]
fn make_delta(
    py: Python<'_>,
    a: &Bound<'_, PyString>,
    b: &Bound<'_, PyString>,
    timeout: f64,
    edit_cost: i64,
) -> PyResult<Delta> {
    let opts = DiffOptions {
        cleanup: text::Cleanup::Efficiency,
        ..diff_options(timeout, edit_cost)?
    };
    let (da, db) = (code_points(a)?, code_points(b)?);
    let size = units_len(&da) + units_len(&db);
    let delta = with_kind!(kind_of(&da).max(kind_of(&db)), T => {
        let (a, b) = (T::view(&da), T::view(&db));
        maybe_detach(py, size, || text::make_delta(&a, &b, &opts))
    });
    Ok(Delta(delta))
}

/// The Rust kernels of hybridsync.
#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("DIFF_DELETE", -1)?;
    m.add("DIFF_EQUAL", 0)?;
    m.add("DIFF_INSERT", 1)?;
    m.add("PATCH_FORMAT_VERSION", text::PATCH_FORMAT_VERSION)?;
    m.add("DELTA_FORMAT_VERSION", text::DELTA_FORMAT_VERSION)?;
    m.add_function(wrap_pyfunction!(diff, m)?)?;
    m.add_function(wrap_pyfunction!(r#match, m)?)?;
    m.add_function(wrap_pyfunction!(make_patch, m)?)?;
    m.add_function(wrap_pyfunction!(patch_from_diffs, m)?)?;
    m.add_function(wrap_pyfunction!(apply_patch, m)?)?;
    m.add_function(wrap_pyfunction!(make_delta, m)?)?;
    m.add_class::<Patch>()?;
    m.add_class::<Delta>()?;
    m.add_class::<Hunk>()?;
    m.add_function(wrap_pyfunction!(kv::kv_row_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(kv::kv_quantize, m)?)?;
    m.add_function(wrap_pyfunction!(kv::kv_dequantize, m)?)?;
    m.add_function(wrap_pyfunction!(kv::kv_hash_pages, m)?)?;
    m.add_function(wrap_pyfunction!(kv::kv_gather_pages, m)?)?;
    m.add_function(wrap_pyfunction!(kv::kv_verify_pages, m)?)?;
    m.add_function(wrap_pyfunction!(kv::kv_scatter_pages, m)?)?;
    m.add_function(wrap_pyfunction!(kv::kv_page_hash, m)?)?;
    m.add_function(wrap_pyfunction!(kv::kv_table_range_sum, m)?)?;
    m.add_function(wrap_pyfunction!(kv::kv_table_set_range, m)?)?;
    m.add_function(wrap_pyfunction!(kv::kv_table_cut, m)?)?;
    m.add_function(wrap_pyfunction!(kv::kv_table_set_pages, m)?)?;
    m.add_function(wrap_pyfunction!(kv::kv_table_set_runs, m)?)?;
    m.add_function(wrap_pyfunction!(kv::kv_apply_pages, m)?)?;
    m.add_function(wrap_pyfunction!(kv::kv_table_hash, m)?)?;
    m.add_function(wrap_pyfunction!(kv::kv_plan_diff, m)?)?;
    m.add_class::<kv::PageGather>()?;
    m.add_function(wrap_pyfunction!(frame::encode_frame, m)?)?;
    m.add_function(wrap_pyfunction!(frame::decode_frame, m)?)?;
    m.add_function(wrap_pyfunction!(frame::frame_checksum, m)?)?;
    m.add_function(wrap_pyfunction!(frame::decode_frame_as, m)?)?;
    m.add_function(wrap_pyfunction!(audit::audit_hash, m)?)?;
    m.add_function(wrap_pyfunction!(audit::audit_hash_parts, m)?)?;
    m.add_function(wrap_pyfunction!(audit::audit_entry, m)?)?;
    m.add_function(wrap_pyfunction!(audit::audit_decode_entry, m)?)?;
    m.add_function(wrap_pyfunction!(audit::audit_entry_hash, m)?)?;
    m.add_function(wrap_pyfunction!(audit::audit_verify_chain, m)?)?;
    m.add_function(wrap_pyfunction!(audit::audit_head_message, m)?)?;
    m.add_function(wrap_pyfunction!(audit::audit_append, m)?)?;
    m.add_class::<audit::TextHashes>()?;
    Ok(())
}
