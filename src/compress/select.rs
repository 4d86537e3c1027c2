//! Which values are weights a pass may compress, and along which axis their
//! output channels run. Shared by every compression pass.
//!
//! A weight is either a dense `const` or an already pruned
//! `constexpr_sparse_to_dense` whose mask and values are inline (what our
//! `prune` and coremltools' `prune_weights` write); the second kind is the
//! input of joint sparse + palettized compression.

use crate::mil::program::{is_constexpr, op_name, param, Param};
use crate::mil::value::{decode_value, static_shape, BlobFiles};
use crate::mil::{DType, FunctionIndex, Use};
use crate::proto::mil::{self, argument::binding, value, value_type, Operation};
use regex::Regex;
use std::collections::BTreeSet;

/// How a weight is stored in the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A dense `const` op.
    Const,
    /// A `constexpr_sparse_to_dense` op with inline mask and values (iOS16
    /// attribute form or iOS18 input form).
    Sparse,
}

/// A `const` (or inline sparse constexpr) op whose value some computing op
/// reads.
#[derive(Debug, Clone)]
pub struct Weight {
    /// Index into [`FunctionIndex::ops`].
    pub op_index: usize,
    /// How it is stored.
    pub source: Source,
    /// The name selection and configs match: a const op's `name` attribute
    /// (falling back to the output name); for a sparse op its output name,
    /// which our `prune` keeps equal to the pruned const's name.
    pub const_name: String,
    /// The output value name that consumers bind to.
    pub value_name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<usize>,
    /// Consumers: (op name, op type, parameter).
    pub consumers: Vec<(String, String, String)>,
    /// Why it can never be compressed (feeds a block output or a constexpr
    /// op), if so.
    pub blocked: Option<String>,
}

impl Weight {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Whether `op` is a `constexpr_sparse_to_dense` whose parameters are all
/// inline values (no other op feeds it), so that it can be rewritten on its
/// own.
pub fn is_inline_sparse(op: &Operation) -> bool {
    op.r#type == "constexpr_sparse_to_dense"
        && op.outputs.len() == 1
        && op.inputs.values().all(|a| {
            a.arguments
                .iter()
                .all(|b| matches!(b.binding, Some(binding::Binding::Value(_))))
        })
}

/// Every float `const` (or inline sparse constexpr, see [`Source`]) of at
/// least 10 elements that a computing op reads (the same definition of
/// "weight" that `info` and coremltools' checker use), in program order.
pub fn weights(index: &FunctionIndex<'_>) -> Vec<Weight> {
    let mut out = Vec::new();
    for (i, (_, op)) in index.ops.iter().enumerate() {
        let source = if op.r#type == "const" && op.outputs.len() == 1 {
            Source::Const
        } else if is_inline_sparse(op) {
            Source::Sparse
        } else {
            continue;
        };
        let o = &op.outputs[0];
        let Some(value_type::Type::TensorType(tt)) =
            o.r#type.as_ref().and_then(|t| t.r#type.as_ref())
        else {
            continue;
        };
        let Ok((dtype, shape)) = static_shape(tt, "") else {
            continue;
        };
        if !dtype.is_float() || shape.iter().product::<usize>() < 10 {
            continue;
        }
        let mut consumers = Vec::new();
        let mut blocked = None;
        for u in index.uses(&o.name) {
            match u {
                Use::Input { op: c, param, .. } => {
                    let cop = index.ops[*c].1;
                    if is_constexpr(&cop.r#type) {
                        blocked = Some(format!("already feeds {}", cop.r#type));
                    } else if cop.r#type != "const" {
                        consumers.push((
                            op_name(cop).unwrap_or_default(),
                            cop.r#type.clone(),
                            param.clone(),
                        ));
                    }
                }
                Use::BlockOutput { .. } => {
                    blocked = Some(
                        "feeds a block output directly (Core ML cannot take a constexpr there)"
                            .into(),
                    )
                }
            }
        }
        if consumers.is_empty() {
            continue;
        }
        out.push(Weight {
            op_index: i,
            source,
            const_name: match source {
                Source::Const => op_name(op).unwrap_or_else(|| o.name.clone()),
                Source::Sparse => o.name.clone(),
            },
            value_name: o.name.clone(),
            dtype,
            shape,
            consumers,
            blocked,
        });
    }
    out
}

/// Reads a scalar bool parameter (inline or from a const), default false.
fn bool_param(index: &FunctionIndex<'_>, op: &Operation, p: &str, blobs: &BlobFiles) -> bool {
    let v = match param(op, p) {
        Ok(Some(Param::Value(v))) => decode_value(v, blobs, "").ok(),
        Ok(Some(Param::Name(n))) => index
            .producer_op(n)
            .filter(|(_, o)| o.r#type == "const")
            .and_then(|(_, o)| o.attributes.get("val"))
            .and_then(|v| decode_value(v, blobs, "").ok()),
        _ => None,
    };
    v.and_then(|t| t.to_i64())
        .and_then(|v| v.first().copied())
        .unwrap_or(0)
        != 0
}

/// The output-channel axis of `w` as its consumers use it: 0 for conv,
/// linear and most ops; 1 for conv_transpose; for matmul it depends on
/// which operand the weight is and on `transpose_x`/`transpose_y`.
/// `Err` when consumers disagree.
pub fn channel_axis(
    index: &FunctionIndex<'_>,
    w: &Weight,
    blobs: &BlobFiles,
) -> Result<usize, String> {
    let rank = w.shape.len();
    let mut axis: Option<usize> = None;
    for u in index.uses(&w.value_name) {
        let Use::Input {
            op: c, param: p, ..
        } = u
        else {
            continue;
        };
        let cop = index.ops[*c].1;
        let a = match cop.r#type.as_str() {
            "conv_transpose" => 1,
            "matmul" if p == "y" => {
                if bool_param(index, cop, "transpose_y", blobs) {
                    rank - 2
                } else {
                    rank - 1
                }
            }
            "matmul" if p == "x" => {
                if bool_param(index, cop, "transpose_x", blobs) {
                    rank - 1
                } else {
                    rank - 2
                }
            }
            _ => 0,
        };
        match axis {
            None => axis = Some(a),
            Some(b) if b == a => {}
            Some(b) => {
                return Err(format!(
                    "consumers disagree on the output-channel axis ({b} vs {a})"
                ))
            }
        }
    }
    axis.ok_or_else(|| "no consumer".to_string())
}

/// Name-based selection from the command line.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Only weights whose const name or a consumer's name matches.
    pub include: Option<Regex>,
    /// Never weights whose const name or a consumer's name matches.
    pub exclude: Option<Regex>,
    /// Only weights read by at least one op of these types.
    pub op_types: Option<BTreeSet<String>>,
}

impl Selection {
    /// `None` if selected, else the reason it is not.
    pub fn reject(&self, w: &Weight) -> Option<String> {
        let matches = |r: &Regex| {
            r.is_match(&w.const_name) || w.consumers.iter().any(|(n, _, _)| r.is_match(n))
        };
        if let Some(r) = &self.include {
            if !matches(r) {
                return Some("not matched by --include".into());
            }
        }
        if let Some(r) = &self.exclude {
            if matches(r) {
                return Some("matched by --exclude".into());
            }
        }
        if let Some(t) = &self.op_types {
            if !w.consumers.iter().any(|(_, ty, _)| t.contains(ty)) {
                return Some("consumer op type not in --op-types".into());
            }
        }
        None
    }
}

/// Bytes a weight occupies in its package: the sizes of the blob records
/// its op references (for a const with an immediate value, the size of
/// that value).
pub fn stored_bytes(blobs: &BlobFiles, index: &FunctionIndex<'_>, w: &Weight) -> u64 {
    let op = index.ops[w.op_index].1;
    let mut total = 0u64;
    let mut any = false;
    for v in inline_values(op) {
        if let Some(value::Value::BlobFileValue(bv)) = &v.value {
            any = true;
            total += blobs
                .get(&bv.file_name)
                .and_then(|f| f.record(bv.offset).ok())
                .map_or(0, |r| r.size);
        }
    }
    if !any && w.source == Source::Const {
        total = (w.numel() as u64 * u64::from(w.dtype.bits())).div_ceil(8);
    }
    total
}

/// Every value written on `op` itself: attributes (except `name`) and
/// inline input bindings, in key order.
fn inline_values(op: &Operation) -> impl Iterator<Item = &mil::Value> {
    op.attributes
        .iter()
        .filter(|(k, _)| k.as_str() != "name")
        .map(|(_, v)| v)
        .chain(op.inputs.values().flat_map(|a| {
            a.arguments.iter().filter_map(|b| match &b.binding {
                Some(binding::Binding::Value(v)) => Some(v),
                _ => None,
            })
        }))
}

/// The weight file a weight's blobs live in (the first one its op
/// references), where its compressed form is written too.
pub fn weight_file(op: &Operation) -> String {
    inline_values(op)
        .find_map(|v| match &v.value {
            Some(value::Value::BlobFileValue(bv)) => Some(bv.file_name.clone()),
            _ => None,
        })
        .unwrap_or_else(|| crate::package::DEFAULT_WEIGHT_FILE.to_string())
}
