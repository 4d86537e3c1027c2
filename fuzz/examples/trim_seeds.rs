//! Writes small `model.mlmodel` seeds for the `program` fuzz target: the
//! fixtures' programs are ~250 KB, which libFuzzer mutates slowly, so this
//! keeps a few slices of each program (the ops around its first constexpr
//! chains, and the first ops of the main block) as separate models. The
//! chain slices also come in an `.inline` variant whose blob references are
//! replaced by immediate values read from `weight.bin`, so that the fuzzer
//! (which runs without weight files) reaches the constexpr numerics.
//!
//! Usage: `cargo run --manifest-path fuzz/Cargo.toml --example trim_seeds -- <fixtures dir> <out dir>`
//! (run by `fuzz/seed.sh`).

use sdcompress::mil::program::is_constexpr;
use sdcompress::mil::value::{decode_value, immediate_value};
use sdcompress::mil::{BlobFiles, FunctionIndex};
use sdcompress::package::Package;
use sdcompress::proto::mil::{argument::binding::Binding, value, Operation, Value};
use sdcompress::proto::spec::{model::Type, Model};
use std::collections::BTreeSet;
use std::path::Path;

/// The model with `main`'s active block reduced to the ops whose indices
/// are in `keep` (program order kept); the block outputs become the
/// outputs of the last kept op.
fn slice(model: &Model, keep: &BTreeSet<usize>) -> Model {
    let mut m = model.clone();
    let Some(Type::MlProgram(p)) = &mut m.r#type else {
        unreachable!()
    };
    for f in p.functions.values_mut() {
        let opset = f.opset.clone();
        let b = f.block_specializations.get_mut(&opset).unwrap();
        let ops: Vec<Operation> = b
            .operations
            .iter()
            .enumerate()
            .filter(|(i, _)| keep.contains(i))
            .map(|(_, o)| o.clone())
            .collect();
        b.outputs = ops
            .last()
            .map(|o| o.outputs.iter().map(|x| x.name.clone()).collect())
            .unwrap_or_default();
        b.operations = ops;
    }
    m
}

/// Replaces every blob reference written on the ops of `m` by the
/// immediate value it stands for.
fn inline_blobs(m: &mut Model, blobs: &BlobFiles) {
    let Some(Type::MlProgram(p)) = &mut m.r#type else {
        unreachable!()
    };
    let inline = |v: &mut Value| {
        if matches!(v.value, Some(value::Value::BlobFileValue(_))) {
            let t = decode_value(v, blobs, "seed").expect("fixture blobs decode");
            *v = immediate_value(&t).expect("fixture tensors encode");
        }
    };
    for f in p.functions.values_mut() {
        for b in f.block_specializations.values_mut() {
            for op in &mut b.operations {
                op.attributes.values_mut().for_each(inline);
                for arg in op.inputs.values_mut() {
                    for b in &mut arg.arguments {
                        if let Some(Binding::Value(v)) = &mut b.binding {
                            inline(v);
                        }
                    }
                }
            }
        }
    }
}

/// Indices (top-level ops of the main block) of `op` and, transitively,
/// the producers of its named inputs.
fn with_producers(index: &FunctionIndex<'_>, i: usize, out: &mut BTreeSet<usize>) {
    if !out.insert(i) {
        return;
    }
    let op = index.ops[i].1;
    for arg in op.inputs.values() {
        for b in &arg.arguments {
            if let Some(Binding::Name(n)) = &b.binding {
                if let Some((p, _)) = index.producer_op(n) {
                    with_producers(index, p, out);
                }
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (fixtures, out) = (Path::new(&args[1]), Path::new(&args[2]));
    std::fs::create_dir_all(out).unwrap();
    let mut names: Vec<_> = std::fs::read_dir(fixtures)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "mlpackage"))
        .collect();
    names.sort();
    let mut written = 0;
    for pkg in names {
        let stem = pkg.file_stem().unwrap().to_string_lossy().into_owned();
        let opened = Package::open(&pkg).unwrap();
        let model = opened.model.clone();
        let Some(Type::MlProgram(p)) = &model.r#type else {
            continue;
        };
        let Some((fname, func)) = p.functions.iter().next() else {
            continue;
        };
        let index = FunctionIndex::new(fname, func).unwrap();
        // Only top-level ops (no nested blocks in these fixtures): the
        // pre-order index equals the position in the block.
        if index.ops.iter().any(|(id, _)| !id.path.is_empty()) {
            continue;
        }
        let mut slices: Vec<(String, BTreeSet<usize>)> = Vec::new();
        // The first 3 constexpr chains, each with its first consumer.
        let mut chains = BTreeSet::new();
        let roots: Vec<usize> = index
            .ops
            .iter()
            .enumerate()
            .filter(|(_, (_, op))| is_constexpr(&op.r#type))
            .map(|(i, _)| i)
            .take(3)
            .collect();
        for &r in &roots {
            with_producers(&index, r, &mut chains);
            let out_name = &index.ops[r].1.outputs[0].name;
            if let Some(sdcompress::mil::Use::Input { op, .. }) = index.uses(out_name).first() {
                chains.insert(*op);
            }
        }
        if !chains.is_empty() {
            slices.push(("chains".into(), chains));
        }
        // The first 40 ops as they are.
        slices.push(("head40".into(), (0..index.ops.len().min(40)).collect()));
        for (label, keep) in slices {
            let m = slice(&model, &keep);
            std::fs::write(
                out.join(format!("{stem}.{label}")),
                sdcompress::model::encode(&m),
            )
            .unwrap();
            written += 1;
        }
        // The constexpr op with the smallest output that feeds an ordinary
        // op, its whole chain and that consumer, with the blobs inlined (the
        // consumer's other inputs are left dangling).
        let numel = |op: &Operation| -> u64 {
            op.outputs
                .first()
                .and_then(|o| sdcompress::mil::value::tensor_type_of(o.r#type.as_ref(), "").ok())
                .map_or(u64::MAX, |(_, s)| s.iter().map(|&d| d as u64).product())
        };
        let smallest = index
            .ops
            .iter()
            .enumerate()
            .filter(|(_, (_, op))| is_constexpr(&op.r#type))
            .filter_map(
                |(i, (_, op))| match index.uses(&op.outputs[0].name).first() {
                    Some(sdcompress::mil::Use::Input { op: c, .. })
                        if !is_constexpr(&index.ops[*c].1.r#type) =>
                    {
                        Some((numel(op), i, *c))
                    }
                    _ => None,
                },
            )
            .min();
        if let Some((_, i, c)) = smallest {
            let mut keep = BTreeSet::new();
            with_producers(&index, i, &mut keep);
            keep.insert(c);
            let mut m = slice(&model, &keep);
            inline_blobs(&mut m, &opened.blobs);
            // The inlined chain must materialise without weight files.
            let Some(Type::MlProgram(p)) = &m.r#type else {
                unreachable!()
            };
            let (fname, func) = p.functions.iter().next().unwrap();
            let ix = FunctionIndex::new(fname, func).unwrap();
            let none = BlobFiles::new();
            for (_, op) in ix.ops.iter().filter(|(_, op)| is_constexpr(&op.r#type)) {
                sdcompress::mil::constexpr::Evaluator::new(&ix, &none)
                    .materialize(op)
                    .unwrap_or_else(|e| panic!("{stem}: inlined chain: {e}"));
            }
            std::fs::write(
                out.join(format!("{stem}.inline")),
                sdcompress::model::encode(&m),
            )
            .unwrap();
            written += 1;
        }
    }
    println!("wrote {written} program seeds to {}", out.display());
}
