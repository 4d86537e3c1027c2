//! Views over an ML Program: functions, blocks, ops in order, const values
//! and their blobs, the consumers of each value, constexpr materialisation.
//!
//! The protobuf (`crate::proto::mil`) stays the source of truth: this layer
//! indexes it and decodes values on demand, so a 5 GB model costs only its
//! op graph in memory until a pass asks for a weight.

pub mod constexpr;
pub mod dtype;
pub mod program;
pub mod tensor;
pub mod value;

pub use dtype::DType;
pub use program::{FunctionIndex, OpId, Use};
pub use tensor::{Data, Tensor};
pub use value::BlobFiles;

use crate::blob::BlobError;

/// Something in the program is malformed or unsupported.
#[derive(Debug, thiserror::Error)]
pub enum MilError {
    /// A value, type or op is malformed. `context` names where (function,
    /// op, parameter).
    #[error("{context}: {reason}")]
    Invalid {
        /// Where.
        context: String,
        /// What is wrong.
        reason: String,
    },
    /// A construct we do not handle.
    #[error("{context}: unsupported {what}")]
    Unsupported {
        /// Where.
        context: String,
        /// What.
        what: String,
    },
    /// A blob the program references is missing or inconsistent.
    #[error(transparent)]
    Blob(#[from] BlobError),
}

impl MilError {
    /// Shorthand for [`MilError::Invalid`].
    pub fn invalid(context: impl Into<String>, reason: impl Into<String>) -> Self {
        MilError::Invalid {
            context: context.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`MilError::Unsupported`].
    pub fn unsupported(context: impl Into<String>, what: impl Into<String>) -> Self {
        MilError::Unsupported {
            context: context.into(),
            what: what.into(),
        }
    }
}
