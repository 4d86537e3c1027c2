//! The checks behind the fuzz targets, as plain functions so that they can
//! also be replayed by ordinary tests (the main crate's `tests/bad_input.rs`
//! includes this file with `#[path]` and runs every seed and regression
//! input through it on stable Rust).
//!
//! Contract under test: on any bytes the readers return `Ok` or `Err`; they
//! never panic, overflow, index out of bounds, or loop forever. Where a
//! reader returns `Ok`, the invariants it promises are asserted too, so a
//! violated invariant is reported like a crash.
//!
//! This file must depend on `sdcompress` and `std` only.

use sdcompress::blob::{BlobFile, HEADER_LEN, RECORD_LEN};
use sdcompress::info::inspect;
use sdcompress::mil::constexpr::Evaluator;
use sdcompress::mil::program::{is_constexpr, op_label, op_name, param};
use sdcompress::mil::value::{decode_value, tensor_type_of};
use sdcompress::mil::{BlobFiles, FunctionIndex, Use};
use sdcompress::package::{for_each_blob_ref, safe_relative, Item, Manifest, Package};
use sdcompress::proto::mil::{self as milp, argument::binding::Binding};
use sdcompress::proto::spec::model::Type;
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// `weight.bin` image → `BlobFile::validate`.
pub fn blob_reader(data: &[u8]) {
    let path = Path::new("pkg.mlpackage/Data/com.apple.CoreML/weights/weight.bin");
    match BlobFile::validate(path, data) {
        Ok(records) => {
            let len = data.len() as u64;
            let count = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            assert_eq!(
                records.len() as u64,
                u64::from(count),
                "one record per header count"
            );
            let mut prev_end = HEADER_LEN;
            for (&off, r) in &records {
                assert_eq!(off, r.offset);
                assert_eq!(off % 64, 0, "records are 64-aligned");
                assert!(off >= prev_end, "records do not overlap earlier payloads");
                assert_eq!(r.data_offset % 64, 0, "payloads are 64-aligned");
                assert!(
                    r.data_offset >= off + RECORD_LEN,
                    "payload after its record"
                );
                let end = r
                    .data_offset
                    .checked_add(r.size)
                    .expect("payload end fits u64");
                assert!(end <= len, "payload inside the file");
                assert!(r.padding_bits < 8);
                assert!(r.padding_bits == 0 || r.dtype.is_sub_byte());
                // The payload slice is what `BlobFile::payload` hands out.
                let _ = &data[r.data_offset as usize..end as usize];
                prev_end = end;
            }
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains("weight.bin"),
                "the error names the file: {msg}"
            );
        }
    }
}

/// `Manifest.json` bytes → `Manifest::parse` (and `safe_relative`).
pub fn manifest(data: &[u8]) {
    let path = Path::new("pkg.mlpackage/Manifest.json");
    match Manifest::parse(path, data) {
        Ok(m) => {
            let root = m.root();
            assert_eq!(root.id, m.root_id);
            for item in &m.items {
                assert!(item.path.is_relative(), "{:?}", item.path);
                assert!(
                    item.path
                        .components()
                        .all(|c| matches!(c, Component::Normal(_))),
                    "item path escapes: {:?}",
                    item.path
                );
            }
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains("Manifest.json"),
                "the error names the file: {msg}"
            );
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Some(p) = safe_relative(s) {
            assert!(!p.as_os_str().is_empty());
            assert!(
                p.components().all(|c| matches!(c, Component::Normal(_))),
                "{p:?}"
            );
        }
    }
}

/// Decodes every value written directly on `op` (attributes and inline
/// input bindings) against an empty set of weight files.
fn decode_inline_values(op: &milp::Operation, blobs: &BlobFiles) {
    for (k, v) in &op.attributes {
        let _ = tensor_type_of(v.r#type.as_ref(), k);
        let _ = decode_value(v, blobs, k);
    }
    for (k, arg) in &op.inputs {
        let _ = param(op, k);
        for b in &arg.arguments {
            if let Some(Binding::Value(v)) = &b.binding {
                let _ = tensor_type_of(v.r#type.as_ref(), k);
                let _ = decode_value(v, blobs, k);
            }
        }
    }
}

/// `model.mlmodel` bytes → decode, index every function, look up
/// producers and uses, decode every inline value, materialise every
/// constexpr op, and build the `info` report of an in-memory package
/// without weight files.
pub fn program(data: &[u8]) {
    let Ok(model) = sdcompress::model::decode(data) else {
        return;
    };
    // Writing is deterministic and a decoded model re-encodes to bytes
    // that decode to the same model (compared as bytes: floats may be NaN).
    let bytes = sdcompress::model::encode(&model);
    let again = sdcompress::model::decode(&bytes).expect("our own encoding decodes");
    assert_eq!(
        sdcompress::model::encode(&again),
        bytes,
        "encode ∘ decode is stable"
    );

    let Some(Type::MlProgram(prog)) = &model.r#type else {
        unreachable!("model::decode accepts only ML Programs")
    };
    let mut refs = 0usize;
    for_each_blob_ref(prog, &mut |_| refs += 1);

    let blobs = BlobFiles::new();
    for (fname, func) in &prog.functions {
        let Ok(index) = FunctionIndex::new(fname, func) else {
            continue;
        };
        let hist = index.op_histogram();
        assert_eq!(hist.values().sum::<usize>(), index.ops.len());
        for (i, (_, op)) in index.ops.iter().enumerate() {
            let _ = op_label(op);
            let _ = op_name(op);
            for o in &op.outputs {
                let (p, _) = index
                    .producer_op(&o.name)
                    .expect("every output has a producer");
                assert_eq!(p, i, "output '{}' is produced by its own op", o.name);
                for u in index.uses(&o.name) {
                    match u {
                        Use::Input { op, .. } => assert!(*op < index.ops.len()),
                        Use::BlockOutput { owner } => {
                            assert!(owner.is_none_or(|w| w < index.ops.len()))
                        }
                    }
                }
            }
            decode_inline_values(op, &blobs);
            if is_constexpr(&op.r#type) {
                let mut ev = Evaluator::new(&index, &blobs);
                if let Ok(outs) = ev.materialize(op) {
                    assert_eq!(outs.len(), op.outputs.len());
                    for t in &outs {
                        assert_eq!(t.numel(), t.data.len(), "tensor data matches its shape");
                    }
                }
            } else if op.r#type == "const" {
                let mut ev = Evaluator::new(&index, &blobs);
                for o in &op.outputs {
                    if let Ok(t) = ev.value(&o.name, "fuzz") {
                        assert_eq!(t.numel(), t.data.len(), "tensor data matches its shape");
                    }
                }
            }
        }
    }

    // `info` on a package that holds this model and no weight files.
    let root_id = "root".to_string();
    let pkg = Package {
        root: PathBuf::from("fuzz.mlpackage"),
        manifest: Manifest {
            version: "1.0.0".into(),
            items: vec![Item {
                id: root_id.clone(),
                path: PathBuf::from("com.apple.CoreML/model.mlmodel"),
                name: "model.mlmodel".into(),
                author: "com.apple.CoreML".into(),
                description: "CoreML Model Specification".into(),
            }],
            root_id,
        },
        model_rel: PathBuf::from("Data/com.apple.CoreML/model.mlmodel"),
        model,
        model_len: data.len() as u64,
        blobs: BlobFiles::new(),
        blob_rel: BTreeMap::new(),
    };
    if let Ok(info) = inspect(&pkg, "fuzz.mlpackage") {
        assert!(info.weights.count >= info.compressed.count);
        assert!(info.weights.parameters >= info.compressed.parameters);
        assert!(info.largest.len() <= 10);
        let _ = format!("{info:?}");
    }
}
