//! `info`: what a package holds, computed from the program's types and the
//! blob records only (no weight payload is read, so a 5 GB model costs
//! milliseconds). Serialised as the versioned `sdcompress.info/1` JSON.

use crate::error::Error;
use crate::mil::program::{is_constexpr, is_ordinary, op_label, param, Param};
use crate::mil::value::{numel, static_shape, tensor_type_of};
use crate::mil::{DType, FunctionIndex, Use};
use crate::model::{target_for_opset, target_for_spec};
use crate::package::Package;
use crate::proto::mil::{self, value, Operation};
use crate::proto::spec::{array_feature_type::ArrayDataType, feature_type, FeatureDescription};
use serde::Serialize;
use std::collections::BTreeMap;

/// Version tag of the JSON document.
pub const SCHEMA: &str = "sdcompress.info/1";

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Info {
    /// Always [`SCHEMA`].
    pub schema: &'static str,
    /// The package path as given.
    pub path: String,
    /// `Model.specificationVersion`.
    pub specification_version: i32,
    /// Deployment target implied by the spec version (`iOS18`, ...).
    pub deployment_target: Option<&'static str>,
    /// Model inputs from the description.
    pub inputs: Vec<Feature>,
    /// Model outputs from the description.
    pub outputs: Vec<Feature>,
    /// Per-function facts.
    pub functions: Vec<FunctionInfo>,
    /// Weight totals (all functions).
    pub weights: WeightTotals,
    /// Compressed weight totals.
    pub compressed: CompressedTotals,
    /// The ten largest weights.
    pub largest: Vec<WeightInfo>,
    /// Weight files.
    pub weight_files: Vec<WeightFile>,
    /// `model.mlmodel` size in bytes.
    pub model_bytes: u64,
}

/// A model input or output.
#[derive(Debug, Serialize)]
pub struct Feature {
    /// Name.
    pub name: String,
    /// Kind (`multiArray`, `image`, `int64`, ...) .
    pub kind: String,
    /// Element type for multi-arrays (`fp16`, `fp32`, `fp64`, `int32`, `int8`).
    pub dtype: Option<String>,
    /// Shape for multi-arrays.
    pub shape: Vec<i64>,
}

/// One function.
#[derive(Debug, Serialize)]
pub struct FunctionInfo {
    /// Function name.
    pub name: String,
    /// Opset string.
    pub opset: String,
    /// Deployment target of the opset.
    pub deployment_target: Option<&'static str>,
    /// MIL inputs.
    pub inputs: Vec<Port>,
    /// Block outputs.
    pub outputs: Vec<Port>,
    /// Number of ops (nested blocks included).
    pub op_count: usize,
    /// Op-type histogram of the protobuf.
    pub op_types: BTreeMap<String, usize>,
    /// Parameters of constexpr ops given inline (attribute or input values,
    /// not references). coremltools' in-memory program turns each into a
    /// `const` op, so its histogram shows `const` + this many.
    pub inline_constexpr_params: usize,
}

/// A typed MIL value at a function boundary.
#[derive(Debug, Serialize)]
pub struct Port {
    /// Value name.
    pub name: String,
    /// Element type.
    pub dtype: Option<DType>,
    /// Shape (`-1` for unknown dimensions).
    pub shape: Vec<i64>,
}

/// Totals over weights.
#[derive(Debug, Default, Serialize)]
pub struct WeightTotals {
    /// Number of weights.
    pub count: usize,
    /// Parameters (elements).
    pub parameters: u64,
    /// Dense (uncompressed) weight parameters per dtype.
    pub dense_parameters_by_dtype: BTreeMap<String, u64>,
    /// Stored bytes of dense weights per dtype.
    pub dense_bytes_by_dtype: BTreeMap<String, u64>,
    /// Stored bytes of all weights (dense + every input of compressed chains).
    pub stored_bytes: u64,
}

/// Totals over compressed weights.
#[derive(Debug, Default, Serialize)]
pub struct CompressedTotals {
    /// Number of compressed weights.
    pub count: usize,
    /// Their parameters.
    pub parameters: u64,
    /// Stored bytes of their chains.
    pub stored_bytes: u64,
    /// Count per kind (`lut`, `sparse`, `sparse+lut`, `quantized`, ...).
    pub by_kind: BTreeMap<String, usize>,
}

/// One weight.
#[derive(Debug, Clone, Serialize)]
pub struct WeightInfo {
    /// Function.
    pub function: String,
    /// Value name (the const or the last constexpr output).
    pub name: String,
    /// Dtype of the dense weight.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<usize>,
    /// Elements.
    pub parameters: u64,
    /// Bytes stored for it (chain inputs for compressed weights).
    pub stored_bytes: u64,
    /// Consuming ops (names).
    pub consumers: Vec<String>,
    /// Compression, if any.
    pub compression: Option<Compression>,
}

/// How a weight is compressed.
#[derive(Debug, Clone, Serialize)]
pub struct Compression {
    /// `lut`, `sparse`, `sparse+lut`, `quantized`, `sparse+quantized`,
    /// `lut+quantized-lut`, `cast`... (kinds joined with `+`, sorted).
    pub kind: String,
    /// Constexpr op types in the chain, producer first.
    pub ops: Vec<String>,
    /// Index bits of a LUT.
    pub lut_nbits: Option<u32>,
    /// Number of LUTs (1 = per-tensor).
    pub lut_groups: Option<u64>,
    /// Vector size of LUT entries (1 = scalar).
    pub lut_vector_size: Option<u64>,
    /// Fraction of zeros implied by a sparse mask.
    pub sparsity: Option<f64>,
    /// Quantized element type.
    pub quantized_dtype: Option<DType>,
}

/// One weight file.
#[derive(Debug, Serialize)]
pub struct WeightFile {
    /// `fileName` as the program writes it.
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Records in the file.
    pub blobs: usize,
    /// Records no value references (dead bytes).
    pub unreferenced_blobs: usize,
}

fn feature(f: &FeatureDescription) -> Feature {
    let (kind, dtype, shape) = match f.r#type.as_ref().and_then(|t| t.r#type.as_ref()) {
        Some(feature_type::Type::MultiArrayType(a)) => {
            let dt = match ArrayDataType::try_from(a.data_type) {
                Ok(ArrayDataType::Float16) => "fp16",
                Ok(ArrayDataType::Float32) => "fp32",
                Ok(ArrayDataType::Double) => "fp64",
                Ok(ArrayDataType::Int32) => "int32",
                Ok(ArrayDataType::Int8) => "int8",
                _ => "invalid",
            };
            ("multiArray", Some(dt.to_string()), a.shape.clone())
        }
        Some(feature_type::Type::ImageType(i)) => ("image", None, vec![i.height, i.width]),
        Some(feature_type::Type::Int64Type(_)) => ("int64", None, vec![]),
        Some(feature_type::Type::DoubleType(_)) => ("double", None, vec![]),
        Some(feature_type::Type::StringType(_)) => ("string", None, vec![]),
        Some(feature_type::Type::DictionaryType(_)) => ("dictionary", None, vec![]),
        Some(feature_type::Type::SequenceType(_)) => ("sequence", None, vec![]),
        Some(feature_type::Type::StateType(_)) => ("state", None, vec![]),
        None => ("unknown", None, vec![]),
    };
    Feature {
        name: f.name.clone(),
        kind: kind.into(),
        dtype,
        shape,
    }
}

fn port(name: &str, vt: Option<&mil::ValueType>) -> Port {
    let (dtype, shape) = match vt.and_then(|v| v.r#type.as_ref()) {
        Some(mil::value_type::Type::TensorType(tt)) => (
            DType::from_proto(tt.data_type),
            tt.dimensions
                .iter()
                .map(|d| match &d.dimension {
                    Some(mil::dimension::Dimension::Constant(c)) => c.size as i64,
                    _ => -1,
                })
                .collect(),
        ),
        Some(mil::value_type::Type::StateType(s)) => {
            return port(name, s.wrapped_type.as_deref());
        }
        _ => (None, vec![]),
    };
    Port {
        name: name.to_string(),
        dtype,
        shape,
    }
}

/// Bytes a value occupies in storage (blob record size, or its immediate
/// size computed from the declared type).
fn value_bytes(pkg: &Package, v: &mil::Value) -> u64 {
    match &v.value {
        Some(value::Value::BlobFileValue(bv)) => pkg
            .blobs
            .get(&bv.file_name)
            .and_then(|f| f.record(bv.offset).ok())
            .map_or(0, |r| r.size),
        _ => tensor_type_of(v.r#type.as_ref(), "")
            .ok()
            .and_then(|(dt, sh)| {
                let n = numel(&sh, "").ok()?;
                crate::kernels::bits::packed_len(n, dt.bits())
            })
            .map_or(0, |b| b as u64),
    }
}

struct Chain {
    ops: Vec<String>,
    bytes: u64,
    lut_nbits: Option<u32>,
    lut_groups: Option<u64>,
    lut_vector: Option<u64>,
    sparse_nnz: Option<u64>,
    quantized: Option<DType>,
    /// Producer ops already walked (a joint chain reaches `lut_to_sparse`
    /// through both of its outputs).
    seen: std::collections::BTreeSet<*const Operation>,
}

fn declared(op: &Operation, index: &FunctionIndex<'_>, p: &str) -> Option<(DType, Vec<usize>)> {
    match param(op, p).ok()?? {
        Param::Value(v) => tensor_type_of(v.r#type.as_ref(), "").ok(),
        Param::Name(n) => {
            let (_, prod) = index.producer_op(n)?;
            let out = prod.outputs.iter().find(|o| o.name == n)?;
            tensor_type_of(out.r#type.as_ref(), "").ok()
        }
    }
}

fn walk_chain(
    pkg: &Package,
    index: &FunctionIndex<'_>,
    op: &Operation,
    c: &mut Chain,
    depth: usize,
) {
    if depth > 16 || !c.seen.insert(op as *const Operation) {
        return;
    }
    c.ops.insert(0, op.r#type.clone());
    // Stored bytes of inline values (attributes in iOS16 form, input values
    // in iOS18 form), then recurse into named producers.
    for (k, v) in &op.attributes {
        if k != "name" {
            c.bytes += value_bytes(pkg, v);
        }
    }
    for arg in op.inputs.values() {
        for b in &arg.arguments {
            match &b.binding {
                Some(mil::argument::binding::Binding::Value(v)) => c.bytes += value_bytes(pkg, v),
                Some(mil::argument::binding::Binding::Name(n)) => {
                    if let Some((_, p)) = index.producer_op(n) {
                        if p.r#type == "const" {
                            if let Some(v) = p.attributes.get("val") {
                                c.bytes += value_bytes(pkg, v);
                            }
                        } else if is_constexpr(&p.r#type) {
                            walk_chain(pkg, index, p, c, depth + 1);
                        }
                    }
                }
                None => {}
            }
        }
    }
    match op.r#type.as_str() {
        "constexpr_lut_to_dense" | "constexpr_lut_to_sparse" => {
            if let Some((_, lshape)) = declared(op, index, "lut") {
                let idx_name = if op.r#type == "constexpr_lut_to_dense" {
                    "indices"
                } else {
                    "indices_nonzero_data"
                };
                if op.inputs.contains_key("lut") && lshape.len() >= 2 {
                    let k = lshape.len() - 2;
                    c.lut_nbits = declared(op, index, idx_name).map(|(d, _)| d.bits());
                    c.lut_groups = Some(lshape[..k].iter().map(|&g| g as u64).product());
                    c.lut_vector = Some(lshape[k + 1] as u64);
                } else {
                    let entries: usize = lshape.iter().product();
                    c.lut_nbits = Some(entries.max(1).trailing_zeros());
                    c.lut_groups = Some(1);
                    c.lut_vector = Some(1);
                }
            }
        }
        "constexpr_sparse_to_dense" => {
            if let Some((_, s)) = declared(op, index, "nonzero_data") {
                c.sparse_nnz = s.first().map(|&d| d as u64);
            }
        }
        "constexpr_affine_dequantize" => {
            c.quantized = declared(op, index, "quantized_data").map(|d| d.0)
        }
        // A shift-scale on a LUT quantizes the LUT, not the weight.
        "constexpr_blockwise_shift_scale" if c.quantized.is_none() => {
            c.quantized = declared(op, index, "data").map(|d| d.0);
        }
        "constexpr_sparse_blockwise_shift_scale" => {
            c.quantized = declared(op, index, "nonzero_data").map(|d| d.0)
        }
        _ => {}
    }
}

fn kind_of(ops: &[String]) -> String {
    let mut kinds: Vec<&str> = Vec::new();
    let has = |s: &str| ops.iter().any(|o| o == s);
    if has("constexpr_sparse_to_dense")
        || has("constexpr_lut_to_sparse")
        || has("constexpr_sparse_blockwise_shift_scale")
    {
        kinds.push("sparse");
    }
    if has("constexpr_lut_to_dense") || has("constexpr_lut_to_sparse") {
        kinds.push("lut");
    }
    if has("constexpr_affine_dequantize")
        || has("constexpr_blockwise_shift_scale")
        || has("constexpr_sparse_blockwise_shift_scale")
    {
        kinds.push("quantized");
    }
    if has("constexpr_cast") {
        kinds.push("cast");
    }
    if kinds.is_empty() {
        kinds.push("other");
    }
    kinds.join("+")
}

/// Builds the report.
pub fn inspect(pkg: &Package, path_label: &str) -> Result<Info, Error> {
    let model_path = pkg.model_path();
    let prog = pkg.program();
    let desc = pkg.model.description.clone().unwrap_or_default();
    let mut functions = Vec::new();
    let mut weights: Vec<WeightInfo> = Vec::new();
    let mut referenced: BTreeMap<&str, std::collections::BTreeSet<u64>> = BTreeMap::new();
    crate::package::for_each_blob_ref(prog, &mut |bv| {
        if let Some((k, _)) = pkg.blobs.get_key_value(&bv.file_name) {
            referenced.entry(k.as_str()).or_default().insert(bv.offset);
        }
    });
    for (fname, func) in &prog.functions {
        let index = FunctionIndex::new(fname, func).map_err(|e| Error::mil(&model_path, e))?;
        let hist = index.op_histogram();
        functions.push(FunctionInfo {
            name: fname.clone(),
            opset: func.opset.clone(),
            deployment_target: target_for_opset(&func.opset).map(|t| t.ios),
            inputs: func
                .inputs
                .iter()
                .map(|i| port(&i.name, i.r#type.as_ref()))
                .collect(),
            outputs: index
                .block
                .outputs
                .iter()
                .map(|o| {
                    let vt = index
                        .producer_op(o)
                        .and_then(|(_, op)| op.outputs.iter().find(|x| &x.name == o))
                        .and_then(|x| x.r#type.as_ref())
                        .or_else(|| {
                            func.inputs
                                .iter()
                                .find(|i| &i.name == o)
                                .and_then(|i| i.r#type.as_ref())
                        });
                    port(o, vt)
                })
                .collect(),
            op_count: index.ops.len(),
            op_types: hist,
            inline_constexpr_params: index
                .ops
                .iter()
                .filter(|(_, op)| is_constexpr(&op.r#type))
                .map(|(_, op)| {
                    op.attributes.keys().filter(|k| *k != "name").count()
                        + op.inputs
                            .values()
                            .flat_map(|a| &a.arguments)
                            .filter(|b| {
                                matches!(b.binding, Some(mil::argument::binding::Binding::Value(_)))
                            })
                            .count()
                })
                .sum(),
        });
        for (_, op) in &index.ops {
            if op.r#type != "const" && !is_constexpr(&op.r#type) {
                continue;
            }
            for out in &op.outputs {
                let Some(mil::value_type::Type::TensorType(tt)) =
                    out.r#type.as_ref().and_then(|t| t.r#type.as_ref())
                else {
                    continue;
                };
                let Ok((dtype, shape)) = static_shape(tt, &op_label(op)) else {
                    continue;
                };
                if !dtype.is_float() {
                    continue;
                }
                let n = numel(&shape, "").unwrap_or(0) as u64;
                if n < 10 {
                    continue;
                }
                let consumers: Vec<String> = index
                    .uses(&out.name)
                    .iter()
                    .filter_map(|u| match u {
                        Use::Input { op, .. } if is_ordinary(&index.ops[*op].1.r#type) => {
                            Some(crate::mil::program::op_name(index.ops[*op].1).unwrap_or_default())
                        }
                        _ => None,
                    })
                    .collect();
                if consumers.is_empty() {
                    continue;
                }
                let (stored, compression) = if op.r#type == "const" {
                    (
                        op.attributes.get("val").map_or(0, |v| value_bytes(pkg, v)),
                        None,
                    )
                } else {
                    let mut c = Chain {
                        ops: vec![],
                        bytes: 0,
                        lut_nbits: None,
                        lut_groups: None,
                        lut_vector: None,
                        sparse_nnz: None,
                        quantized: None,
                        seen: Default::default(),
                    };
                    walk_chain(pkg, &index, op, &mut c, 0);
                    let kind = kind_of(&c.ops);
                    (
                        c.bytes,
                        Some(Compression {
                            kind,
                            lut_nbits: c.lut_nbits,
                            lut_groups: c.lut_groups,
                            lut_vector_size: c.lut_vector,
                            sparsity: c.sparse_nnz.map(|nz| 1.0 - nz as f64 / n as f64),
                            quantized_dtype: c.quantized,
                            ops: c.ops,
                        }),
                    )
                };
                weights.push(WeightInfo {
                    function: fname.clone(),
                    name: out.name.clone(),
                    dtype,
                    shape,
                    parameters: n,
                    stored_bytes: stored,
                    consumers,
                    compression,
                });
            }
        }
    }
    let mut totals = WeightTotals::default();
    let mut comp = CompressedTotals::default();
    for w in &weights {
        totals.count += 1;
        totals.parameters += w.parameters;
        totals.stored_bytes += w.stored_bytes;
        match &w.compression {
            None => {
                *totals
                    .dense_parameters_by_dtype
                    .entry(w.dtype.to_string())
                    .or_default() += w.parameters;
                *totals
                    .dense_bytes_by_dtype
                    .entry(w.dtype.to_string())
                    .or_default() += w.stored_bytes;
            }
            Some(c) => {
                comp.count += 1;
                comp.parameters += w.parameters;
                comp.stored_bytes += w.stored_bytes;
                *comp.by_kind.entry(c.kind.clone()).or_default() += 1;
            }
        }
    }
    let mut largest = weights.clone();
    largest.sort_by(|a, b| {
        b.parameters
            .cmp(&a.parameters)
            .then_with(|| a.name.cmp(&b.name))
    });
    largest.truncate(10);
    let weight_files = pkg
        .blobs
        .iter()
        .map(|(name, f)| {
            let refs = referenced.get(name.as_str());
            let total = f.records().count();
            WeightFile {
                name: name.clone(),
                bytes: f.len(),
                blobs: total,
                unreferenced_blobs: f
                    .records()
                    .filter(|r| refs.is_none_or(|s| !s.contains(&r.offset)))
                    .count(),
            }
        })
        .collect();
    Ok(Info {
        schema: SCHEMA,
        path: path_label.to_string(),
        specification_version: pkg.model.specification_version,
        deployment_target: target_for_spec(pkg.model.specification_version).map(|t| t.ios),
        inputs: desc.input.iter().map(feature).collect(),
        outputs: desc.output.iter().map(feature).collect(),
        functions,
        weights: totals,
        compressed: comp,
        largest,
        weight_files,
        model_bytes: pkg.model_len,
    })
}
