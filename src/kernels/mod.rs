//! Pure numeric kernels on plain slices. Nothing here knows about MIL,
//! protobuf or files: that keeps them easy to test and to reuse.

pub mod bits;
pub mod kmeans;
pub mod palettize;
pub mod pcs;
pub mod prune;
pub mod quantize;
pub mod vkmeans;
