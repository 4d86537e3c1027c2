//! The library's top-level error: one variant per layer, each naming the
//! file it is about. Messages are one line, lowercase, no trailing period.

use crate::blob::BlobError;
use crate::mil::MilError;
use crate::package::PackageError;
use std::path::{Path, PathBuf};

/// Any failure of a library operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Package layout, manifest, model type or output location.
    #[error(transparent)]
    Package(#[from] PackageError),
    /// A weight file.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// The program inside `path` (the model file).
    #[error("{path}: {source}")]
    Mil {
        /// The model file.
        path: PathBuf,
        /// What is wrong.
        source: MilError,
    },
    /// Other I/O.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl Error {
    /// Wraps a program error found in model file `path`. Blob errors
    /// already name their own file and pass through unchanged.
    pub fn mil(path: impl AsRef<Path>, e: MilError) -> Self {
        match e {
            MilError::Blob(b) => Error::Blob(b),
            e => Error::Mil {
                path: path.as_ref().to_path_buf(),
                source: e,
            },
        }
    }
}

/// Result alias for library operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
