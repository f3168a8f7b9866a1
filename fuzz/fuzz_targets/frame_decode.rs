//! Decoding a frame from the wire never panics, whatever the bytes; a frame
//! it accepts survives an encode/decode round trip unchanged, and an
//! uncompressed one re-encodes to the very bytes it came from (the encoding
//! is canonical, but for a flagged KV section of no entries: accepted, never
//! written).
//!
//! Input: a mode byte, then the frame. Mode bit 0 clear: the bytes are decoded
//! as they are. Set: they become a frame body behind a valid header and in
//! front of a valid checksum, so that the fuzzer gets past the checksum and
//! reaches the body, the metadata block and the KV section (the flag byte is
//! the first byte of the rest). Bit 1 set: small limits (4 KiB frames, 64 KiB
//! KV caches), so that the limit checks are reached too.
#![no_main]

use hybridsync_core::frame::{
    decode_frame, encode_frame, frame_checksum, EncodeOptions, Limits, FLAG_COMPRESSED, FLAG_KV,
    MARK, PROTOCOL_VERSION,
};
use libfuzzer_sys::fuzz_target;
use xxhash_rust::xxh3::xxh3_64;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let signed;
    let frame_bytes = if mode & 1 == 0 {
        rest
    } else {
        let mut out = vec![MARK | PROTOCOL_VERSION];
        out.extend_from_slice(rest);
        // The checksum a sender would write (it leaves whole KV pages out),
        // or a plain one where the KV section does not decode.
        let sum = frame_checksum(&out).unwrap_or(xxh3_64(&out) as u32);
        out.extend_from_slice(&sum.to_le_bytes());
        signed = out;
        &signed[..]
    };
    let limits = if mode & 2 == 0 {
        Limits::default()
    } else {
        Limits {
            max_bytes: 4096,
            max_kv_bytes: 1 << 16,
        }
    };
    let mut scratch = Vec::new();
    let Ok(frame) = decode_frame(frame_bytes, &limits, &mut scratch) else {
        return;
    };
    let flags = frame_bytes.get(1).copied().unwrap_or_default();
    let canonical = flags & FLAG_COMPRESSED == 0 && (flags & FLAG_KV == 0 || !frame.kv.is_empty());
    let opts = EncodeOptions {
        compress_threshold: None,
        level: 3,
    };
    let encoded = match encode_frame(&frame, &opts) {
        Ok(e) => e,
        Err(err) => panic!("a decoded frame fails to encode: {err:?}"),
    };
    if canonical {
        assert_eq!(encoded, frame_bytes, "re-encoding changed the bytes");
    }
    let mut scratch2 = Vec::new();
    match decode_frame(&encoded, &Limits::default(), &mut scratch2) {
        Ok(again) => assert_eq!(again, frame, "the round trip changed the frame"),
        Err(err) => panic!("a re-encoded frame fails to decode: {err:?}"),
    }
});
