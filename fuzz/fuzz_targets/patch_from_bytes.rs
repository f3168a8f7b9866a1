//! Strict binary decoding of a patch never panics, and whatever it accepts
//! survives an encode/decode round trip unchanged.
#![no_main]

use hybridsync_core::text::Patch;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(patch) = Patch::from_bytes(data) else {
        return;
    };
    let encoded = patch.to_bytes();
    match Patch::from_bytes(&encoded) {
        Ok(decoded) => assert_eq!(
            decoded, patch,
            "binary round trip changed the patch (re-encoded: {encoded:02x?})"
        ),
        Err(err) => panic!("re-encoded patch fails to decode: {err:?} (bytes: {encoded:02x?})"),
    }
});
