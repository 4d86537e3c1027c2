//! `decompress`: replace every `constexpr_*` chain that feeds a computing op
//! (or a block output) by a plain `const` holding the dense weight.
//!
//! The new const takes the name of the constexpr output it replaces, so
//! consumers keep their bindings. Constexpr ops that only fed other
//! constexpr ops disappear with the chain, and so do `const` ops that only
//! fed constexpr ops. A package with nothing compressed round-trips
//! losslessly (same protobuf, same weight bytes).

use super::driver::{OpRewriter, Rewritten};
use super::emit::data_value;
use crate::error::Error;
use crate::mil::constexpr::Evaluator;
use crate::mil::program::{is_constexpr, Use};
use crate::mil::value::{string_value, tensor_value_type};
use crate::mil::{BlobFiles, FunctionIndex, Tensor};
use crate::package::{WeightSink, DEFAULT_WEIGHT_FILE};
use crate::proto::mil::{self, NamedValueType, Operation};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The decompress pass.
pub struct Decompress {
    /// Model file, for error messages.
    pub model_path: PathBuf,
    /// `specificationVersion` (decides which dtypes may live in blobs).
    pub spec_version: i32,
    /// Number of constexpr ops materialised.
    pub materialized: usize,
    /// Parameters materialised.
    pub parameters: u64,
}

impl Decompress {
    /// A pass for a model at `model_path` with the given spec version.
    pub fn new(model_path: PathBuf, spec_version: i32) -> Self {
        Self {
            model_path,
            spec_version,
            materialized: 0,
            parameters: 0,
        }
    }
}

fn feeds_non_constexpr(index: &FunctionIndex<'_>, name: &str) -> bool {
    index.uses(name).iter().any(|u| match u {
        Use::Input { op, .. } => !is_constexpr(&index.ops[*op].1.r#type),
        Use::BlockOutput { .. } => true,
    })
}

/// The weight file that the chain behind `op` reads from, so the dense
/// weight lands in the same file.
fn chain_file(index: &FunctionIndex<'_>, op: &Operation, depth: usize) -> Option<String> {
    if depth > 16 {
        return None;
    }
    let mut found = None;
    let mut names = Vec::new();
    for (_, arg) in op.inputs.iter() {
        for b in &arg.arguments {
            match &b.binding {
                Some(mil::argument::binding::Binding::Value(v)) => {
                    if let Some(mil::value::Value::BlobFileValue(bv)) = &v.value {
                        found.get_or_insert(bv.file_name.clone());
                    }
                }
                Some(mil::argument::binding::Binding::Name(n)) => names.push(n.clone()),
                None => {}
            }
        }
    }
    for v in op.attributes.values() {
        if let Some(mil::value::Value::BlobFileValue(bv)) = &v.value {
            found.get_or_insert(bv.file_name.clone());
        }
    }
    if found.is_some() {
        return found;
    }
    names
        .iter()
        .filter_map(|n| index.producer_op(n))
        .find_map(|(_, p)| {
            if p.r#type == "const" {
                match p.attributes.get("val").and_then(|v| v.value.as_ref()) {
                    Some(mil::value::Value::BlobFileValue(bv)) => Some(bv.file_name.clone()),
                    _ => None,
                }
            } else {
                chain_file(index, p, depth + 1)
            }
        })
}

/// Builds a `const` op for `t` named `name`, writing its data to the sink
/// when coremltools would store it in a weight file.
pub fn const_op(
    name: &str,
    t: &Tensor,
    file: &str,
    spec_version: i32,
    sink: &mut WeightSink<'_>,
) -> Result<Operation, Error> {
    let val = data_value(
        t.dtype,
        &t.shape,
        &t.data,
        sink,
        file,
        spec_version,
        Path::new(name),
    )?;
    let mut attributes = BTreeMap::new();
    attributes.insert("name".to_string(), string_value(name));
    attributes.insert("val".to_string(), val);
    Ok(Operation {
        r#type: "const".into(),
        inputs: BTreeMap::new(),
        outputs: vec![NamedValueType {
            name: name.to_string(),
            r#type: Some(tensor_value_type(t.dtype, &t.shape)),
        }],
        blocks: vec![],
        attributes,
    })
}

impl OpRewriter for Decompress {
    fn rewrite(
        &mut self,
        index: &FunctionIndex<'_>,
        _op_index: usize,
        op: &Operation,
        blobs: &BlobFiles,
        sink: &mut WeightSink<'_>,
    ) -> Result<Rewritten, Error> {
        if op.r#type == "const" {
            // A const that only fed constexpr ops dies with them.
            let orphaned = op.outputs.iter().all(|o| {
                let uses = index.uses(&o.name);
                !uses.is_empty()
                    && uses.iter().all(|u| match u {
                        Use::Input { op, .. } => is_constexpr(&index.ops[*op].1.r#type),
                        Use::BlockOutput { .. } => false,
                    })
            });
            return Ok(if orphaned {
                Rewritten::Drop
            } else {
                Rewritten::Keep
            });
        }
        if !is_constexpr(&op.r#type) {
            return Ok(Rewritten::Keep);
        }
        let wanted: Vec<usize> = (0..op.outputs.len())
            .filter(|&k| feeds_non_constexpr(index, &op.outputs[k].name))
            .collect();
        if wanted.is_empty() {
            return Ok(Rewritten::Drop);
        }
        let mut ev = Evaluator::new(index, blobs);
        let outs = ev
            .materialize(op)
            .map_err(|e| Error::mil(&self.model_path, e))?;
        let file = chain_file(index, op, 0).unwrap_or_else(|| DEFAULT_WEIGHT_FILE.to_string());
        let mut ops = Vec::with_capacity(wanted.len());
        for k in wanted {
            let t = &outs[k];
            self.parameters += t.numel() as u64;
            ops.push(const_op(
                &op.outputs[k].name,
                t,
                &file,
                self.spec_version,
                sink,
            )?);
        }
        self.materialized += 1;
        Ok(Rewritten::Replace(ops))
    }
}
