//! Passes that rewrite a package's program and weights. Each pass reads the
//! input [`crate::package::Package`], writes a new package through
//! [`crate::package::Staging`] and a [`crate::package::WeightSink`], and
//! never touches the input.

pub mod config;
pub mod decompress;
mod driver;
pub mod emit;
pub mod palettize;
pub mod pass;
pub mod prune;
pub mod quantize;
pub mod select;
pub mod target;

pub use driver::{rewrite_package, OpRewriter, Progress, RewriteStats, Rewritten};
