//! Building blocks for writing constexpr ops: tensors become blob-backed or
//! immediate `Value`s (following coremltools' storage rule), inline
//! `Argument`s, and fresh op names that do not collide with any name in a
//! function.

use crate::error::Error;
use crate::kernels::bits;
use crate::mil::program::op_name;
use crate::mil::value::{blob_value, goes_to_blob, immediate_value};
use crate::mil::{FunctionIndex, Tensor};
use crate::package::WeightSink;
use crate::proto::mil::{self, Argument};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// `t` as a `Value`: appended to `file` through the sink when coremltools
/// would store it in a weight file (spec version `spec`), else immediate.
pub fn tensor_value(
    t: &Tensor,
    sink: &mut WeightSink<'_>,
    file: &str,
    spec: i32,
    model_path: &Path,
) -> Result<mil::Value, Error> {
    if goes_to_blob(t.dtype, t.numel(), spec) {
        let bytes = t.to_storage_bytes().expect("blob dtypes encode");
        let pad = if t.dtype.is_sub_byte() {
            bits::padding_bits(t.numel(), t.dtype.bits())
        } else {
            0
        };
        let off = sink.append(file, t.dtype.blob_dtype().expect("blob dtype"), &bytes, pad)?;
        Ok(blob_value(t.dtype, &t.shape, file, off))
    } else {
        immediate_value(t).map_err(|e| Error::mil(model_path, e))
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
