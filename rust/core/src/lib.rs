//! Pure Rust kernels of hybridsync.
//!
//! This crate has no Python dependency: the `hybridsync-python` crate wraps it
//! into the `hybridsync._core` extension module.
//!
//! - [`text`]: the diff-match-patch family (diff, fuzzy match, patch) over
//!   Unicode code points, with a compact binary patch form and the standard
//!   diff-match-patch patch text.
//! - [`kv`]: quantized KV-cache codecs (GGML Q4_0/Q8_0, MLX affine 4-bit)
//!   and page hashing, gathering and checked scattering.
//! - [`frame`]: the wire format of a link (whole frames: header, entries,
//!   metadata block, KV section, zstd body compression, checksum).
//! - [`audit`]: the audit log's BLAKE3 hashing, entry encoding, hash-chain
//!   verification and the signed head message.
//! - [`Error`]: the one error type every fallible function returns.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod audit;
pub mod error;
pub mod frame;
pub mod kv;
pub mod text;
pub mod varint;

pub use error::{Error, Result};
