//! Strict binary decoding of a delta never panics, whatever it accepts
//! survives an encode/decode round trip unchanged, and applying it to any
//! text either fits (and then keeps the text's length arithmetic) or says it
//! does not fit, never panics.
//!
//! Input: a length byte `n`, then up to `n` bytes of UTF-8 text (lossy), then
//! the delta's bytes.
#![no_main]

use hybridsync_core::text::{Delta, DeltaOp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let split = (n as usize).min(rest.len());
    let (text, raw) = rest.split_at(split);
    let text: Vec<char> = String::from_utf8_lossy(text).chars().collect();
    let Ok(delta) = Delta::from_bytes(raw) else {
        return;
    };
    let encoded = delta.to_bytes();
    match Delta::from_bytes(&encoded) {
        Ok(decoded) => assert_eq!(decoded, delta, "binary round trip changed the delta"),
        Err(err) => panic!("re-encoded delta fails to decode: {err:?}"),
    }
    if let Some(out) = delta.apply(&text) {
        let (mut kept, mut inserted, mut deleted) = (0usize, 0usize, 0usize);
        for op in &delta.ops {
            match op {
                DeltaOp::Keep(k) => kept += k,
                DeltaOp::Insert(s) => inserted += s.chars().count(),
                DeltaOp::Delete(d) => deleted += d,
            }
        }
        assert!(
            kept + deleted <= text.len(),
            "a delta that fits ran past the text"
        );
        assert_eq!(out.len(), text.len() - deleted + inserted, "wrong length");
    }
});
