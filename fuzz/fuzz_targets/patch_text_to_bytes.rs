//! Cross-format check: every patch that parses from patch text can travel in
//! the binary form, i.e. `from_bytes(to_bytes(p)) == p`.
#![no_main]

use hybridsync_core::text::Patch;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(patch) = Patch::from_text(text) else {
        return;
    };
    let encoded = patch.to_bytes();
    match Patch::from_bytes(&encoded) {
        Ok(decoded) => assert_eq!(
            decoded, patch,
            "binary form changed a parsed patch (bytes: {encoded:02x?})"
        ),
        Err(err) => {
            panic!("binary form of a parsed patch fails to decode: {err:?} (bytes: {encoded:02x?})")
        }
    }
});
