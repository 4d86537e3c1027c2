//! The common shape of every pass: stage the output directory, copy the
//! files we do not rewrite, rebuild each function's ops through a
//! per-op callback (relocating every blob into the new weight files),
//! write `model.mlmodel`, finish the weight files, rename into place.

use crate::error::Error;
use crate::mil::{BlobFiles, FunctionIndex};
use crate::model;
use crate::package::{copy_package_files, Package, Staging, WeightSink};
use crate::proto::mil::{Block, Operation};
use crate::proto::spec::model::Type;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Progress callback: (ops done, ops total) per function.
pub type Progress<'p> = &'p (dyn Fn(u64, u64) + Sync);

/// What a rewrite produced.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RewriteStats {
    /// Final output path.
    pub output: PathBuf,
    /// Bytes of `model.mlmodel` written.
    pub model_bytes: u64,
    /// Bytes of weight files written.
    pub weight_bytes: u64,
}

/// What a pass does with one op of the active block of a function.
pub trait OpRewriter {
    /// Returns the ops that replace `ops[i]` (itself for a no-op; empty to
    /// drop it). Blob references in returned ops must point to the *input*
    /// files unless `relocated` is set by the callee.
    fn rewrite(
        &mut self,
        index: &FunctionIndex<'_>,
        op_index: usize,
        op: &Operation,
        blobs: &BlobFiles,
        sink: &mut WeightSink<'_>,
    ) -> Result<Rewritten, Error>;

    /// Last changes to the model before it is written (spec version,
    /// opset relabelling).
    fn finish_model(&mut self, _model: &mut crate::proto::spec::Model) -> Result<(), Error> {
        Ok(())
    }
}

/// Result of rewriting one op.
pub enum Rewritten {
    /// Keep the op unchanged (its blobs are copied).
    Keep,
    /// Drop the op.
    Drop,
    /// Replace it with these ops, whose blob references already point into
    /// the output.
    Replace(Vec<Operation>),
}

/// Runs `pass` over every function of `pkg` and writes the result to `out`.
pub fn rewrite_package(
    pkg: &Package,
    out: &Path,
    force: bool,
    pass: &mut dyn OpRewriter,
    progress: Progress<'_>,
) -> Result<RewriteStats, Error> {
    let staging = Staging::new(out, &pkg.root, force)?;
    let mut skip: BTreeSet<PathBuf> = pkg.blob_rel.values().cloned().collect();
    skip.insert(pkg.model_rel.clone());
    copy_package_files(&pkg.root, staging.dir(), &skip)?;

    let mut sink = WeightSink::new(staging.dir(), &pkg.model_rel, &pkg.blobs);
    let mut new_model = pkg.model.clone();
    let Some(Type::MlProgram(new_prog)) = &mut new_model.r#type else {
        unreachable!("Package::open accepts only mlProgram models")
    };
    let prog = pkg.program();
    let model_path = pkg.model_path();
    sink.relocate_program_attrs(new_prog).map_err(Error::from)?;
    for (fname, func) in &prog.functions {
        let index = FunctionIndex::new(fname, func).map_err(|e| Error::mil(&model_path, e))?;
        let total = index.ops.len() as u64;
        let mut done = 0u64;
        let new_block = rebuild_block(
            &index,
            index.block,
            &mut 0,
            pass,
            &pkg.blobs,
            &mut sink,
            &mut |n| {
                done += n;
                progress(done, total);
            },
        )?;
        let nf = new_prog
            .functions
            .get_mut(fname)
            .expect("cloned program has the same functions");
        nf.block_specializations
            .insert(func.opset.clone(), new_block);
        // Other specializations (coremltools never writes any) are kept
        // as they were, with their blobs relocated.
        for (k, b) in nf.block_specializations.iter_mut() {
            if k != &func.opset {
                for op in &mut b.operations {
                    sink.relocate_op(op)?;
                }
            }
        }
    }
    pass.finish_model(&mut new_model)?;
    let bytes = model::encode(&new_model);
    let mpath = staging.dir().join(&pkg.model_rel);
    if let Some(parent) = mpath.parent() {
        std::fs::create_dir_all(parent).map_err(|source| Error::Io {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    std::fs::write(&mpath, &bytes).map_err(|source| Error::Io {
        path: mpath.clone(),
        source,
    })?;
    let weight_bytes = sink.finish()?;
    let output = staging.commit()?;
    Ok(RewriteStats {
        output,
        model_bytes: bytes.len() as u64,
        weight_bytes,
    })
}

/// Rebuilds a block. `counter` walks the pre-order op numbering of
/// [`FunctionIndex::ops`] in step with the recursion.
#[allow(clippy::too_many_arguments)]
fn rebuild_block(
    index: &FunctionIndex<'_>,
    block: &Block,
    counter: &mut usize,
    pass: &mut dyn OpRewriter,
    blobs: &BlobFiles,
    sink: &mut WeightSink<'_>,
    tick: &mut dyn FnMut(u64),
) -> Result<Block, Error> {
    let mut out = Block {
        inputs: block.inputs.clone(),
        outputs: block.outputs.clone(),
        operations: Vec::with_capacity(block.operations.len()),
        attributes: block.attributes.clone(),
    };
    for v in out.attributes.values_mut() {
        sink.relocate(v)?;
    }
    for op in &block.operations {
        let me = *counter;
        *counter += 1;
        tick(1);
        match pass.rewrite(index, me, op, blobs, sink)? {
            Rewritten::Drop => {
                // Skip the numbering of its nested ops too.
                *counter += count_nested(op);
            }
            Rewritten::Replace(ops) => {
                *counter += count_nested(op);
                out.operations.extend(ops);
            }
            Rewritten::Keep => {
                let mut new_op = Operation {
                    r#type: op.r#type.clone(),
                    inputs: op.inputs.clone(),
                    outputs: op.outputs.clone(),
                    blocks: Vec::with_capacity(op.blocks.len()),
                    attributes: op.attributes.clone(),
                };
                sink.relocate_op(&mut new_op)?;
                for b in &op.blocks {
                    let nb = rebuild_block(index, b, counter, pass, blobs, sink, tick)?;
                    new_op.blocks.push(nb);
                }
                out.operations.push(new_op);
            }
        }
    }
    Ok(out)
}

fn count_nested(op: &Operation) -> usize {
    op.blocks
        .iter()
        .flat_map(|b| &b.operations)
        .map(|o| 1 + count_nested(o))
        .sum()
}
