//! Which consts are weights a pass may compress, and along which axis their
//! output channels run. Shared by every compression pass.

use crate::mil::program::{is_constexpr, op_name, param, Param};
use crate::mil::value::{decode_value, static_shape, BlobFiles};
use crate::mil::{DType, FunctionIndex, Use};
use crate::proto::mil::{value_type, Operation};
use regex::Regex;
use std::collections::BTreeSet;

/// A `const` op whose value some computing op reads.
#[derive(Debug, Clone)]
pub struct ConstWeight {
    /// Index into [`FunctionIndex::ops`].
    pub op_index: usize,
    /// The const op's `name` attribute (falls back to the output name).
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

impl ConstWeight {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Every float `const` of at least 10 elements that a computing op reads
/// (the same definition of "weight" that `info` and coremltools' checker
/// use), in program order.
pub fn const_weights(index: &FunctionIndex<'_>) -> Vec<ConstWeight> {
    let mut out = Vec::new();
    for (i, (_, op)) in index.ops.iter().enumerate() {
        if op.r#type != "const" || op.outputs.len() != 1 {
            continue;
        }
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
        out.push(ConstWeight {
            op_index: i,
            const_name: op_name(op).unwrap_or_else(|| o.name.clone()),
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
    w: &ConstWeight,
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
    pub fn reject(&self, w: &ConstWeight) -> Option<String> {
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

/// Bytes a const weight occupies in its package: its blob record's size, or
/// the size of its immediate value.
pub fn stored_bytes(blobs: &BlobFiles, index: &FunctionIndex<'_>, w: &ConstWeight) -> u64 {
    let op = index.ops[w.op_index].1;
    match op.attributes.get("val").and_then(|v| v.value.as_ref()) {
        Some(crate::proto::mil::value::Value::BlobFileValue(bv)) => blobs
            .get(&bv.file_name)
            .and_then(|f| f.record(bv.offset).ok())
            .map_or(0, |r| r.size),
        _ => (w.numel() as u64 * u64::from(w.dtype.bits())).div_ceil(8),
    }
}
