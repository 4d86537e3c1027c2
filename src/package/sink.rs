//! Output side of a package: the weight files being written (one
//! [`BlobWriter`] per `fileName`), blob copying with de-duplication, and
//! copying the files we do not rewrite.

use super::{io, resolve_weight_path, PackageError};
use crate::blob::{BlobDtype, BlobError, BlobWriter};
use crate::mil::BlobFiles;
use crate::proto::mil::{self, value, value_type, Block, ValueType};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The file new blobs go to when nothing says otherwise.
pub const DEFAULT_WEIGHT_FILE: &str = "@model_path/weights/weight.bin";

/// Weight files being written into a staging directory.
pub struct WeightSink<'a> {
    dir: PathBuf,
    model_dir: PathBuf,
    inputs: &'a BlobFiles,
    writers: BTreeMap<String, BlobWriter>,
    /// (file, input record offset) → output record offset.
    copied: BTreeMap<(String, u64), u64>,
    /// (file, dtype, payload) → output record offset, for blobs appended
    /// with [`WeightSink::append_shared`].
    shared: BTreeMap<(String, String, Vec<u8>), u64>,
}

impl<'a> WeightSink<'a> {
    /// A sink writing below `dir` (the staging package root). `model_rel`
    /// is the root model's path relative to the package root, which
    /// anchors `@model_path`.
    pub fn new(dir: &Path, model_rel: &Path, inputs: &'a BlobFiles) -> Self {
        Self {
            dir: dir.to_path_buf(),
            model_dir: model_rel.parent().unwrap_or(Path::new("")).to_path_buf(),
            inputs,
            writers: BTreeMap::new(),
            copied: BTreeMap::new(),
            shared: BTreeMap::new(),
        }
    }

    fn writer(&mut self, file_name: &str) -> Result<&mut BlobWriter, PackageError> {
        if !self.writers.contains_key(file_name) {
            let rel = resolve_weight_path(file_name, &self.model_dir).ok_or_else(|| {
                PackageError::PathEscapes {
                    path: self.dir.clone(),
                    item: file_name.to_string(),
                }
            })?;
            let full = self.dir.join(rel);
            if let Some(parent) = full.parent() {
                std::fs::create_dir_all(parent).map_err(io(parent))?;
            }
            self.writers
                .insert(file_name.to_string(), BlobWriter::create(&full)?);
        }
        Ok(self.writers.get_mut(file_name).expect("inserted above"))
    }

    /// Appends a new blob to `file_name`; returns its record offset.
    pub fn append(
        &mut self,
        file_name: &str,
        dtype: BlobDtype,
        payload: &[u8],
        padding_bits: u8,
    ) -> Result<u64, PackageError> {
        Ok(self
            .writer(file_name)?
            .append(dtype, payload, padding_bits)?)
    }

    /// Appends a blob once per identical (file, dtype, payload) and returns
    /// the record offset (coremltools stores one all-zero zero point for
    /// every weight that needs the same one).
    pub fn append_shared(
        &mut self,
        file_name: &str,
        dtype: BlobDtype,
        payload: &[u8],
    ) -> Result<u64, PackageError> {
        let key = (
            file_name.to_string(),
            format!("{dtype:?}"),
            payload.to_vec(),
        );
        if let Some(&o) = self.shared.get(&key) {
            return Ok(o);
        }
        let o = self.append(file_name, dtype, payload, 0)?;
        self.shared.insert(key, o);
        Ok(o)
    }

    /// Copies the input blob at (`file_name`, `offset`) once and returns
    /// its offset in the output file of the same name.
    pub fn copy_blob(&mut self, file_name: &str, offset: u64) -> Result<u64, PackageError> {
        let key = (file_name.to_string(), offset);
        if let Some(&o) = self.copied.get(&key) {
            return Ok(o);
        }
        let inputs = self.inputs;
        let file = inputs.get(file_name).ok_or_else(|| {
            PackageError::Blob(BlobError::NoRecord {
                path: PathBuf::from(file_name),
                offset,
            })
        })?;
        let rec = *file.record(offset)?;
        let out = self.append(file_name, rec.dtype, file.payload(&rec), rec.padding_bits)?;
        file.release(&rec);
        self.copied.insert(key, out);
        Ok(out)
    }

    /// Rewrites every blob reference in `values` to point into the output,
    /// copying the payloads.
    pub fn relocate_op(&mut self, op: &mut mil::Operation) -> Result<(), PackageError> {
        visit_op(op, &mut |v| self.relocate(v))
    }

    /// Rewrites one value's blob reference (if any).
    pub fn relocate(&mut self, v: &mut mil::Value) -> Result<(), PackageError> {
        if let Some(value::Value::BlobFileValue(bv)) = &mut v.value {
            bv.offset = self.copy_blob(&bv.file_name.clone(), bv.offset)?;
        }
        Ok(())
    }

    /// Relocates blob references outside ops (function, block, program
    /// attributes and types).
    pub fn relocate_program_attrs(&mut self, p: &mut mil::Program) -> Result<(), PackageError> {
        for v in p.attributes.values_mut() {
            visit_value(v, &mut |x| self.relocate(x))?;
        }
        for f in p.functions.values_mut() {
            for v in f.attributes.values_mut() {
                visit_value(v, &mut |x| self.relocate(x))?;
            }
            for nv in &mut f.inputs {
                visit_type(nv.r#type.as_mut(), &mut |x| self.relocate(x))?;
            }
        }
        Ok(())
    }

    /// Bytes written so far to `file_name` (0 if not opened yet).
    pub fn bytes_written(&self, file_name: &str) -> u64 {
        self.writers.get(file_name).map_or(0, |w| w.len())
    }

    /// Number of weight files open.
    pub fn files(&self) -> usize {
        self.writers.len()
    }

    /// Finishes every weight file; returns the total bytes written.
    pub fn finish(self) -> Result<u64, PackageError> {
        let mut total = 0;
        for (_, w) in self.writers {
            total += w.finish()?;
        }
        Ok(total)
    }
}

/// Visits every `Value` in the program (ops in every block, attributes,
/// types, nested immediates), depth-first in program order.
pub fn visit_values_mut<E>(
    p: &mut mil::Program,
    f: &mut dyn FnMut(&mut mil::Value) -> Result<(), E>,
) -> Result<(), E> {
    for v in p.attributes.values_mut() {
        visit_value(v, f)?;
    }
    for func in p.functions.values_mut() {
        for v in func.attributes.values_mut() {
            visit_value(v, f)?;
        }
        for nv in &mut func.inputs {
            visit_type(nv.r#type.as_mut(), f)?;
        }
        for b in func.block_specializations.values_mut() {
            visit_block(b, f)?;
        }
    }
    Ok(())
}

fn visit_block<E>(
    b: &mut Block,
    f: &mut dyn FnMut(&mut mil::Value) -> Result<(), E>,
) -> Result<(), E> {
    for v in b.attributes.values_mut() {
        visit_value(v, f)?;
    }
    for nv in &mut b.inputs {
        visit_type(nv.r#type.as_mut(), f)?;
    }
    for op in &mut b.operations {
        visit_op(op, f)?;
    }
    Ok(())
}

/// Visits every value of one op, its nested blocks included.
pub fn visit_op<E>(
    op: &mut mil::Operation,
    f: &mut dyn FnMut(&mut mil::Value) -> Result<(), E>,
) -> Result<(), E> {
    for arg in op.inputs.values_mut() {
        for b in &mut arg.arguments {
            if let Some(mil::argument::binding::Binding::Value(v)) = &mut b.binding {
                visit_value(v, f)?;
            }
        }
    }
    for nv in &mut op.outputs {
        visit_type(nv.r#type.as_mut(), f)?;
    }
    for v in op.attributes.values_mut() {
        visit_value(v, f)?;
    }
    for b in &mut op.blocks {
        visit_block(b, f)?;
    }
    Ok(())
}

fn visit_value<E>(
    v: &mut mil::Value,
    f: &mut dyn FnMut(&mut mil::Value) -> Result<(), E>,
) -> Result<(), E> {
    visit_type(v.r#type.as_mut(), f)?;
    if let Some(value::Value::ImmediateValue(iv)) = &mut v.value {
        use mil::value::immediate_value::Value as I;
        match &mut iv.value {
            Some(I::Tuple(t)) => t.values.iter_mut().try_for_each(|x| visit_value(x, f))?,
            Some(I::List(t)) => t.values.iter_mut().try_for_each(|x| visit_value(x, f))?,
            Some(I::Dictionary(d)) => {
                for kv in &mut d.values {
                    if let Some(k) = &mut kv.key {
                        visit_value(k, f)?;
                    }
                    if let Some(x) = &mut kv.value {
                        visit_value(x, f)?;
                    }
                }
            }
            _ => {}
        }
    }
    f(v)
}

fn visit_type<E>(
    t: Option<&mut ValueType>,
    f: &mut dyn FnMut(&mut mil::Value) -> Result<(), E>,
) -> Result<(), E> {
    let Some(t) = t else { return Ok(()) };
    match &mut t.r#type {
        Some(value_type::Type::TensorType(tt)) => {
            for v in tt.attributes.values_mut() {
                visit_value(v, f)?;
            }
        }
        Some(value_type::Type::ListType(l)) => visit_type(l.r#type.as_deref_mut(), f)?,
        Some(value_type::Type::TupleType(tu)) => {
            for x in &mut tu.types {
                visit_type(Some(x), f)?;
            }
        }
        Some(value_type::Type::DictionaryType(d)) => {
            visit_type(d.key_type.as_deref_mut(), f)?;
            visit_type(d.value_type.as_deref_mut(), f)?;
        }
        Some(value_type::Type::StateType(s)) => visit_type(s.wrapped_type.as_deref_mut(), f)?,
        None => {}
    }
    Ok(())
}

/// Copies every file and directory of the input package into `dst`,
/// except the paths in `skip` (relative to the package root): the files
/// that the caller rewrites. Unknown files are copied verbatim.
pub fn copy_package_files(
    src: &Path,
    dst: &Path,
    skip: &BTreeSet<PathBuf>,
) -> Result<(), PackageError> {
    fn walk(
        src_root: &Path,
        rel: &Path,
        dst_root: &Path,
        skip: &BTreeSet<PathBuf>,
    ) -> Result<(), PackageError> {
        let dir = src_root.join(rel);
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .map_err(io(&dir))?
            .collect::<Result<_, _>>()
            .map_err(io(&dir))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let r = rel.join(e.file_name());
            if skip.contains(&r) {
                continue;
            }
            let from = src_root.join(&r);
            let to = dst_root.join(&r);
            let ft = e.file_type().map_err(io(&from))?;
            if ft.is_dir() {
                std::fs::create_dir_all(&to).map_err(io(&to))?;
                walk(src_root, &r, dst_root, skip)?;
            } else if ft.is_file() {
                std::fs::copy(&from, &to).map_err(io(&from))?;
            } else {
                return Err(PackageError::BadOutput {
                    path: from,
                    reason: "symbolic links and special files inside a package are not supported"
                        .into(),
                });
            }
        }
        Ok(())
    }
    walk(src, Path::new(""), dst, skip)
}
