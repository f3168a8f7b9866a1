//! The KV kernels never panic on arbitrary input: page geometry, page lists,
//! payloads and quantized rows all come from outside.
//!
//! Input layout: 12 bytes of geometry (heads, capacity, row_bytes, page_rows,
//! rows, n_pages: one byte each, plus six bytes of selectors), then `n_pages`
//! (head, page) byte pairs, then the payload. The same bytes are also
//! dequantized in every format and quantized as raw f32/f16/bf16 values.
#![no_main]

use hybridsync_core::kv::{
    dequantize, quantize, scatter_pages, verify_pages, Float, Format, PageLayout,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((g, rest)) = data.split_first_chunk::<12>() else {
        return;
    };
    let layout = PageLayout {
        heads: usize::from(g[0] % 9),
        capacity: usize::from(g[1]),
        row_bytes: usize::from(g[2] % 40),
        page_rows: usize::from(g[3] % 17),
        rows: usize::from(g[4]),
    };
    let n = usize::from(g[5] % 16).min(rest.len() / 2);
    let (index, payload) = rest.split_at(2 * n);
    let heads: Vec<u32> = index
        .iter()
        .step_by(2)
        .map(|&b| u32::from(b % 10))
        .collect();
    let pages: Vec<u32> = index
        .iter()
        .skip(1)
        .step_by(2)
        .map(|&b| u32::from(b % 20))
        .collect();
    let hashes: Vec<u64> = (0..n as u64).map(|i| i ^ u64::from(g[6])).collect();
    let _ = verify_pages(payload, &layout, &heads, &pages, &hashes);
    let mut buf = vec![0u8; layout.heads * layout.capacity * layout.row_bytes];
    let _ = scatter_pages(&mut buf, &layout, &heads, &pages, &hashes, payload);

    let formats = [
        Format::Q4_0,
        Format::Q8_0,
        Format::F16,
        Format::Mlx4(Float::F16),
        Format::Mlx4(Float::BF16),
        Format::Mlx4(Float::F32),
    ];
    let fmt = formats[usize::from(g[7]) % formats.len()];
    let width = [32usize, 64, 128][usize::from(g[8]) % 3];
    if let Ok(rb) = fmt.row_bytes(width) {
        let rows = payload.len() / rb;
        let mut out = vec![0u8; rows * width * 4];
        let _ = dequantize(&payload[..rows * rb], fmt, width, &mut out);
    }
    let src = [Float::F32, Float::F16, Float::BF16][usize::from(g[9]) % 3];
    let rows = payload.len() / (width * src.size());
    if let Ok(rb) = fmt.row_bytes(width) {
        let mut out = vec![0u8; rows * rb];
        let _ = quantize(
            &payload[..rows * width * src.size()],
            src,
            width,
            fmt,
            &mut out,
        );
    }
});
