//! A CPU interpreter for ML Programs: runs a package's `main` function op
//! by op, in program order, on candle tensors. It feeds calibration
//! (SparseGPT needs every layer's input activations on real data, through
//! [`Hook`]) and evaluation (`sdcompress run` / `sdcompress eval`).
//!
//! ```text
//! Package ──► Interpreter::load ──► plan: consts decoded once (constexpr chains
//!                                   materialised), one Step per computing op,
//!                                   slots for run-time values, frees per step
//! inputs ──► Interpreter::run ──► Step 0 ─► Step 1 ─► … ─► outputs
//!                                   │ hook before conv/linear/matmul with a const weight
//! ```
//!
//! # Numerics
//!
//! - **Compute is fp32.** Every float value (fp16, fp32 or fp64 in the
//!   program) is held as an f32 candle tensor. fp16 consts and constexpr
//!   outputs are decoded exactly and widened to f32, so weights are the exact
//!   stored values.
//! - **Inputs** are rounded to the dtype the program declares for them (an
//!   fp16 input is rounded to fp16 before the first op, as Core ML does when
//!   it is handed fp32 data), then widened to f32.
//! - **Intermediate values** declared fp16 keep full f32 precision by default
//!   (including the result of a `cast` to fp16). With
//!   [`Options::round_fp16`] every op output the program declares fp16 is
//!   rounded to fp16 (an emulation of fp16 storage; compute inside an op stays
//!   f32).
//! - **Outputs** are returned as f32 whatever their declared dtype; the fp32
//!   values are not rounded to a declared fp16 (so `run` shows the program's
//!   fp32-compute result, which is what the fixtures' tolerances describe).
//! - Integer values (shapes, indices) are held as i64, bools as u8 (0/1).
//! - Reductions inside an op (softmax, norms, matmul) accumulate in f32 in a
//!   fixed order, so results do not depend on the thread count.
//!
//! # Memory
//!
//! Consts live for the interpreter's lifetime (as f32: twice their fp16
//! size). A run-time value is dropped right after its last use (liveness is
//! computed once when loading), so a forward pass holds about the live
//! activation set.

pub mod calib;
mod hooks;
pub mod ops;
mod program;
mod value;

pub use hooks::{ConvGeometry, Hook, WeightKind, WeightOp};
pub use program::{Interpreter, IoSpec, Options, Profile, WeightOpInfo};
pub use value::Value;

use std::path::PathBuf;

/// What went wrong while loading or running a program, or with its data.
#[derive(Debug, thiserror::Error)]
pub enum InterpError {
    /// The program uses an op the interpreter does not implement.
    #[error("{}: unsupported op '{}' (op #{} '{}' producing '{}' in function '{}')", .0.path.display(), .0.op_type, .0.position, .0.name, .0.output, .0.function)]
    UnsupportedOp(Box<OpSite>),
    /// An op failed or is malformed.
    #[error("{}: op #{} '{}' ({}): {}", .0.path.display(), .0.position, .0.name, .0.op_type, .0.reason)]
    Op(Box<OpSite>),
    /// The program (not one op) is malformed or unsupported.
    #[error("{path}: {reason}")]
    Program {
        /// The model file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A calibration, input or output data file is bad.
    #[error("{path}: {reason}")]
    Data {
        /// The data file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A weight swap or other API misuse.
    #[error("{0}")]
    Usage(String),
    /// A value of the program could not be decoded.
    #[error(transparent)]
    Lib(#[from] crate::Error),
}

/// Where an op error happened, and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpSite {
    /// The model file.
    pub path: PathBuf,
    /// Function name.
    pub function: String,
    /// Index of the op in program order (consts included).
    pub position: usize,
    /// The op's name.
    pub name: String,
    /// The op type.
    pub op_type: String,
    /// Its first output.
    pub output: String,
    /// What is wrong (empty for an unsupported op).
    pub reason: String,
}

/// Result alias of this module.
pub type Result<T, E = InterpError> = std::result::Result<T, E>;
