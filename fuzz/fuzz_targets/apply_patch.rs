//! Applying an arbitrary (decodable) patch to arbitrary text never panics.
//!
//! Input layout: a little-endian `u16` length `n`, then `n` bytes holding the
//! patch (binary form; when that fails to decode, the same bytes are tried as
//! patch text), then the document as UTF-8 (decoded lossily).
#![no_main]

use hybridsync_core::text::{apply_patch, Patch, PatchOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((len, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let split = usize::from(u16::from_le_bytes(*len)).min(rest.len());
    let (patch_bytes, text_bytes) = rest.split_at(split);
    let patch = match Patch::from_bytes(patch_bytes) {
        Ok(patch) => patch,
        Err(_) => match std::str::from_utf8(patch_bytes).map(Patch::from_text) {
            Ok(Ok(patch)) => patch,
            _ => return,
        },
    };
    let text: Vec<char> = String::from_utf8_lossy(text_bytes).chars().collect();
    // Default options are valid, so an error here is a bug as much as a panic.
    if let Err(err) = apply_patch(&patch, &text, &PatchOptions::default()) {
        panic!("apply_patch failed with default options: {err:?}");
    }
});
