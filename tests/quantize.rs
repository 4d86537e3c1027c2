//! `sdcompress quantize` through the real binary, asserting the numbers that matter:
//!
//! * accuracy and size vs coremltools: on the `*.int8-channel` fixtures (coremltools' own int8
//!   symmetric per-channel outputs), per weight our squared error is never above coremltools'
//!   (both decoded by coremltools' own decompression, `tests/interop/ct_palettized.py`), the
//!   same weights are compressed, and weight.bin is the same size (iOS18) or no larger (iOS16:
//!   we write one all-zero zero point per shape, coremltools one per weight name);
//! * every code type x mode x granularity loads in coremltools, decodes to the SNR the report
//!   claims, passes the shared oracle `verify.py`, and `decompress` gives exactly coremltools'
//!   decoded weights;
//! * op forms and opsets (iOS16 `constexpr_affine_dequantize` with a zero point always present,
//!   iOS18 `constexpr_blockwise_shift_scale` without `offset` when symmetric), refusals;
//! * determinism across `--threads`.
//!
//! Python: `$SDCOMPRESS_PYTHON`, else `.venv/bin/python`; without coremltools the coremltools
//! parts print "skipped: ..." unless `SDCOMPRESS_REQUIRE_INTEROP=1`. The oracle:
//! `$SDCOMPRESS_ORACLE`, else `../shared/oracle/verify.py` ("skipped" when absent).

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The report's `snr_db` and coremltools' decoded SNR must agree this closely (dB).
const SNR_TOL_DB: f64 = 0.01;

fn py_cmd(py: &Path, script: &str) -> Command {
    let mut cmd = Command::new(py);
    cmd.arg("-B")
        .arg(repo_root().join("tests").join("interop").join(script))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("TQDM_DISABLE", "1");
    cmd
}

fn run_ok(mut cmd: Command) -> String {
    let o = cmd.output().expect("run");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{cmd:?} failed ({}):\n{out}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

struct Run {
    out: PathBuf,
    report: Value,
}

fn report_path(out: &Path) -> PathBuf {
    out.with_extension("report.json")
}

fn quantize_cmd(input: &Path, out: &Path, args: &[&str]) -> Command {
    let mut c = sdcompress();
    c.arg("quantize")
        .arg(input)
        .arg("-o")
        .arg(out)
        .arg("--quiet")
        .arg("--report")
        .arg(report_path(out))
        .args(args);
    c
}

fn quantize(input: &Path, out: &Path, args: &[&str]) -> Run {
    let o = quantize_cmd(input, out, args).output().expect("run");
    assert_success(&o, &format!("quantize {args:?}"));
    let report: Value =
        serde_json::from_slice(&std::fs::read(report_path(out)).expect("report")).expect("JSON");
    assert_eq!(report["schema"], "sdcompress.report/1");
    assert_eq!(report["command"], "quantize");
    Run {
        out: out.to_path_buf(),
        report,
    }
}

fn weights(report: &Value) -> &Vec<Value> {
    report["weights"].as_array().expect("weights")
}

fn compressed(report: &Value) -> Vec<&Value> {
    weights(report)
        .iter()
        .filter(|w| w["skipped"].is_null())
        .collect()
}

/// The op types of the main function's constexpr ops, with counts.
fn constexpr_ops(pkg: &Path) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    let info = info_json(pkg);
    let text = info.to_string();
    for t in [
        "constexpr_blockwise_shift_scale",
        "constexpr_affine_dequantize",
        "constexpr_lut_to_dense",
        "constexpr_sparse_to_dense",
    ] {
        let n = text.matches(&format!("\"{t}\"")).count();
        if n > 0 {
            m.insert(t.to_string(), n);
        }
    }
    m
}

/// Runs ct_palettized.py (coremltools' decompression of every weight, paired with a base).
fn ct_facts(py: &Path, dir: &Path, jobs: &[(String, PathBuf, PathBuf)]) -> BTreeMap<String, Value> {
    let jobs_json: Vec<Value> = jobs
        .iter()
        .map(|(id, p, b)| json!({"id": id, "package": p, "base": b}))
        .collect();
    let jobs_file = dir.join("ct-jobs.json");
    let out_file = dir.join("ct-facts.json");
    std::fs::write(&jobs_file, serde_json::to_vec(&jobs_json).unwrap()).unwrap();
    let mut cmd = py_cmd(py, "ct_palettized.py");
    cmd.arg("--jobs")
        .arg(&jobs_file)
        .arg("--out")
        .arg(&out_file);
    run_ok(cmd);
    let facts: BTreeMap<String, Value> =
        serde_json::from_slice(&std::fs::read(&out_file).unwrap()).unwrap();
    for (id, p, _) in jobs {
        let f = &facts[id];
        assert!(
            f.get("error").is_none(),
            "{id}: coremltools cannot read {}: {}",
            p.display(),
            f["error"]
        );
        assert!(
            f["problems"].as_array().unwrap().is_empty(),
            "{id}: pairing problems {}",
            f["problems"]
        );
    }
    facts
}

/// coremltools' view agrees with the report: same compressed set, and every compressed weight
/// decodes to the report's SNR.
fn check_decodes_as_reported(id: &str, run: &Run, facts: &Value) {
    let ct = facts["weights"].as_object().unwrap();
    let ours = compressed(&run.report);
    let n_ct = ct.values().filter(|w| w["compressed"] == true).count();
    assert_eq!(
        ours.len(),
        n_ct,
        "{id}: compressed weights, report vs coremltools"
    );
    assert!(n_ct > 0, "{id}: nothing compressed");
    for w in ours {
        let name = w["name"].as_str().unwrap();
        let f = ct
            .get(name)
            .unwrap_or_else(|| panic!("{id}: coremltools lacks {name}"));
        assert_eq!(
            f["compressed"], true,
            "{id}: {name} not compressed in coremltools"
        );
        let snr_r = w["snr_db"].as_f64();
        let snr_c = f["snr_db"].as_f64();
        match (snr_r, snr_c) {
            (Some(a), Some(b)) => assert!(
                (a - b).abs() <= SNR_TOL_DB,
                "{id}: {name}: report snr {a} dB, coremltools decodes {b} dB"
            ),
            (a, b) => assert_eq!(
                a.is_none(),
                b.is_none(),
                "{id}: {name}: snr report {a:?} vs coremltools {b:?}"
            ),
        }
    }
}

/// int8 symmetric per-channel (coremltools' default) vs coremltools' own output of the same
/// fixture: per weight error never larger, same compressed set, and weight.bin the same size
/// on iOS18 (no larger on iOS16). Also checks the op forms.
#[test]
fn int8_channel_not_worse_than_coremltools() {
    let Some(py) = python() else { return };
    let tmp = tempdir();
    let cases = [
        ("tiny-sd-unet", "constexpr_affine_dequantize", 7),
        ("tiny-sd-unet-ios18", "constexpr_blockwise_shift_scale", 9),
    ];
    let mut jobs = Vec::new();
    let mut runs = Vec::new();
    for (base, op, spec) in cases {
        let run = quantize(
            &fixture(base),
            &tmp.path().join(format!("{base}.q.mlpackage")),
            &[],
        );
        assert!(
            run.report["specification_version"][1].as_i64().unwrap() >= spec,
            "{base}: spec"
        );
        let ops = constexpr_ops(&run.out);
        assert_eq!(ops.keys().collect::<Vec<_>>(), vec![op], "{base}: op forms");
        jobs.push((format!("{base}/ours"), run.out.clone(), fixture(base)));
        jobs.push((
            format!("{base}/coremltools"),
            fixture(&format!("{base}.int8-channel")),
            fixture(base),
        ));
        runs.push(run);
    }
    let facts = ct_facts(&py, tmp.path(), &jobs);
    for ((base, _, _), run) in cases.iter().zip(&runs) {
        let ours = &facts[&format!("{base}/ours")];
        let theirs = &facts[&format!("{base}/coremltools")];
        check_decodes_as_reported(base, run, ours);
        let (o, t) = (
            ours["weights"].as_object().unwrap(),
            theirs["weights"].as_object().unwrap(),
        );
        let (mut better, mut equal) = (0, 0);
        let (mut sse_o, mut sse_t, mut sig) = (0f64, 0f64, 0f64);
        for (name, tw) in t {
            if tw["compressed"] != true {
                assert_ne!(
                    o[name]["compressed"], true,
                    "{base}: {name} compressed by us only"
                );
                continue;
            }
            assert_eq!(
                o[name]["compressed"], true,
                "{base}: {name} not compressed by us"
            );
            let (so, st) = (
                o[name]["sse"].as_f64().unwrap(),
                tw["sse"].as_f64().unwrap(),
            );
            assert!(
                so <= st * (1.0 + 1e-12),
                "{base}: {name}: our sse {so:e} > coremltools {st:e}"
            );
            if so < st {
                better += 1;
            } else {
                equal += 1;
            }
            sse_o += so;
            sse_t += st;
            sig += tw["sig"].as_f64().unwrap();
        }
        let (bo, bt) = (
            ours["weight_bin_bytes"].as_u64().unwrap(),
            theirs["weight_bin_bytes"].as_u64().unwrap(),
        );
        println!(
            "{base}: {better} weights better, {equal} equal; SNR ours {:.3} dB, coremltools {:.3} dB; weight.bin ours {bo}, coremltools {bt}",
            10.0 * (sig / sse_o).log10(),
            10.0 * (sig / sse_t).log10()
        );
        if *base == "tiny-sd-unet-ios18" {
            assert_eq!(bo, bt, "{base}: weight.bin size");
        } else {
            assert!(bo <= bt, "{base}: weight.bin {bo} > coremltools {bt}");
        }
        assert_eq!(
            run.report["totals"]["weight_bytes_after"].as_u64(),
            Some(bo),
            "{base}: report weight_bytes_after"
        );
    }
}

/// Every code type, mode and granularity: loads and decodes in coremltools to the reported
/// SNR, `decompress` equals coremltools' decoding bit for bit, and the shared oracle accepts it.
#[test]
fn every_configuration_decodes_in_coremltools() {
    let tmp = tempdir();
    let mut cases: Vec<(String, &str, Vec<&str>)> = Vec::new();
    for dtype in ["int8", "uint8", "int4", "uint4"] {
        for mode in ["--symmetric", "--asymmetric"] {
            for gran in [
                &["--granularity", "per-tensor"][..],
                &["--granularity", "per-channel"][..],
                &["--block-size", "16"][..],
            ] {
                let mut args = vec!["--dtype", dtype, mode];
                args.extend_from_slice(gran);
                let id = format!("{dtype}{mode}{}", gran.join(""));
                cases.push((id, "tiny-sd-unet-ios18", args));
            }
        }
    }
    for dtype in ["int8", "uint8"] {
        for mode in ["--symmetric", "--asymmetric"] {
            for g in ["per-tensor", "per-channel"] {
                cases.push((
                    format!("ios16-{dtype}{mode}-{g}"),
                    "tiny-sd-unet",
                    vec!["--dtype", dtype, mode, "--granularity", g],
                ));
            }
        }
    }
    let mut runs = Vec::new();
    for (id, base, args) in &cases {
        let run = quantize(
            &fixture(base),
            &tmp.path().join(format!("{id}.mlpackage")),
            args,
        );
        let rep = &run.report;
        let ws = compressed(rep);
        assert_eq!(ws.len(), 81, "{id}: compressed weights");
        let ios16 = *base == "tiny-sd-unet";
        let ops = constexpr_ops(&run.out);
        let want = if ios16 {
            "constexpr_affine_dequantize"
        } else {
            "constexpr_blockwise_shift_scale"
        };
        assert_eq!(ops.keys().collect::<Vec<_>>(), vec![want], "{id}");
        // Size formula: codes at the type's width plus the parameters.
        let bits: u64 = if args.contains(&"int4") || args.contains(&"uint4") {
            4
        } else {
            8
        };
        for w in &ws {
            let d = w;
            let numel = numel(w);
            assert_eq!(d["value_bits"].as_u64(), Some(numel * bits), "{id}");
            let blocks: u64 = d["scale_shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .product();
            assert_eq!(d["scale_bits"].as_u64(), Some(blocks * 16), "{id}");
            // Signed symmetric needs no stored zero point.
            let signed_sym = args.contains(&"--symmetric") && args[1].starts_with("int");
            // Signed symmetric stores none; unsigned types always need one (asymmetric
            // signed ones may round to all zeros).
            if signed_sym {
                assert_eq!(d["zero_point"], "zero", "{id}");
                assert_eq!(d["offset_bits"], 0, "{id}");
            } else if args[1].starts_with("uint") {
                assert_eq!(d["zero_point"], "stored", "{id}");
                assert_eq!(d["offset_bits"].as_u64(), Some(blocks * bits), "{id}");
            }
            if args.contains(&"16") {
                let s: Vec<u64> = w["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap())
                    .collect();
                let g: Vec<u64> = d["scale_shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap())
                    .collect();
                assert_eq!(g[0], s[0], "{id}: per-block output axis");
                assert_eq!(g[1] * 16, s[1], "{id}: per-block input axis");
            }
        }
        runs.push((id.clone(), *base, run));
    }
    let Some(py) = python() else { return };
    let jobs: Vec<(String, PathBuf, PathBuf)> = runs
        .iter()
        .map(|(id, base, r)| (id.clone(), r.out.clone(), fixture(base)))
        .collect();
    let facts = ct_facts(&py, tmp.path(), &jobs);
    for (id, _, run) in &runs {
        check_decodes_as_reported(id, run, &facts[id]);
    }
    // decompress == coremltools' decoding, bit for bit (a sample of configurations).
    let sample: Vec<&(String, &str, Run)> = runs
        .iter()
        .filter(|(id, _, _)| {
            id.contains("per-channel") || id.contains("16") || id.starts_with("ios16")
        })
        .step_by(3)
        .collect();
    let mut wjobs = Vec::new();
    let mut vs_ct: Vec<OsString> = vec!["--weights-only".into(), "--pairs".into()];
    for (id, _, run) in &sample {
        let dec = tmp.path().join(format!("{id}.dec.mlpackage"));
        assert_success(&decompress(&run.out, &dec, false), "decompress");
        let ct = tmp.path().join(format!("{id}.ct.npz"));
        let ours = tmp.path().join(format!("{id}.ours.npz"));
        wjobs.push(json!({"package": run.out, "out": ct, "decompress": true}));
        wjobs.push(json!({"package": dec, "out": ours, "decompress": false}));
        vs_ct.extend([ours.into_os_string(), ct.into_os_string()]);
    }
    let jobs_file = tmp.path().join("wjobs.json");
    std::fs::write(&jobs_file, serde_json::to_vec(&wjobs).unwrap()).unwrap();
    let mut cmd = py_cmd(&py, "ct_weights.py");
    cmd.arg("--quiet").arg("--jobs").arg(&jobs_file);
    run_ok(cmd);
    let mut cmd = py_cmd(&py, "compare_weights.py");
    cmd.args(&vs_ct);
    println!("{}", run_ok(cmd).trim());
    let Some(verify) = oracle() else { return };
    for (id, base, run) in runs.iter().step_by(5) {
        let mut cmd = Command::new(&py);
        cmd.arg("-B")
            .arg(&verify)
            .arg(&run.out)
            .arg("--reference")
            .arg(fixture(base))
            .arg("--json")
            .env("PYTHONDONTWRITEBYTECODE", "1");
        let o = cmd.output().expect("verify.py");
        let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
            panic!(
                "{id}: verify.py printed no JSON ({e}): {}",
                String::from_utf8_lossy(&o.stderr)
            )
        });
        assert!(
            o.status.success() && v["ok"] == true,
            "{id}: verify.py: {}",
            v["problems"]
        );
        let n = v["weights"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["compressed"] == true)
            .count();
        assert_eq!(n, 81, "{id}: verify.py sees {n} compressed weights");
        println!("{id}: verify.py ok, {n} compressed weights");
    }
}

/// 4-bit and per-block need iOS18: refused on an iOS17 model with the hint, nothing written;
/// with --upgrade-opset the output is spec 9 with shift_scale ops.
#[test]
fn four_bit_and_per_block_need_ios18() {
    let tmp = tempdir();
    for args in [&["--dtype", "int4"][..], &["--block-size", "16"][..]] {
        let out = tmp.path().join("o.mlpackage");
        let o = quantize_cmd(&fixture("tiny-sd-unet"), &out, args)
            .output()
            .unwrap();
        // One error line naming the file and the reason, one hint line.
        assert_eq!(o.status.code(), Some(2));
        let err = String::from_utf8_lossy(&o.stderr);
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 2, "{err}");
        assert!(lines[0].starts_with("error: ") && lines[0].contains("tiny-sd-unet.mlpackage"));
        assert!(lines[0].contains("iOS18"), "{err}");
        assert!(lines[1].starts_with("hint: ") && lines[1].contains("--upgrade-opset"));
        assert_nothing_written(&out);
        assert!(!report_path(&out).exists());
        let mut a = args.to_vec();
        a.push("--upgrade-opset");
        let run = quantize(&fixture("tiny-sd-unet"), &out, &a);
        assert_eq!(run.report["specification_version"][1], 9);
        assert_eq!(
            constexpr_ops(&out).keys().collect::<Vec<_>>(),
            vec!["constexpr_blockwise_shift_scale"]
        );
        std::fs::remove_dir_all(&out).unwrap();
        std::fs::remove_file(report_path(&out)).unwrap();
    }
    // Contradictory flags and an already compressed input are one-line errors.
    let out = tmp.path().join("p.mlpackage");
    let o = quantize_cmd(
        &fixture("tiny-sd-unet-ios18"),
        &out,
        &["--granularity", "per-channel", "--block-size", "8"],
    )
    .output()
    .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--block-size"));
    assert_nothing_written(&out);
    let o = quantize_cmd(&fixture("tiny-sd-unet.int8-channel"), &out, &[])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("error: ")
            && err.contains("int8-channel")
            && err.contains("already compressed"),
        "{err}"
    );
    assert_nothing_written(&out);
}

/// `--threads 1` and `--threads 2` write byte-identical packages.
#[test]
fn threads_do_not_change_output() {
    let tmp = tempdir();
    let a = tmp.path().join("a.mlpackage");
    let b = tmp.path().join("b.mlpackage");
    quantize(
        &fixture("tiny-sd-unet-ios18"),
        &a,
        &["--dtype", "uint4", "--asymmetric", "--threads", "1"],
    );
    quantize(
        &fixture("tiny-sd-unet-ios18"),
        &b,
        &["--dtype", "uint4", "--asymmetric", "--threads", "2"],
    );
    assert_eq!(tree_contents(&a), tree_contents(&b));
}

/// Rank-1 consts (biases, norm scales) stay dense whatever their size, as in coremltools (a
/// synthetic SD-1.5 UNet has 26 such consts above 2048 elements that an earlier build
/// quantized): with a threshold low enough to admit them, every rank-1 const is skipped with
/// the reason and every compressed weight has rank >= 2.
#[test]
fn rank_one_consts_stay_dense() {
    let tmp = tempdir();
    let out = tmp.path().join("q.mlpackage");
    let run = quantize(
        &fixture("tiny-sd-unet-ios18"),
        &out,
        &["--weight-threshold", "100"],
    );
    let ws = weights(&run.report);
    let rank1: Vec<&Value> = ws
        .iter()
        .filter(|w| w["shape"].as_array().map(Vec::len) == Some(1))
        .filter(|w| w["shape"][0].as_u64().unwrap_or(0) > 100)
        .collect();
    assert!(
        rank1.len() >= 2,
        "the fixture has rank-1 consts above 100 elements"
    );
    for w in &rank1 {
        assert_eq!(w["skipped"], "rank < 2", "{}", w["name"]);
    }
    for w in compressed(&run.report) {
        assert!(
            w["shape"].as_array().expect("shape").len() >= 2,
            "{}",
            w["name"]
        );
    }
}

/// A config file sets the code type per op type and skips by name, as for palettize.
#[test]
fn config_file_per_op_type() {
    let tmp = tempdir();
    let cfg = tmp.path().join("c.json");
    std::fs::write(
        &cfg,
        r#"{"global_config": {"dtype": "int8"}, "op_type_configs": {"linear": {"dtype": "uint4", "mode": "linear"}, "conv": null}}"#,
    )
    .unwrap();
    let run = quantize(
        &fixture("tiny-sd-unet-ios18"),
        &tmp.path().join("o.mlpackage"),
        &["--config", cfg.to_str().unwrap()],
    );
    let mut n = 0;
    for w in weights(&run.report) {
        let types: Vec<&str> = w["op_types"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        if types.contains(&"conv") {
            assert!(
                !w["skipped"].is_null(),
                "conv weight compressed: {}",
                w["name"]
            );
        } else if w["skipped"].is_null() {
            n += 1;
            if types.contains(&"linear") {
                assert_eq!(w["quant_dtype"], "uint4");
                assert_eq!(w["mode"], "linear");
            } else {
                assert_eq!(w["quant_dtype"], "int8");
            }
        }
    }
    assert!(n > 0);
}

/// Quantizing a pruned package gives the joint form (iOS18):
/// `constexpr_sparse_blockwise_shift_scale` → `constexpr_sparse_to_dense`, the mask kept, the
/// codes of the kept values only. coremltools loads it and its `decompress_weights` equals our
/// `decompress` bit for bit, and an iOS16 pruned package
/// needs `--upgrade-opset`.
#[test]
fn pruned_input_gives_joint_sparse_quantized() {
    let tmp = tempdir();
    let base = fixture("tiny-sd-unet-ios18.prune0.4");
    let mut runs = Vec::new();
    for (id, args) in [
        ("sq-int8", &["--dtype", "int8"][..]),
        (
            "sq-uint4-asym-block",
            &["--dtype", "uint4", "--asymmetric", "--block-size", "16"][..],
        ),
    ] {
        let run = quantize(&base, &tmp.path().join(format!("{id}.mlpackage")), args);
        let ops = constexpr_ops(&run.out);
        assert_eq!(
            ops.keys().collect::<Vec<_>>(),
            vec!["constexpr_sparse_to_dense"],
            "{id}: the generic count only matches the dense op names; see below"
        );
        let text = info_json(&run.out).to_string();
        assert!(
            text.contains("constexpr_sparse_blockwise_shift_scale"),
            "{id}"
        );
        let ws = compressed(&run.report);
        assert_eq!(ws.len(), 81, "{id}");
        for w in &ws {
            let s = w["sparsity"].as_f64().unwrap();
            assert!((s - 0.4).abs() < 0.01, "{id}: {}: sparsity {s}", w["name"]);
            let numel = numel(w);
            let bits = if id.contains("uint4") { 4 } else { 8 };
            assert_eq!(w["mask_bits"].as_u64(), Some(numel), "{id}");
            assert_eq!(
                w["value_bits"].as_u64(),
                Some(w["nonzero"].as_u64().unwrap() * bits),
                "{id}"
            );
        }
        runs.push((id, run));
    }
    let out = tmp.path().join("ios16.mlpackage");
    let o = quantize_cmd(&fixture("tiny-sd-unet.prune0.4"), &out, &[])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("joint sparse + quantized"));
    assert_nothing_written(&out);
    let up = quantize(
        &fixture("tiny-sd-unet.prune0.4"),
        &out,
        &["--upgrade-opset"],
    );
    assert_eq!(up.report["specification_version"][1], 9);
    assert_eq!(compressed(&up.report).len(), 81);

    // coremltools' decompress_weights (the whole chain) loads the output and gives exactly
    // what our decompress gives.
    let Some(py) = python() else { return };
    let mut wjobs = Vec::new();
    let mut vs_ct: Vec<OsString> = vec!["--weights-only".into(), "--pairs".into()];
    for (id, run) in &runs {
        let dec = tmp.path().join(format!("{id}.dec.mlpackage"));
        assert_success(&decompress(&run.out, &dec, false), "decompress");
        let ct = tmp.path().join(format!("{id}.ct.npz"));
        let ours = tmp.path().join(format!("{id}.ours.npz"));
        wjobs.push(json!({"package": run.out, "out": ct, "decompress": true}));
        wjobs.push(json!({"package": dec, "out": ours, "decompress": false}));
        vs_ct.extend([ours.into_os_string(), ct.into_os_string()]);
    }
    let jobs_file = tmp.path().join("wjobs.json");
    std::fs::write(&jobs_file, serde_json::to_vec(&wjobs).unwrap()).unwrap();
    let mut cmd = py_cmd(&py, "ct_weights.py");
    cmd.arg("--quiet").arg("--jobs").arg(&jobs_file);
    run_ok(cmd);
    let mut cmd = py_cmd(&py, "compare_weights.py");
    cmd.args(&vs_ct);
    println!("{}", run_ok(cmd).trim());
}
