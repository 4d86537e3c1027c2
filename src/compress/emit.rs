//! Building blocks for writing constexpr ops: tensors become blob-backed or
//! immediate `Value`s (following coremltools' storage rule), inline
//! `Argument`s, fresh op names that do not collide with any name in a
//! function, and the three op forms a compressed weight takes
//! (`constexpr_lut_to_dense`, `constexpr_sparse_to_dense`, and the joint
//! `constexpr_lut_to_sparse` → `constexpr_sparse_to_dense` pair), in the
//! iOS16 attribute form below the iOS18 opset and the iOS18 input form from
//! it on (§5 of the format notes).

use crate::error::Error;
use crate::kernels::bits;
use crate::mil::program::op_name;
use crate::mil::tensor::storage_bytes;
use crate::mil::value::{
    blob_value, goes_to_blob, immediate_value, string_value, tensor_value_type,
};
use crate::mil::{DType, Data, FunctionIndex, Tensor};
use crate::package::WeightSink;
use crate::proto::mil::{self, Argument, NamedValueType, Operation};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A tensor given by its parts as a `Value`: appended to `file` through
/// the sink when coremltools would store it in a weight file (spec version
/// `spec`), else immediate. A blob is written from `data`'s own memory
/// where its bytes are the storage bytes (no copy of a weight's codes).
pub fn data_value(
    dtype: DType,
    shape: &[usize],
    data: &Data,
    sink: &mut WeightSink<'_>,
    file: &str,
    spec: i32,
    model_path: &Path,
) -> Result<mil::Value, Error> {
    let numel = shape.iter().product::<usize>();
    if goes_to_blob(dtype, numel, spec) {
        let bytes = storage_bytes(dtype, data).expect("blob dtypes encode");
        let pad = if dtype.is_sub_byte() {
            bits::padding_bits(numel, dtype.bits())
        } else {
            0
        };
        let off = sink.append(file, dtype.blob_dtype().expect("blob dtype"), &bytes, pad)?;
        Ok(blob_value(dtype, shape, file, off))
    } else {
        let t = Tensor {
            dtype,
            shape: shape.to_vec(),
            data: data.clone(),
        };
        immediate_value(&t).map_err(|e| Error::mil(model_path, e))
    }
}

/// A single inline-value binding (the iOS18 constexpr input form).
pub fn inline_arg(v: mil::Value) -> Argument {
    Argument {
        arguments: vec![mil::argument::Binding {
            binding: Some(mil::argument::binding::Binding::Value(v)),
        }],
    }
}

/// Every op and value name per function, to mint unique new names.
#[derive(Debug, Default)]
pub struct Names(BTreeMap<String, BTreeSet<String>>);

impl Names {
    /// Collects the names in use in `program`.
    pub fn collect(program: &mil::Program) -> Result<Self, String> {
        let mut all = BTreeMap::new();
        for (fname, func) in &program.functions {
            let index = FunctionIndex::new(fname, func).map_err(|e| e.to_string())?;
            let set: BTreeSet<String> = index
                .ops
                .iter()
                .flat_map(|(_, op)| {
                    op_name(op)
                        .into_iter()
                        .chain(op.outputs.iter().map(|o| o.name.clone()))
                })
                .chain(func.inputs.iter().map(|i| i.name.clone()))
                .collect();
            all.insert(fname.clone(), set);
        }
        Ok(Names(all))
    }

    /// `base`, or `base_1`, `base_2`, ... if taken in function `f`.
    pub fn fresh(&mut self, f: &str, base: &str) -> String {
        let set = self.0.entry(f.to_string()).or_default();
        let mut name = base.to_string();
        let mut n = 0;
        while set.contains(&name) {
            n += 1;
            name = format!("{base}_{n}");
        }
        set.insert(name.clone());
        name
    }
}

/// Where the tensors of new ops go: one weight file of the output, for a
/// given output spec version.
pub struct Emitter<'s, 'a> {
    /// The output's weight files.
    pub sink: &'s mut WeightSink<'a>,
    /// The file new blobs are appended to.
    pub file: String,
    /// Output specification version (decides op forms and storage).
    pub spec: i32,
    /// `model.mlmodel` of the input (for error messages).
    pub model_path: &'s Path,
}

impl Emitter<'_, '_> {
    fn value(&mut self, t: &Tensor) -> Result<mil::Value, Error> {
        self.data_value(t.dtype, &t.shape, &t.data)
    }

    /// [`Emitter::value`] of borrowed parts (no copy of `data`).
    fn data_value(
        &mut self,
        dtype: DType,
        shape: &[usize],
        data: &Data,
    ) -> Result<mil::Value, Error> {
        data_value(
            dtype,
            shape,
            data,
            self.sink,
            &self.file,
            self.spec,
            self.model_path,
        )
    }

    /// Like `value`, but an identical byte-sized blob already written by
    /// this method is referenced instead of written again.
    fn shared_value(&mut self, t: &Tensor) -> Result<mil::Value, Error> {
        if !goes_to_blob(t.dtype, t.numel(), self.spec) || t.dtype.is_sub_byte() {
            return self.value(t);
        }
        let bytes = t.storage_bytes().expect("blob dtypes encode");
        let off = self.sink.append_shared(
            &self.file,
            t.dtype.blob_dtype().expect("blob dtype"),
            &bytes,
        )?;
        Ok(blob_value(t.dtype, &t.shape, &self.file, off))
    }

    /// Unpacked `nbits`-bit `indices` of `shape` as a `Value`. Blob-backed
    /// indices (every real weight) are packed on all threads and appended
    /// without the copy a `Tensor` would need; the bytes are those
    /// [`Emitter::value`] writes.
    fn indices_value(
        &mut self,
        nbits: u32,
        shape: &[usize],
        indices: &[u8],
    ) -> Result<mil::Value, Error> {
        let dtype = uint_dtype(nbits);
        if !goes_to_blob(dtype, indices.len(), self.spec) {
            return self.value(&Tensor {
                dtype,
                shape: shape.to_vec(),
                data: Data::U8(indices.to_vec()),
            });
        }
        let packed = bits::pack_par(indices, dtype.bits());
        let pad = if dtype.is_sub_byte() {
            bits::padding_bits(indices.len(), dtype.bits())
        } else {
            0
        };
        let off = self.sink.append(
            &self.file,
            dtype.blob_dtype().expect("blob dtype"),
            &packed,
            pad,
        )?;
        Ok(blob_value(dtype, shape, &self.file, off))
    }

    fn immediate(&self, t: &Tensor) -> Result<mil::Value, Error> {
        immediate_value(t).map_err(|e| Error::mil(self.model_path, e))
    }

    fn ios18(&self) -> bool {
        self.spec >= 9
    }
}

/// The index bits' dtype.
pub fn uint_dtype(nbits: u32) -> DType {
    match nbits {
        1 => DType::Uint1,
        2 => DType::Uint2,
        3 => DType::Uint3,
        4 => DType::Uint4,
        6 => DType::Uint6,
        _ => DType::Uint8,
    }
}

/// A lookup table of a weight: `groups` LUTs of `2^nbits` entries along
/// `axis`, and one index per stored element.
#[derive(Debug, Clone)]
pub struct Lut {
    /// Index bits.
    pub nbits: u32,
    /// Number of LUTs (1 = per tensor).
    pub groups: usize,
    /// Grouping axis.
    pub axis: usize,
    /// Channels per group.
    pub group_size: usize,
    /// Unpacked indices: dense row-major for a dense weight, the kept
    /// elements in row-major order for a sparse one.
    pub indices: Vec<u8>,
    /// `groups · 2^nbits` entries, group-major, in the weight's dtype (the
    /// decoded entries when `stored` is set).
    pub lut: Data,
    /// How the entries are stored when not as they are: scaled codes
    /// decoded by a `constexpr_blockwise_shift_scale` that feeds the LUT.
    pub stored: Option<LutStored>,
    /// The LUT block grid (rank of the weight) when LUTs vary along more
    /// than `axis` (per-channel scales along other axes); `groups` is then
    /// the product.
    pub grid: Option<Vec<usize>>,
    /// Entries per LUT slot: 1, or the vector length of vector
    /// palettization (iOS18), whose vectors run along `axis`: `indices`
    /// then has the weight's shape with `axis` divided by `vector`, and
    /// `lut` holds `groups · 2^nbits · vector` values.
    pub vector: usize,
}

/// LUT entries stored through `constexpr_blockwise_shift_scale`, one scale
/// (and offset) per LUT: `lut = scale · (data − offset)` rounded to the
/// weight's dtype (iOS18; §5.4 of the format notes: below iOS26 the
/// scaling goes on the LUT, before `constexpr_lut_to_dense`).
#[derive(Debug, Clone)]
pub struct LutStored {
    /// dtype of `data`: int8/uint8 codes, or the weight's dtype.
    pub dtype: DType,
    /// `groups · 2^nbits` entries, group-major (`I8`, `U8`, `F16`, `F32`).
    pub data: Data,
    /// One per LUT, in the weight's dtype.
    pub scale: Data,
    /// One per LUT, in `dtype`; `None` when all are 0.
    pub offset: Option<Data>,
    /// The grid of `scale` (rank of the weight) when it is coarser than
    /// the LUTs' (a scale shared by the LUTs of every group); `None` = one
    /// per LUT.
    pub scale_grid: Option<Vec<usize>>,
}

impl Lut {
    /// The iOS18 LUT shape `[g0, …, g(K-1), 2^nbits, vector]` with
    /// `groups` on `axis`.
    fn shape(&self, rank: usize) -> Vec<usize> {
        let mut s = vec![1usize; rank + 2];
        match &self.grid {
            Some(g) => s[..rank].copy_from_slice(g),
            None => s[self.axis] = self.groups,
        }
        s[rank] = 1 << self.nbits;
        s[rank + 1] = self.vector;
        s
    }

    /// The shape of the indices of a weight of `shape`.
    fn indices_shape(&self, shape: &[usize]) -> Vec<usize> {
        let mut s = shape.to_vec();
        s[self.axis] /= self.vector;
        s
    }

    /// The LUT input: the entries inline, or the output of a
    /// `constexpr_blockwise_shift_scale` named `scale_op` that decodes the
    /// stored entries (that op is returned too).
    fn lut_input(
        &self,
        em: &mut Emitter<'_, '_>,
        dtype: DType,
        rank: usize,
        scale_op: &str,
    ) -> Result<(Argument, Option<Operation>), Error> {
        let shape = self.shape(rank);
        let Some(st) = &self.stored else {
            let lut = Tensor {
                dtype,
                shape,
                data: self.lut.clone(),
            };
            return Ok((inline_arg(em.value(&lut)?), None));
        };
        let mut sshape = shape.clone();
        sshape[rank] = 1;
        if let Some(g) = &st.scale_grid {
            sshape[..rank].copy_from_slice(g);
        }
        let data = Tensor {
            dtype: st.dtype,
            shape: shape.clone(),
            data: st.data.clone(),
        };
        let scale = Tensor {
            dtype,
            shape: sshape.clone(),
            data: st.scale.clone(),
        };
        let mut inputs = BTreeMap::new();
        inputs.insert("data".to_string(), inline_arg(em.value(&data)?));
        inputs.insert("scale".to_string(), inline_arg(em.value(&scale)?));
        if let Some(o) = &st.offset {
            let off = Tensor {
                dtype: st.dtype,
                shape: sshape,
                data: o.clone(),
            };
            inputs.insert("offset".to_string(), inline_arg(em.value(&off)?));
        }
        let mut attributes = BTreeMap::new();
        attributes.insert("name".to_string(), string_value(scale_op));
        let op = Operation {
            r#type: "constexpr_blockwise_shift_scale".into(),
            inputs,
            outputs: vec![single_output(scale_op, dtype, &shape)],
            blocks: vec![],
            attributes,
        };
        Ok((named_arg(scale_op), Some(op)))
    }
}

fn single_output(name: &str, dtype: DType, shape: &[usize]) -> NamedValueType {
    NamedValueType {
        name: name.to_string(),
        r#type: Some(tensor_value_type(dtype, shape)),
    }
}

fn named_arg(name: &str) -> Argument {
    Argument {
        arguments: vec![mil::argument::Binding {
            binding: Some(mil::argument::binding::Binding::Name(name.to_string())),
        }],
    }
}

fn shape_tensor(shape: &[usize]) -> Tensor {
    Tensor {
        dtype: DType::Uint32,
        shape: vec![shape.len()],
        data: Data::U32(shape.iter().map(|&d| d as u32).collect()),
    }
}

/// `constexpr_lut_to_dense` named `name` with output `out` (`dtype`,
/// `shape`), preceded by the `constexpr_blockwise_shift_scale` named
/// `scale_op` when the entries are stored scaled. Writes the indices, then
/// the LUT (data, scale, offset).
pub fn lut_to_dense(
    em: &mut Emitter<'_, '_>,
    name: &str,
    scale_op: &str,
    out: &str,
    dtype: DType,
    shape: &[usize],
    l: &Lut,
) -> Result<Vec<Operation>, Error> {
    let mut attributes = BTreeMap::new();
    attributes.insert("name".to_string(), string_value(name));
    let mut inputs = BTreeMap::new();
    let mut ops = Vec::new();
    if em.ios18() {
        let idx = em.indices_value(l.nbits, &l.indices_shape(shape), &l.indices)?;
        inputs.insert("indices".to_string(), inline_arg(idx));
        let (arg, op) = l.lut_input(em, dtype, shape.len(), scale_op)?;
        inputs.insert("lut".to_string(), arg);
        if l.vector > 1 {
            let axis = Tensor {
                dtype: DType::Int32,
                shape: vec![],
                data: Data::I32(vec![l.axis as i32]),
            };
            inputs.insert("vector_axis".to_string(), inline_arg(em.immediate(&axis)?));
        }
        ops.extend(op);
    } else {
        debug_assert!(l.stored.is_none(), "scaled LUTs are iOS18 only");
        debug_assert!(l.vector == 1, "vector LUTs are iOS18 only");
        // iOS16 form: packed indices as a flat uint8 vector, a rank-1 LUT
        // and the shape as uint32, all as attributes.
        let packed = bits::pack_par(&l.indices, l.nbits);
        let idx = Tensor {
            dtype: DType::Uint8,
            shape: vec![packed.len()],
            data: Data::U8(packed),
        };
        let lut = Tensor {
            dtype,
            shape: vec![1 << l.nbits],
            data: l.lut.clone(),
        };
        attributes.insert("indices".to_string(), em.value(&idx)?);
        attributes.insert("lut".to_string(), em.value(&lut)?);
        attributes.insert("shape".to_string(), em.immediate(&shape_tensor(shape))?);
    }
    ops.push(Operation {
        r#type: "constexpr_lut_to_dense".into(),
        inputs,
        outputs: vec![single_output(out, dtype, shape)],
        blocks: vec![],
        attributes,
    });
    Ok(ops)
}

/// `constexpr_sparse_to_dense` named `name` with output `output`, from a
/// 0/1 `mask` over `shape` and the kept values `nonzero` (rank 1). Writes
/// the values, then the mask.
pub fn sparse_to_dense(
    em: &mut Emitter<'_, '_>,
    name: &str,
    output: NamedValueType,
    shape: &[usize],
    mask: &[u8],
    nonzero: &Tensor,
) -> Result<Operation, Error> {
    let mut attributes = BTreeMap::new();
    attributes.insert("name".to_string(), string_value(name));
    let mut inputs = BTreeMap::new();
    if em.ios18() {
        let m = Tensor {
            dtype: DType::Uint1,
            shape: shape.to_vec(),
            data: Data::U8(mask.to_vec()),
        };
        inputs.insert("nonzero_data".to_string(), inline_arg(em.value(nonzero)?));
        inputs.insert("mask".to_string(), inline_arg(em.value(&m)?));
    } else {
        let packed = bits::pack(mask, 1);
        let m = Tensor {
            dtype: DType::Uint8,
            shape: vec![packed.len()],
            data: Data::U8(packed),
        };
        attributes.insert("nonzero_data".to_string(), em.value(nonzero)?);
        attributes.insert("mask".to_string(), em.value(&m)?);
        attributes.insert("shape".to_string(), em.immediate(&shape_tensor(shape))?);
    }
    Ok(Operation {
        r#type: "constexpr_sparse_to_dense".into(),
        inputs,
        outputs: vec![output],
        blocks: vec![],
        attributes,
    })
}

/// Names of the joint pair.
pub struct JointNames<'n> {
    /// The `constexpr_lut_to_sparse` op.
    pub lut_op: &'n str,
    /// The `constexpr_blockwise_shift_scale` of a scaled LUT.
    pub scale_op: &'n str,
    /// Its two outputs: the mask and the kept values.
    pub lut_outputs: [&'n str; 2],
    /// The `constexpr_sparse_to_dense` op.
    pub sparse_op: &'n str,
    /// The dense weight (what consumers read).
    pub output: &'n str,
}

/// The joint form (iOS18 only): `constexpr_lut_to_sparse` (mask, indices
/// of the kept elements, LUT) feeding `constexpr_sparse_to_dense`, after
/// the LUT's `constexpr_blockwise_shift_scale` when the entries are stored
/// scaled. Writes the mask, then the indices, then the LUT.
pub fn lut_to_sparse(
    em: &mut Emitter<'_, '_>,
    n: &JointNames<'_>,
    dtype: DType,
    shape: &[usize],
    mask: &[u8],
    l: &Lut,
) -> Result<Vec<Operation>, Error> {
    let kept = l.indices.len();
    let m = Tensor {
        dtype: DType::Uint1,
        shape: shape.to_vec(),
        data: Data::U8(mask.to_vec()),
    };
    let mut inputs = BTreeMap::new();
    inputs.insert("indices_mask".to_string(), inline_arg(em.value(&m)?));
    let idx = em.indices_value(l.nbits, &[kept], &l.indices)?;
    inputs.insert("indices_nonzero_data".to_string(), inline_arg(idx));
    let (arg, scale_op) = l.lut_input(em, dtype, shape.len(), n.scale_op)?;
    inputs.insert("lut".to_string(), arg);
    let mut attributes = BTreeMap::new();
    attributes.insert("name".to_string(), string_value(n.lut_op));
    let lts = Operation {
        r#type: "constexpr_lut_to_sparse".into(),
        inputs,
        outputs: vec![
            single_output(n.lut_outputs[0], DType::Uint1, shape),
            single_output(n.lut_outputs[1], dtype, &[kept]),
        ],
        blocks: vec![],
        attributes,
    };
    let mut inputs = BTreeMap::new();
    inputs.insert("mask".to_string(), named_arg(n.lut_outputs[0]));
    inputs.insert("nonzero_data".to_string(), named_arg(n.lut_outputs[1]));
    let mut attributes = BTreeMap::new();
    attributes.insert("name".to_string(), string_value(n.sparse_op));
    let std = Operation {
        r#type: "constexpr_sparse_to_dense".into(),
        inputs,
        outputs: vec![single_output(n.output, dtype, shape)],
        blocks: vec![],
        attributes,
    };
    Ok(scale_op.into_iter().chain([lts, std]).collect())
}

/// A linearly quantized weight: codes over the dense shape, and a scale
/// (and optional offset) per block of `grid`.
#[derive(Debug, Clone)]
pub struct Quant {
    /// Code dtype: int8, uint8, int4 or uint4.
    pub qdtype: DType,
    /// Codes, row-major over the weight's shape (`I8` for signed types,
    /// `U8` for unsigned).
    pub codes: Data,
    /// Scale shape: same rank as the weight, dividing it.
    pub grid: Vec<usize>,
    /// Per block, in the weight's dtype.
    pub scale: Data,
    /// Per block zero points in the code dtype; `None` when they are all 0
    /// (signed symmetric).
    pub offset: Option<Data>,
    /// The one axis whose grid extent is above 1 (per channel), for the
    /// iOS16 form; `None` per tensor.
    pub axis: Option<usize>,
}

/// The quantized form of a weight: `constexpr_blockwise_shift_scale`
/// (iOS18; `offset` omitted when every zero point is 0) or
/// `constexpr_affine_dequantize` (iOS16 attribute form: rank-0/1 scale and
/// zero point along `axis`, the zero point always present). Writes the
/// codes, then the scale, then the offset.
pub fn quantized(
    em: &mut Emitter<'_, '_>,
    name: &str,
    out: &str,
    dtype: DType,
    shape: &[usize],
    q: &Quant,
) -> Result<Operation, Error> {
    let mut attributes = BTreeMap::new();
    attributes.insert("name".to_string(), string_value(name));
    let mut inputs = BTreeMap::new();
    let r#type = if em.ios18() {
        let scale = Tensor {
            dtype,
            shape: q.grid.clone(),
            data: q.scale.clone(),
        };
        inputs.insert(
            "data".to_string(),
            inline_arg(em.data_value(q.qdtype, shape, &q.codes)?),
        );
        inputs.insert("scale".to_string(), inline_arg(em.value(&scale)?));
        if let Some(o) = &q.offset {
            let off = Tensor {
                dtype: q.qdtype,
                shape: q.grid.clone(),
                data: o.clone(),
            };
            inputs.insert("offset".to_string(), inline_arg(em.value(&off)?));
        }
        "constexpr_blockwise_shift_scale"
    } else {
        let pshape = match q.axis {
            Some(a) => vec![q.grid[a]],
            None => vec![],
        };
        let n = q.scale.len();
        let scale = Tensor {
            dtype,
            shape: pshape.clone(),
            data: q.scale.clone(),
        };
        let zp = Tensor {
            dtype: q.qdtype,
            shape: pshape,
            data: q.offset.clone().unwrap_or(match q.codes {
                Data::I8(_) => Data::I8(vec![0; n]),
                _ => Data::U8(vec![0; n]),
            }),
        };
        // coremltools writes one blob for equal all-zero zero points.
        let zero_zp = q.offset.is_none();
        let axis = Tensor {
            dtype: DType::Int32,
            shape: vec![],
            data: Data::I32(vec![q.axis.unwrap_or(0) as i32]),
        };
        attributes.insert(
            "quantized_data".to_string(),
            em.data_value(q.qdtype, shape, &q.codes)?,
        );
        let zp_value = if zero_zp {
            em.shared_value(&zp)?
        } else {
            em.value(&zp)?
        };
        attributes.insert("zero_point".to_string(), zp_value);
        attributes.insert("scale".to_string(), em.value(&scale)?);
        attributes.insert("axis".to_string(), em.immediate(&axis)?);
        "constexpr_affine_dequantize"
    };
    Ok(Operation {
        r#type: r#type.into(),
        inputs,
        outputs: vec![single_output(out, dtype, shape)],
        blocks: vec![],
        attributes,
    })
}

/// The joint sparse + quantized form (iOS18 only):
/// `constexpr_sparse_blockwise_shift_scale` (mask, codes of the kept
/// elements, scale, offset; block rules on the dense shape) feeding
/// `constexpr_sparse_to_dense` through its two outputs. `q.codes` are the
/// kept elements' codes in row-major order. Writes the mask, the codes,
/// the scale, then the offset.
pub fn sparse_quantized(
    em: &mut Emitter<'_, '_>,
    n: &JointNames<'_>,
    dtype: DType,
    shape: &[usize],
    mask: &[u8],
    q: &Quant,
) -> Result<[Operation; 2], Error> {
    let kept = q.codes.len();
    let m = Tensor {
        dtype: DType::Uint1,
        shape: shape.to_vec(),
        data: Data::U8(mask.to_vec()),
    };
    let scale = Tensor {
        dtype,
        shape: q.grid.clone(),
        data: q.scale.clone(),
    };
    let mut inputs = BTreeMap::new();
    inputs.insert("data_mask".to_string(), inline_arg(em.value(&m)?));
    inputs.insert(
        "nonzero_data".to_string(),
        inline_arg(em.data_value(q.qdtype, &[kept], &q.codes)?),
    );
    inputs.insert("scale".to_string(), inline_arg(em.value(&scale)?));
    if let Some(o) = &q.offset {
        let off = Tensor {
            dtype: q.qdtype,
            shape: q.grid.clone(),
            data: o.clone(),
        };
        inputs.insert("offset".to_string(), inline_arg(em.value(&off)?));
    }
    let mut attributes = BTreeMap::new();
    attributes.insert("name".to_string(), string_value(n.lut_op));
    let sq = Operation {
        r#type: "constexpr_sparse_blockwise_shift_scale".into(),
        inputs,
        outputs: vec![
            single_output(n.lut_outputs[0], DType::Uint1, shape),
            single_output(n.lut_outputs[1], dtype, &[kept]),
        ],
        blocks: vec![],
        attributes,
    };
    let mut inputs = BTreeMap::new();
    inputs.insert("mask".to_string(), named_arg(n.lut_outputs[0]));
    inputs.insert("nonzero_data".to_string(), named_arg(n.lut_outputs[1]));
    let mut attributes = BTreeMap::new();
    attributes.insert("name".to_string(), string_value(n.sparse_op));
    let std = Operation {
        r#type: "constexpr_sparse_to_dense".into(),
        inputs,
        outputs: vec![single_output(n.output, dtype, shape)],
        blocks: vec![],
        attributes,
    };
    Ok([sq, std])
}
