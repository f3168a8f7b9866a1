//! The single error type of the core crate.
//!
//! Every kind maps onto one class of the Python `hybridsync.errors`
//! hierarchy; user-supplied input never panics, it returns one of these.

/// An error from a hybridsync kernel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Bytes or text from outside (a patch, a frame) are malformed,
    /// truncated, or of an unknown version.
    #[error("{0}")]
    Decode(String),
    /// An argument is outside its allowed range.
    #[error("{0}")]
    InvalidArgument(String),
    /// An input exceeds a structural or configured limit.
    #[error("{0}")]
    LimitExceeded(String),
}

impl Error {
    /// A [`Error::Decode`] with the given message.
    pub fn decode(msg: impl Into<String>) -> Self {
        Error::Decode(msg.into())
    }

    /// An [`Error::InvalidArgument`] with the given message.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
}

/// `Result` with the core [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
