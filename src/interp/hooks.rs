//! Activation capture: a callback that runs before every op whose weight is
//! a compile-time value (a `const` or a materialised constexpr chain) —
//! `conv`, `linear`, and `matmul` with one const operand — and receives the
//! op's input activation. SparseGPT accumulates its Hessians `X·Xᵀ` there;
//! sequential (block-by-block) compression then swaps the pruned weight in
//! with [`Interpreter::set_weight`](super::Interpreter::set_weight) and runs
//! again.

use candle_core::Tensor;

/// Geometry of a convolution, resolved for the input it is about to see
/// (`same` padding depends on the input size).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Stride per spatial dimension.
    pub strides: Vec<usize>,
    /// (before, after) zero padding per spatial dimension.
    pub pads: Vec<(usize, usize)>,
    /// Dilation per spatial dimension.
    pub dilations: Vec<usize>,
    /// Channel groups.
    pub groups: usize,
}

/// How the weight enters the op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightKind {
    /// `conv(x, weight)`, weight `[C_out, C_in/groups, *K]`.
    Conv(ConvGeometry),
    /// `linear(x, weight)`: `x · weightᵀ`, weight `[out, in]`.
    Linear,
    /// `matmul(x, y)` with one const operand.
    Matmul {
        /// The const is `x` (the activation is `y`); otherwise it is `y`.
        weight_is_x: bool,
        /// The op's `transpose_x`.
        transpose_x: bool,
        /// The op's `transpose_y`.
        transpose_y: bool,
    },
}

/// An op about to run, as a hook sees it.
#[derive(Debug, Clone)]
pub struct WeightOp<'a> {
    /// Index of the op in program order (consts included).
    pub position: usize,
    /// The op's name.
    pub name: &'a str,
    /// Its type (`conv`, `linear`, `matmul`).
    pub op_type: &'a str,
    /// The name of the weight value (the const's output name, which the
    /// compression passes use too).
    pub weight: &'a str,
    /// The weight's shape.
    pub weight_shape: &'a [usize],
    /// How the weight is applied.
    pub kind: WeightKind,
}

/// A callback run before each op with a const weight.
pub trait Hook {
    /// `input` is the op's activation operand (`x` of conv and linear, the
    /// non-const operand of matmul), as f32. An error stops the run; it is
    /// reported as an error of this op.
    fn before_weight_op(&mut self, op: &WeightOp<'_>, input: &Tensor) -> Result<(), String>;
}
