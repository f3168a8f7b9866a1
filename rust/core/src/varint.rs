//! LEB128 variable-length integers with strict (canonical) decoding.

use crate::error::{Error, Result};

/// Append `value` as an unsigned LEB128 varint.
pub fn write_u64(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Append `value` zigzag-encoded as a varint.
pub fn write_i64(out: &mut Vec<u8>, value: i64) {
    write_u64(out, ((value << 1) ^ (value >> 63)) as u64);
}

/// A cursor over untrusted bytes; every read is bounds-checked.
#[derive(Debug)]
pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data, pos: 0 }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    /// Current offset from the start.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8> {
        let b = *self
            .data
            .get(self.pos)
            .ok_or_else(|| Error::decode(format!("truncated input at byte {}", self.pos)))?;
        self.pos += 1;
        Ok(b)
    }

    /// `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(Error::decode(format!(
                "truncated input: need {n} bytes at byte {}, {} left",
                self.pos,
                self.remaining()
            )));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// An unsigned varint; overlong encodings and values over 64 bits fail.
    pub fn u64(&mut self) -> Result<u64> {
        let start = self.pos;
        let mut value: u64 = 0;
        for i in 0..10u32 {
            let b = self.u8()?;
            let part = u64::from(b & 0x7f);
            if i == 9 && b > 1 {
                return Err(Error::decode(format!(
                    "varint at byte {start} overflows 64 bits"
                )));
            }
            value |= part << (7 * i);
            if b & 0x80 == 0 {
                if b == 0 && i > 0 {
                    return Err(Error::decode(format!(
                        "non-canonical varint at byte {start}"
                    )));
                }
                return Ok(value);
            }
        }
        Err(Error::decode(format!("varint at byte {start} is too long")))
    }

    /// A zigzag-encoded signed varint.
    pub fn i64(&mut self) -> Result<i64> {
        let v = self.u64()?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    /// A varint that must fit in `usize` and be at most `max`.
    pub fn usize_max(&mut self, max: usize, what: &str) -> Result<usize> {
        let v = self.u64()?;
        match usize::try_from(v) {
            Ok(v) if v <= max => Ok(v),
            _ => Err(Error::decode(format!("{what} {v} exceeds its limit {max}"))),
        }
    }

    /// Fails unless every byte was consumed.
    pub fn finish(&self) -> Result<()> {
        if self.remaining() != 0 {
            return Err(Error::decode(format!(
                "{} trailing bytes after byte {}",
                self.remaining(),
                self.pos
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_strictness() {
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            write_u64(&mut out, v);
            let mut r = Reader::new(&out);
            assert_eq!(r.u64(), Ok(v));
            assert!(r.finish().is_ok());
            for cut in 0..out.len() {
                assert!(Reader::new(&out[..cut]).u64().is_err());
            }
        }
        for v in [0i64, -1, 1, i64::MIN, i64::MAX] {
            let mut out = Vec::new();
            write_i64(&mut out, v);
            assert_eq!(Reader::new(&out).i64(), Ok(v));
        }
        assert!(Reader::new(&[0x80, 0x00]).u64().is_err());
        assert!(Reader::new(&[0xff; 10]).u64().is_err());
        assert!(
            Reader::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02])
                .u64()
                .is_err()
        );
    }
}
