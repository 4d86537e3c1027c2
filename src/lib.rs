//! sdcompress: read, inspect, compress and rewrite Core ML ML Program
//! packages (`.mlpackage`), Stable Diffusion UNets first of all.
//!
//! The modules follow the data: [`package`] (directory, manifest) →
//! [`model`] / [`proto`] (the `Model` protobuf) → [`blob`] (`weight.bin`) →
//! [`mil`] (the program: ops, values, constexpr chains) → [`compress`]
//! (passes that rewrite it) → back out through [`package`]. [`kernels`]
//! holds the numeric kernels on plain slices. See ARCHITECTURE.md.

#![warn(missing_docs)]

pub mod blob;
pub mod compress;
pub mod error;
pub mod eval;
pub mod info;
pub mod interp;
pub mod kernels;
pub mod mil;
pub mod model;
pub mod package;
pub mod proto;
pub mod report;
pub mod sparsegpt;

pub use error::{Error, Result};
