//! SparseGPT layer-wise pruning (Frantar & Alistarh, "SparseGPT: Massive
//! Language Models Can Be Accurately Pruned in One-Shot", 2023), the
//! data-independent core: Hessian accumulation from a layer's input
//! activations and the pruning of one weight matrix given its Hessian.
//!
//! The algorithm and every quirk that decides which weights get pruned are
//! specified in `shared/docs/sparsegpt.md` (checked against IST-DASLab's
//! reference and coremltools 9.0); section numbers below (§n) refer to it.
//!
//! ```text
//! activations ──► Hessian (im2col for conv, streaming G = Σ x xᵀ, f64)
//!                    │ finish: H = (2/N)·G
//!                    ▼
//! weight ──► WeightLayout::extract (per conv group) ──► prune_layer ──► insert
//!            [Cout, Cin/g, kh, kw] → [Cout/g, Cin/g·kh·kw]      (mask, loss)
//! ```
//!
//! - [`hessian`]: [`Hessian`] (linear/matmul inputs, conv inputs via im2col
//!   with explicit per-side padding, stride, dilation; one per conv group).
//! - [`prune`]: [`prune_layer`]: dead inputs, damping, f64 factorisation,
//!   the blocked column sweep with the reference mask rules (unstructured
//!   `K+1`/`<=`, or n:m), reported loss (§9), optional relative error.
//! - [`layout`]: [`WeightLayout`], between a weight's own layout and the
//!   2-D matrices the kernel works on.
//! - [`layerfile`]: one layer as `.safetensors` in the format of the shared
//!   numpy oracle (`W`, `X` or `H` in; `W`, `mask`, `row_losses` out).
//!
//! - [`calibrate`]: the whole-program driver: the interpreter runs the
//!   calibration samples, hooks feed each layer's [`Hessian`], stages are
//!   pruned in program order (`prune --method sparsegpt`).

pub mod calibrate;
pub mod hessian;
pub mod layerfile;
pub mod layout;
pub mod prune;
#[cfg(test)]
mod reference;

pub use hessian::{ConvGeometry, Hessian, Precision};
pub use layout::WeightLayout;
pub use prune::{prune_layer, MaskRule, Pattern, PruneOutcome, PruneParams};

use std::path::PathBuf;

/// What can go wrong in this module. The caller adds the layer's name.
#[derive(Debug, thiserror::Error)]
pub enum SparseGptError {
    /// A buffer does not have the length its stated shape implies.
    #[error("{what}: expected {expected} values, found {found}")]
    Length {
        /// Which buffer.
        what: &'static str,
        /// Length implied by the shape.
        expected: usize,
        /// Actual length.
        found: usize,
    },
    /// Shapes that do not fit together (activation vs Hessian, weight vs
    /// Hessian, conv geometry vs input).
    #[error("{0}")]
    Shape(String),
    /// A parameter outside its domain (sparsity, n:m, block size, damping).
    #[error("invalid parameter: {0}")]
    Param(String),
    /// NaN or infinity in an input. Activations that overflow fp16 are the
    /// usual cause; the Hessian would be meaningless.
    #[error("{what} holds a non-finite value at index {index}")]
    NonFinite {
        /// Which input (`activations`, `hessian`, `weight`).
        what: &'static str,
        /// Flat index of the first offending element.
        index: usize,
    },
    /// The damped Hessian is not positive definite even after the allowed
    /// retries with 10× more damping (§4.4 [rec]).
    #[error(
        "damped hessian is not positive definite (pivot {pivot} failed at percdamp {percdamp:e}, \
         after {attempts} attempt(s))"
    )]
    NotPositiveDefinite {
        /// First failing pivot (column index of the Hessian).
        pivot: usize,
        /// Relative damping of the last attempt.
        percdamp: f64,
        /// Factorisations tried.
        attempts: u32,
    },
    /// Running the calibration samples through the program failed, or a
    /// layer met there cannot be pruned.
    #[error("calibration: {0}")]
    Calibration(String),
    /// A layer file (`.safetensors`) that cannot be read or written.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Result alias for this module.
pub type Result<T, E = SparseGptError> = std::result::Result<T, E>;

/// The first non-finite element of `v`, as an error for input `what`.
fn check_finite<T: Copy + Into<f64> + Send + Sync>(what: &'static str, v: &[T]) -> Result<()> {
    use rayon::prelude::*;
    // Whole chunks first: a per-element parallel search is far slower on
    // the 10⁸ entries of a large Hessian.
    const CHUNK: usize = 1 << 16;
    let bad = |x: &T| !(*x).into().is_finite();
    match v.par_chunks(CHUNK).position_first(|ch| ch.iter().any(bad)) {
        Some(k) => {
            let within = v[k * CHUNK..].iter().position(bad).unwrap_or(0);
            Err(SparseGptError::NonFinite {
                what,
                index: k * CHUNK + within,
            })
        }
        None => Ok(()),
    }
}
