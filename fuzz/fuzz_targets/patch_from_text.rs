//! Parsing the diff-match-patch patch text never panics, and whatever it
//! accepts survives a print/parse round trip unchanged.
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
    let printed = patch.to_text();
    match Patch::from_text(&printed) {
        Ok(parsed) => assert_eq!(
            parsed, patch,
            "text round trip changed the patch (printed: {printed:?})"
        ),
        Err(err) => panic!("printed patch fails to parse: {err:?} (text: {printed:?})"),
    }
});
