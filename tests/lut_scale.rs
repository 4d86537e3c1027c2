//! `palettize --lut-dtype` and `--per-channel-scale` through the real binary, against
//! coremltools 9.0 on the same fixtures:
//!
//! * every output loads in coremltools, which decodes each weight (through the
//!   `constexpr_blockwise_shift_scale` → `constexpr_lut_to_dense` chain, or the joint
//!   `... → constexpr_lut_to_sparse → constexpr_sparse_to_dense`) to the SNR the report claims;
//! * per weight, our squared error is never above coremltools' for the same configuration
//!   (coremltools' equivalent is made in the test by `tests/interop/ct_compress.py`);
//! * `decompress` equals coremltools' `decompress_weights` bit for bit, and the shared oracle
//!   `verify.py` accepts the outputs;
//! * a weight that per-channel scaling skips is left byte-identical (coremltools #2777 divides
//!   it by its scales and leaves it so).
//!
//! Python: `$SDCOMPRESS_PYTHON`, else `.venv/bin/python`; without coremltools the coremltools
//! parts print "skipped: ..." (see tests/common).

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

fn palettize(input: &Path, out: &Path, args: &[&str]) -> Run {
    let rp = out.with_extension("report.json");
    let o = sdcompress()
        .arg("palettize")
        .arg(input)
        .arg("-o")
        .arg(out)
        .arg("--quiet")
        .arg("--report")
        .arg(&rp)
        .args(args)
        .output()
        .expect("run");
    assert_success(&o, &format!("palettize {args:?}"));
    let report: Value = serde_json::from_slice(&std::fs::read(&rp).expect("report")).unwrap();
    Run {
        out: out.to_path_buf(),
        report,
    }
}

fn compressed(report: &Value) -> Vec<&Value> {
    report["weights"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["skipped"].is_null())
        .collect()
}

/// Counts of the main function's op types, from `info --json`.
fn op_types(pkg: &Path) -> BTreeMap<String, u64> {
    let info = info_json(pkg);
    info["functions"][0]["op_types"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect()
}

/// coremltools' own equivalent of `base` under `recipe` (ct_compress.py).
fn coremltools_made(py: &Path, base: &Path, out: &Path, recipe: Value) -> PathBuf {
    let mut cmd = py_cmd(py, "ct_compress.py");
    cmd.arg(base).arg(out).arg(recipe.to_string());
    run_ok(cmd);
    out.to_path_buf()
}

/// ct_palettized.py facts (coremltools' decoding of every weight against its base).
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

/// Our weights decode in coremltools to the report's SNR, and per weight our squared error is
/// at most coremltools'; the same weights are compressed. Returns (better, equal, SNR ours,
/// SNR coremltools).
fn compare(id: &str, run: &Run, ours: &Value, theirs: &Value) -> (usize, usize, f64, f64) {
    compare_with(id, run, ours, theirs, true)
}

/// [`compare`], with the per-weight `sse <= coremltools'` check only when `per_weight` (vector
/// k-means is a heuristic on both sides: there the bar is the total).
fn compare_with(
    id: &str,
    run: &Run,
    ours: &Value,
    theirs: &Value,
    per_weight: bool,
) -> (usize, usize, f64, f64) {
    let o = ours["weights"].as_object().unwrap();
    let t = theirs["weights"].as_object().unwrap();
    let reported: BTreeMap<&str, &Value> = compressed(&run.report)
        .into_iter()
        .map(|w| (w["name"].as_str().unwrap(), w))
        .collect();
    assert!(!reported.is_empty(), "{id}: nothing compressed");
    let (mut better, mut equal) = (0, 0);
    let (mut sse_o, mut sse_t, mut sig) = (0f64, 0f64, 0f64);
    for (name, ow) in o {
        assert_eq!(
            ow["compressed"] == true,
            reported.contains_key(name.as_str()),
            "{id}: {name}: report and coremltools disagree on compression"
        );
        let Some(w) = reported.get(name.as_str()) else {
            continue;
        };
        match (w["snr_db"].as_f64(), ow["snr_db"].as_f64()) {
            (Some(a), Some(b)) => assert!(
                (a - b).abs() <= SNR_TOL_DB,
                "{id}: {name}: report snr {a} dB, coremltools decodes {b} dB"
            ),
            (a, b) => assert_eq!(a.is_none(), b.is_none(), "{id}: {name}: snr {a:?} vs {b:?}"),
        }
        let tw = &t[name];
        assert_eq!(tw["compressed"], true, "{id}: {name}: only we compress it");
        let (so, st) = (ow["sse"].as_f64().unwrap(), tw["sse"].as_f64().unwrap());
        assert!(
            !per_weight || so <= st * (1.0 + 1e-12),
            "{id}: {name}: our sse {so:e} > coremltools {st:e}"
        );
        if so < st {
            better += 1;
        } else if so <= st * (1.0 + 1e-12) {
            equal += 1;
        }
        sse_o += so;
        sse_t += st;
        sig += tw["sig"].as_f64().unwrap();
    }
    let n_t = t.values().filter(|w| w["compressed"] == true).count();
    assert_eq!(reported.len(), n_t, "{id}: compressed weights");
    if per_weight {
        assert_eq!(better + equal, n_t, "{id}: compressed weights");
    }
    (
        better,
        equal,
        10.0 * (sig / sse_o).log10(),
        10.0 * (sig / sse_t).log10(),
    )
}

/// `decompress` of each output equals coremltools' `decompress_weights`, bit for bit.
fn decompress_matches_coremltools(py: &Path, dir: &Path, runs: &[(&str, &Run)]) {
    let mut wjobs = Vec::new();
    let mut pairs: Vec<OsString> = vec!["--weights-only".into(), "--pairs".into()];
    for (id, run) in runs {
        let dec = dir.join(format!("{id}.dec.mlpackage"));
        assert_success(&decompress(&run.out, &dec, false), "decompress");
        let ct = dir.join(format!("{id}.ct.npz"));
        let ours = dir.join(format!("{id}.ours.npz"));
        wjobs.push(json!({"package": run.out, "out": ct, "decompress": true}));
        wjobs.push(json!({"package": dec, "out": ours, "decompress": false}));
        pairs.extend([ours.into_os_string(), ct.into_os_string()]);
    }
    let jobs_file = dir.join("wjobs.json");
    std::fs::write(&jobs_file, serde_json::to_vec(&wjobs).unwrap()).unwrap();
    let mut cmd = py_cmd(py, "ct_weights.py");
    cmd.arg("--quiet").arg("--jobs").arg(&jobs_file);
    run_ok(cmd);
    let mut cmd = py_cmd(py, "compare_weights.py");
    cmd.args(&pairs);
    println!("{}", run_ok(cmd).trim());
}

/// The shared oracle accepts the output and sees `n` compressed weights.
fn oracle_accepts(py: &Path, id: &str, out: &Path, base: &Path, n: usize) {
    let Some(verify) = oracle() else { return };
    let o = Command::new(py)
        .arg("-B")
        .arg(&verify)
        .arg(out)
        .arg("--reference")
        .arg(base)
        .arg("--json")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("verify.py");
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
    let got = v["weights"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["compressed"] == true)
        .count();
    assert_eq!(got, n, "{id}: verify.py compressed weights");
}

/// `--lut-dtype int8|uint8`, dense and joint (on a pruned input), against coremltools'
/// palettize + per-tensor `linear_quantize_weights(joint_compression=True)` of the LUT.
#[test]
fn lut_dtype_not_worse_than_coremltools() {
    let tmp = tempdir();
    let base = fixture("tiny-sd-unet-ios18");
    let pruned = fixture("tiny-sd-unet-ios18.prune0.4");
    // (id, input, our flags, coremltools palettizer config, joint, LUT code type)
    type Case<'a> = (&'a str, &'a Path, &'a [&'a str], Value, bool, &'a str);
    let cases: [Case<'_>; 3] = [
        (
            "int8-tensor",
            &base,
            &["--nbits", "4", "--lut-dtype", "int8"],
            json!({"nbits": 4}),
            false,
            "int8",
        ),
        (
            "uint8-gs16",
            &base,
            &["--nbits", "4", "--group-size", "16", "--lut-dtype", "uint8"],
            json!({"nbits": 4, "granularity": "per_grouped_channel", "group_size": 16}),
            false,
            "uint8",
        ),
        (
            "joint-int8-gs16",
            &pruned,
            &["--nbits", "4", "--group-size", "16", "--lut-dtype", "int8"],
            json!({"nbits": 4, "granularity": "per_grouped_channel", "group_size": 16}),
            true,
            "int8",
        ),
    ];
    let mut runs = Vec::new();
    for (id, input, args, _, joint, dtype) in &cases {
        let run = palettize(input, &tmp.path().join(format!("{id}.mlpackage")), args);
        let ws = compressed(&run.report);
        assert_eq!(ws.len(), 81, "{id}: compressed weights");
        for w in &ws {
            assert_eq!(w["lut_dtype"], *dtype, "{id}");
            // Stored entries at 8 bits, a scale per LUT (and a uint8 offset per LUT).
            let g = w["groups"].as_u64().unwrap();
            let off = if *dtype == "uint8" { g * 8 } else { 0 };
            assert_eq!(
                w["lut_bits"].as_u64(),
                Some(g * 16 * 8 + g * 16 + off),
                "{id}"
            );
        }
        let ops = op_types(&run.out);
        assert_eq!(
            ops.get("constexpr_blockwise_shift_scale"),
            Some(&81),
            "{id}"
        );
        let lut_op = if *joint {
            "constexpr_lut_to_sparse"
        } else {
            "constexpr_lut_to_dense"
        };
        assert_eq!(ops.get(lut_op), Some(&81), "{id}");
        runs.push(run);
    }
    let Some(py) = python() else { return };
    let mut jobs = Vec::new();
    for ((id, input, _, cfg, joint, dtype), run) in cases.iter().zip(&runs) {
        let mut recipe = vec![];
        let kwargs = if *joint {
            json!({"joint_compression": true})
        } else {
            json!({})
        };
        recipe.push(json!({"fn": "palettize_weights", "config": cfg, "kwargs": kwargs}));
        recipe.push(json!({"fn": "linear_quantize_weights",
            "config": {"dtype": dtype, "granularity": "per_tensor"},
            "kwargs": {"joint_compression": true}}));
        let ct = coremltools_made(
            &py,
            input,
            &tmp.path().join(format!("{id}.ct.mlpackage")),
            Value::Array(recipe),
        );
        jobs.push((format!("{id}/ours"), run.out.clone(), input.to_path_buf()));
        jobs.push((format!("{id}/coremltools"), ct, input.to_path_buf()));
    }
    let facts = ct_facts(&py, tmp.path(), &jobs);
    for ((id, input, ..), run) in cases.iter().zip(&runs) {
        let ours = &facts[&format!("{id}/ours")];
        let theirs = &facts[&format!("{id}/coremltools")];
        let (better, equal, snr_o, snr_t) = compare(id, run, ours, theirs);
        println!(
            "{id}: {better} weights better, {equal} equal; SNR ours {snr_o:.3} dB, coremltools {snr_t:.3} dB; weight.bin ours {}, coremltools {}",
            ours["weight_bin_bytes"], theirs["weight_bin_bytes"]
        );
        oracle_accepts(&py, id, &run.out, input, 81);
    }
    let named: Vec<(&str, &Run)> = cases.iter().map(|c| c.0).zip(&runs).collect();
    decompress_matches_coremltools(&py, tmp.path(), &named);
}

/// Quantized LUTs need iOS18: refused on an iOS17 model with a hint, allowed with
/// --upgrade-opset; the same options give the same bytes whatever --threads is.
#[test]
fn lut_dtype_needs_ios18_and_is_deterministic() {
    let tmp = tempdir();
    let out = tmp.path().join("o.mlpackage");
    let o = sdcompress()
        .args(["palettize", "--nbits", "4", "--lut-dtype", "int8"])
        .arg(fixture("tiny-sd-unet"))
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(lines[0].starts_with("error: ") && lines[0].contains("tiny-sd-unet.mlpackage"));
    assert!(lines[0].contains("iOS18"), "{err}");
    assert!(lines[1].starts_with("hint: ") && lines[1].contains("--upgrade-opset"));
    assert_nothing_written(&out);
    let a = palettize(
        &fixture("tiny-sd-unet"),
        &tmp.path().join("a.mlpackage"),
        &[
            "--nbits",
            "4",
            "--group-size",
            "8",
            "--lut-dtype",
            "uint8",
            "--upgrade-opset",
            "--threads",
            "1",
        ],
    );
    let b = palettize(
        &fixture("tiny-sd-unet"),
        &tmp.path().join("b.mlpackage"),
        &[
            "--nbits",
            "4",
            "--group-size",
            "8",
            "--lut-dtype",
            "uint8",
            "--upgrade-opset",
            "--threads",
            "3",
        ],
    );
    assert_eq!(a.report["specification_version"][1], 9);
    assert_same_tree(
        &tree_contents(&a.out),
        &tree_contents(&b.out),
        "--threads 1 vs 3",
    );
}

/// `--per-channel-scale` in coremltools' layout (one scale per input position, folded into one
/// stored LUT per LUT group and position) against coremltools' `enable_per_channel_scale=True`:
/// per weight never worse, weight.bin no larger; the `--scale-axis output` layout decodes as
/// reported and is smaller; a weight that is skipped stays exactly as it was (coremltools #2777
/// leaves it divided by its scales); decompress equals coremltools' decoding bit for bit.
#[test]
fn per_channel_scale_not_worse_than_coremltools() {
    let tmp = tempdir();
    let base = fixture("tiny-sd-unet-ios18");
    // (id, our flags, coremltools config or null)
    let cases: [(&str, &[&str], Value); 5] = [
        (
            "pcs-tensor",
            &["--nbits", "4", "--per-channel-scale"],
            json!({"nbits": 4, "enable_per_channel_scale": true}),
        ),
        (
            "pcs-gs16",
            &["--nbits", "4", "--group-size", "16", "--per-channel-scale"],
            json!({"nbits": 4, "granularity": "per_grouped_channel", "group_size": 16,
                   "enable_per_channel_scale": true}),
        ),
        (
            "pcs-gs16-int8",
            &[
                "--nbits",
                "4",
                "--group-size",
                "16",
                "--per-channel-scale",
                "--lut-dtype",
                "int8",
            ],
            Value::Null,
        ),
        (
            "pcs-output",
            &[
                "--nbits",
                "4",
                "--per-channel-scale",
                "--scale-axis",
                "output",
            ],
            Value::Null,
        ),
        (
            "pcs-skip",
            &[
                "--nbits",
                "4",
                "--group-size",
                "24",
                "--group-size-fallback",
                "skip",
                "--per-channel-scale",
            ],
            Value::Null,
        ),
    ];
    let mut runs = Vec::new();
    for (id, args, _) in &cases {
        let run = palettize(&base, &tmp.path().join(format!("{id}.mlpackage")), args);
        let ws = compressed(&run.report);
        if *id == "pcs-skip" {
            assert!(
                ws.len() < 81 && !ws.is_empty(),
                "{id}: {} compressed",
                ws.len()
            );
        } else {
            assert_eq!(ws.len(), 81, "{id}: compressed weights");
        }
        for w in &ws {
            assert_eq!(w["per_channel_scale"], true, "{id}");
        }
        let ops = op_types(&run.out);
        assert_eq!(
            ops.get("constexpr_blockwise_shift_scale"),
            ops.get("constexpr_lut_to_dense"),
            "{id}: one scale op per LUT op"
        );
        runs.push(run);
    }
    // The output layout stores one LUT per output channel: smaller than the input layout here.
    let size = |i: usize| {
        runs[i].report["totals"]["weight_bytes_after"]
            .as_u64()
            .unwrap()
    };
    assert!(
        size(3) < size(0),
        "output layout {} vs input {}",
        size(3),
        size(0)
    );
    let Some(py) = python() else { return };
    let mut jobs = Vec::new();
    for ((id, _, cfg), run) in cases.iter().zip(&runs) {
        jobs.push((format!("{id}/ours"), run.out.clone(), base.clone()));
        if !cfg.is_null() {
            let recipe = json!([{"fn": "palettize_weights", "config": cfg}]);
            let ct = coremltools_made(
                &py,
                &base,
                &tmp.path().join(format!("{id}.ct.mlpackage")),
                recipe,
            );
            jobs.push((format!("{id}/coremltools"), ct, base.clone()));
        }
    }
    let facts = ct_facts(&py, tmp.path(), &jobs);
    for ((id, _, cfg), run) in cases.iter().zip(&runs) {
        let ours = &facts[&format!("{id}/ours")];
        let o = ours["weights"].as_object().unwrap();
        let reported: Vec<&str> = compressed(&run.report)
            .iter()
            .map(|w| w["name"].as_str().unwrap())
            .collect();
        for (name, w) in o {
            if reported.contains(&name.as_str()) {
                continue;
            }
            // Skipped or below the threshold: exactly the input's values.
            assert_eq!(w["compressed"], false, "{id}: {name}");
            assert_eq!(w["sse"].as_f64(), Some(0.0), "{id}: {name} changed");
        }
        if cfg.is_null() {
            // Decodes in coremltools to the reported SNR.
            for w in compressed(&run.report) {
                let name = w["name"].as_str().unwrap();
                let (a, b) = (
                    w["snr_db"].as_f64().unwrap(),
                    o[name]["snr_db"].as_f64().unwrap(),
                );
                assert!((a - b).abs() <= SNR_TOL_DB, "{id}: {name}: {a} vs {b} dB");
            }
            println!(
                "{id}: SNR {:.3} dB, weight.bin {}",
                run.report["totals"]["global_snr_db"], ours["weight_bin_bytes"]
            );
            continue;
        }
        let theirs = &facts[&format!("{id}/coremltools")];
        let (better, equal, snr_o, snr_t) = compare(id, run, ours, theirs);
        let (bo, bt) = (
            ours["weight_bin_bytes"].as_u64().unwrap(),
            theirs["weight_bin_bytes"].as_u64().unwrap(),
        );
        println!(
            "{id}: {better} weights better, {equal} equal; SNR ours {snr_o:.3} dB, coremltools {snr_t:.3} dB; weight.bin ours {bo}, coremltools {bt}"
        );
        assert!(bo <= bt, "{id}: weight.bin {bo} > coremltools {bt}");
        oracle_accepts(&py, id, &run.out, &base, 81);
    }
    let named: Vec<(&str, &Run)> = cases.iter().map(|c| c.0).zip(&runs).collect();
    decompress_matches_coremltools(&py, tmp.path(), &named[..4]);
}

/// `--cluster-dim 2` (vector palettization), per tensor and at group size 16, against
/// coremltools' `cluster_dim=2` (scikit-learn k-means++, one run): the same weights are
/// compressed with the same op form and weight.bin size, coremltools decodes ours to the
/// reported SNR, our total SNR is at least coremltools', `decompress` matches coremltools bit
/// for bit and verify.py accepts the outputs. The seed changes the result, not its validity;
/// the same seed gives the same bytes whatever --threads is.
#[test]
fn cluster_dim_not_worse_than_coremltools() {
    let tmp = tempdir();
    let base = fixture("tiny-sd-unet-ios18");
    type Case<'a> = (&'a str, &'a [&'a str], Value);
    let cases: [Case<'_>; 2] = [
        (
            "vec2-tensor",
            &["--nbits", "4", "--cluster-dim", "2"],
            json!({"nbits": 4, "cluster_dim": 2}),
        ),
        (
            "vec2-gs16",
            &["--nbits", "4", "--group-size", "16", "--cluster-dim", "2"],
            json!({"nbits": 4, "cluster_dim": 2, "granularity": "per_grouped_channel", "group_size": 16}),
        ),
    ];
    let mut runs = Vec::new();
    for (id, args, _) in &cases {
        let run = palettize(&base, &tmp.path().join(format!("{id}.mlpackage")), args);
        let ws = compressed(&run.report);
        assert_eq!(ws.len(), 81, "{id}: compressed weights");
        for w in &ws {
            assert_eq!(w["cluster_dim"], 2, "{id}");
            let numel = numel(w);
            let g = w["groups"].as_u64().unwrap();
            // One 4-bit index per pair, 16 fp16 pairs per LUT.
            assert_eq!(w["value_bits"].as_u64(), Some(numel / 2 * 4), "{id}");
            assert_eq!(w["lut_bits"].as_u64(), Some(g * 16 * 2 * 16), "{id}");
        }
        let ops = op_types(&run.out);
        assert_eq!(ops.get("constexpr_lut_to_dense"), Some(&81), "{id}");
        runs.push(run);
    }
    // `info` shows the vector length, in JSON and in the summary.
    let info = info_json(&runs[0].out);
    assert_eq!(info["largest"][0]["compression"]["lut_vector_size"], 2);
    let o = sdcompress().arg("info").arg(&runs[0].out).output().unwrap();
    assert_success(&o, "info");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("(lut 4-bit vectors of 2)"), "{text}");
    // Determinism across thread counts, and the seed is used.
    let one = palettize(
        &base,
        &tmp.path().join("t1.mlpackage"),
        &["--nbits", "4", "--cluster-dim", "2", "--threads", "1"],
    );
    assert_eq!(tree_contents(&one.out), tree_contents(&runs[0].out));
    let other = palettize(
        &base,
        &tmp.path().join("s7.mlpackage"),
        &["--nbits", "4", "--cluster-dim", "2", "--seed", "7"],
    );
    assert_ne!(tree_contents(&other.out), tree_contents(&runs[0].out));
    let Some(py) = python() else { return };
    let mut jobs = Vec::new();
    for ((id, _, cfg), run) in cases.iter().zip(&runs) {
        let recipe = json!([{"fn": "palettize_weights", "config": cfg}]);
        let ct = coremltools_made(
            &py,
            &base,
            &tmp.path().join(format!("{id}.ct.mlpackage")),
            recipe,
        );
        jobs.push((format!("{id}/ours"), run.out.clone(), base.clone()));
        jobs.push((format!("{id}/coremltools"), ct, base.clone()));
    }
    let facts = ct_facts(&py, tmp.path(), &jobs);
    for ((id, ..), run) in cases.iter().zip(&runs) {
        let ours = &facts[&format!("{id}/ours")];
        let theirs = &facts[&format!("{id}/coremltools")];
        let (better, _, snr_o, snr_t) = compare_with(id, run, ours, theirs, false);
        println!(
            "{id}: {better} of 81 weights better; SNR ours {snr_o:.3} dB, coremltools {snr_t:.3} dB; weight.bin ours {}, coremltools {}",
            ours["weight_bin_bytes"], theirs["weight_bin_bytes"]
        );
        assert!(
            snr_o >= snr_t,
            "{id}: total SNR {snr_o} < coremltools {snr_t}"
        );
        assert_eq!(
            ours["weight_bin_bytes"], theirs["weight_bin_bytes"],
            "{id}: weight.bin size"
        );
        oracle_accepts(&py, id, &run.out, &base, 81);
    }
    let named: Vec<(&str, &Run)> = cases.iter().map(|c| c.0).zip(&runs).collect();
    decompress_matches_coremltools(&py, tmp.path(), &named);
}

/// `--cluster-dim` refusals: one error line naming the model, exit 2, nothing written, for a
/// mode other than kmeans, a quantized LUT, a pruned input, and an iOS17 model without
/// `--upgrade-opset` (plus its hint); and a weight whose channels (or group size) the cluster
/// dim does not divide is skipped with the reason, the others compressed.
#[test]
fn cluster_dim_refusals_and_skips() {
    let tmp = tempdir();
    let out = tmp.path().join("o.mlpackage");
    let cases: [(&str, &[&str], &str); 4] = [
        ("tiny-sd-unet-ios18", &["--mode", "uniform"], "kmeans"),
        (
            "tiny-sd-unet-ios18",
            &["--lut-dtype", "int8"],
            "does not combine",
        ),
        ("tiny-sd-unet-ios18.prune0.4", &[], "pruned"),
        ("tiny-sd-unet", &[], "iOS18"),
    ];
    for (model, extra, needle) in cases {
        let o = sdcompress()
            .args(["palettize", "--nbits", "4", "--cluster-dim", "2"])
            .args(extra)
            .arg(fixture(model))
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{model} {extra:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        let first = err.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("error: ") && first.contains(model) && first.contains(needle),
            "{model} {extra:?}: {err}"
        );
        assert_nothing_written(&out);
    }
    // Cluster dim 3: the fixture's channel counts (48, 96, 192, ...) are multiples of 3 except
    // the 4-channel output conv's. At group size 16 (which divides them, so no fallback
    // applies) no group is a multiple of 3: every weight is skipped.
    let run = palettize(
        &fixture("tiny-sd-unet-ios18"),
        &tmp.path().join("d3.mlpackage"),
        &["--nbits", "2", "--cluster-dim", "3"],
    );
    let ws = run.report["weights"].as_array().unwrap();
    let mut skipped_dim = 0;
    for w in ws {
        let chans = w["shape"][0].as_u64().unwrap_or(0);
        if w["skipped"].is_null() {
            assert_eq!(chans % 3, 0, "{}", w["name"]);
            assert_eq!(w["cluster_dim"], 3);
        } else if w["skipped"]
            .as_str()
            .unwrap()
            .starts_with("channels not divisible by cluster dim")
        {
            assert_ne!(chans % 3, 0, "{}", w["name"]);
            skipped_dim += 1;
        }
    }
    assert!(
        skipped_dim >= 1,
        "some weight has channels not divisible by 3"
    );
    assert!(!compressed(&run.report).is_empty());
    let run = palettize(
        &fixture("tiny-sd-unet-ios18"),
        &tmp.path().join("d3g.mlpackage"),
        &[
            "--nbits",
            "2",
            "--cluster-dim",
            "3",
            "--group-size",
            "16",
            "--group-size-fallback",
            "skip",
        ],
    );
    let names: Vec<&Value> = compressed(&run.report).iter().map(|w| &w["name"]).collect();
    assert!(
        names.is_empty(),
        "compressed with group size 16 and cluster dim 3: {names:?}"
    );
}
