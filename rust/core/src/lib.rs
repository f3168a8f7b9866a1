//! Pure Rust kernels of hybridsync.
//!
//! This crate has no Python dependency: the `hybridsync-python` crate wraps it
//! into the `hybridsync._core` extension module.
//!
//! - [`text`]: the diff-match-patch family (diff, fuzzy match, patch) over
//!   Unicode code points, with a compact binary patch form and the standard
//!   diff-match-patch patch text.
//! - [`Error`]: the one error type every fallible function returns.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod error;
pub mod text;
pub mod varint;

pub use error::{Error, Result};
