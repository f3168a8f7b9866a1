//! The code-point types the kernels run over.

use std::fmt::Debug;
use std::hash::Hash;

use super::Search;

/// One code point of a text. CPython stores a string as 1-, 2- or 4-byte
/// code points (PEP 393); the kernels run over each of those layouts as they
/// are, and over `char`.
pub trait Unit: Search + Copy + Eq + Ord + Hash + Debug + Send + Sync + 'static {
    /// The code point.
    fn code(self) -> u32;
    /// The unit for a code point, if it fits this width.
    fn from_code(code: u32) -> Option<Self>;
    /// The code point as a `char` (`None` for a lone surrogate).
    #[inline]
    fn to_char(self) -> Option<char> {
        char::from_u32(self.code())
    }
}

impl Unit for u8 {
    #[inline]
    fn code(self) -> u32 {
        u32::from(self)
    }
    #[inline]
    fn from_code(code: u32) -> Option<Self> {
        u8::try_from(code).ok()
    }
}

impl Unit for u16 {
    #[inline]
    fn code(self) -> u32 {
        u32::from(self)
    }
    #[inline]
    fn from_code(code: u32) -> Option<Self> {
        u16::try_from(code).ok()
    }
}

impl Unit for u32 {
    #[inline]
    fn code(self) -> u32 {
        self
    }
    #[inline]
    fn from_code(code: u32) -> Option<Self> {
        Some(code)
    }
}

impl Unit for char {
    #[inline]
    fn code(self) -> u32 {
        self as u32
    }
    #[inline]
    fn from_code(code: u32) -> Option<Self> {
        char::from_u32(code)
    }
    #[inline]
    fn to_char(self) -> Option<char> {
        Some(self)
    }
}

/// Convert a text between unit types; `None` if a code point does not fit.
pub(crate) fn convert<A: Unit, B: Unit>(text: &[A]) -> Option<Vec<B>> {
    text.iter().map(|&u| B::from_code(u.code())).collect()
}
