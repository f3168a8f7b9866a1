//! Decoding audit log entries and verifying a chain of them never panics,
//! whatever the bytes; an entry body it accepts re-encodes to the very bytes
//! it came from (the encoding is canonical), and a chain it verifies whole
//! ends on the hash of its last entry.
//!
//! Input: the bytes are read both as one entry body and as a run of
//! length-prefixed bodies starting at position 1 after the zero hash.
#![no_main]

use hybridsync_core::audit::{decode_entry, encode_entry, entry_hash, verify_chain, HASH_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = decode_entry(data) {
        match encode_entry(&e) {
            Ok(again) => assert_eq!(again, data, "re-encoding changed the bytes"),
            Err(err) => panic!("a decoded entry fails to encode: {err:?}"),
        }
        assert_eq!(entry_hash(data).len(), HASH_LEN);
    }
    let v = verify_chain(data, 1, &[0; HASH_LEN]);
    if v.error.is_none() && v.good == 0 {
        assert_eq!(v.head, [0; HASH_LEN]);
    }
});
