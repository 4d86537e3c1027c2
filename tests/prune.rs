//! `sdcompress prune` through the binary: coremltools reads the output and
//! decodes exactly the requested sparsity pattern (checked in Python with
//! coremltools' own decompression), the report agrees, and the size of the
//! output matches what the mask and kept values need. Also the joint form
//! (`prune --nbits`, and `palettize` on a pruned package): byte-identical
//! either way, decoded by coremltools to exactly the reported sparsity and
//! error, `decompress` bit-exact with coremltools' `decompress_weights`,
//! never worse than coremltools' own joint output for any weight, and
//! independent of `--threads`.

mod common;

use common::{
    assert_same_tree, assert_success, fixture, numel, oracle, python, tempdir, tree_contents,
};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn sdcompress(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sdcompress"))
        .args(args)
        .output()
        .expect("run sdcompress")
}

fn script(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop")
        .join(name)
        .display()
        .to_string()
}

fn py(py: &Path, args: &[&str]) -> String {
    let out = Command::new(py).args(args).output().expect("run python");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "python {args:?} failed:\n{text}");
    text
}

/// Prunes `base` with `flags`, then has coremltools decode the result and
/// checks the pattern weight by weight (81 weights pruned).
fn check(base: &str, flags: &[&str], checker: &[&str], want_spec: i64) {
    check_n(base, flags, checker, want_spec, 81)
}

fn flag<'a>(flags: &[&'a str], name: &str) -> Option<&'a str> {
    flags.iter().position(|f| *f == name).map(|i| flags[i + 1])
}

/// As [`check`], with `want` weights pruned.
fn check_n(base: &str, flags: &[&str], checker: &[&str], want_spec: i64, want: u64) {
    let dir = tempdir();
    let out = dir.path().join("out.mlpackage");
    let report = dir.path().join("report.json");
    let input = fixture(base);
    let mut args = vec![
        "prune",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--quiet",
        "--report",
        report.to_str().unwrap(),
    ];
    args.extend_from_slice(flags);
    let o = sdcompress(&args);
    assert!(
        o.status.success(),
        "prune failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(
        r["totals"]["compressed"].as_u64(),
        Some(want),
        "pruned weights of {base} with {flags:?}"
    );
    assert_eq!(r["specification_version"][1], want_spec);
    for w in r["weights"].as_array().unwrap() {
        if w["skipped"].is_null() {
            let n = numel(w);
            let pruned = w["pruned"].as_u64().unwrap();
            let shape: Vec<u64> = w["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect();
            if let (Some(s), Some(b)) = (flag(flags, "--sparsity"), flag(flags, "--block-size")) {
                // Whole blocks: round(F x blocks) of them.
                let (s, b): (f64, u64) = (s.parse().unwrap(), b.parse().unwrap());
                let dim: usize = flag(flags, "--dim").map_or(0, |d| d.parse().unwrap());
                let len = shape[dim];
                assert_eq!(
                    len % b,
                    0,
                    "{}: fixture axes are multiples of {b}",
                    w["name"]
                );
                let blocks = n / b;
                assert_eq!(
                    pruned,
                    b * (s * blocks as f64).round() as u64,
                    "{}",
                    w["name"]
                );
                assert_eq!(w["pattern"]["block_size"].as_u64(), Some(b));
                assert_eq!(w["pattern"]["axis"].as_u64(), Some(dim as u64));
            } else if let Some(s) = flag(flags, "--sparsity") {
                let s: f64 = s.parse().unwrap();
                assert_eq!(pruned, (s * n as f64).round() as u64, "{}", w["name"]);
            } else {
                assert_eq!(pruned * 2, n, "2:4 prunes half of {}", w["name"]);
            }
            assert_eq!(pruned + w["nonzero"].as_u64().unwrap(), n);
        }
    }
    let Some(py_path) = python() else { return };
    let a = dir.path().join("base.npz");
    let b = dir.path().join("ours.npz");
    py(
        &py_path,
        &[
            &script("ct_weights.py"),
            input.to_str().unwrap(),
            a.to_str().unwrap(),
        ],
    );
    py(
        &py_path,
        &[
            &script("ct_weights.py"),
            "--decompress",
            out.to_str().unwrap(),
            b.to_str().unwrap(),
        ],
    );
    let mut c = vec![
        script("check_pruned.py"),
        a.display().to_string(),
        b.display().to_string(),
    ];
    c.extend(checker.iter().map(|s| s.to_string()));
    let c: Vec<&str> = c.iter().map(String::as_str).collect();
    let text = py(&py_path, &c);
    assert!(
        text.contains(&format!("{want} pruned weights checked, all exact")),
        "{text}"
    );
}

#[test]
fn unstructured_ios16_form_is_exact_in_coremltools() {
    check(
        "tiny-sd-unet",
        &["--sparsity", "0.4"],
        &["--sparsity", "0.4"],
        8,
    );
}

#[test]
fn unstructured_ios18_form_is_exact_in_coremltools() {
    check(
        "tiny-sd-unet-ios18",
        &["--sparsity", "0.4"],
        &["--sparsity", "0.4"],
        9,
    );
}

#[test]
fn two_of_four_is_exact_in_coremltools() {
    check("tiny-sd-unet", &["--n-m", "2:4"], &["--nm", "2", "4"], 8);
}

#[test]
fn bad_sparsity_flags_exit_2() {
    let dir = tempdir();
    let out = dir.path().join("o.mlpackage");
    let input = fixture("tiny-sd-unet");
    for flags in [
        vec!["--sparsity", "1.5"],
        vec!["--sparsity", "0"],
        vec!["--n-m", "4:4"],
        vec!["--n-m", "x"],
        vec![],
    ] {
        let mut args = vec![
            "prune",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ];
        args.extend(flags.iter().copied());
        let o = sdcompress(&args);
        assert_eq!(o.status.code(), Some(2), "{flags:?}");
        assert!(!out.exists(), "{flags:?} wrote output");
    }
}

#[test]
fn already_compressed_input_is_refused() {
    let dir = tempdir();
    let out = dir.path().join("o.mlpackage");
    let input = fixture("tiny-sd-unet.p4-tensor");
    let o = sdcompress(&[
        "prune",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--sparsity",
        "0.4",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already compressed"));
    assert!(!out.exists());
}

/// Block pruning along the output axis (coremltools' default dim 0) and along
/// the input axis: whole blocks, exactly round(F x blocks) of them, smallest
/// L2 norm first.
#[test]
fn block_pruning_is_exact_in_coremltools() {
    check_n(
        "tiny-sd-unet-ios18",
        &["--sparsity", "0.5", "--block-size", "4"],
        &["--sparsity", "0.5", "--block", "4", "0"],
        9,
        81,
    );
    check_n(
        "tiny-sd-unet",
        &["--sparsity", "0.4", "--block-size", "2", "--dim", "1"],
        &["--sparsity", "0.4", "--block", "2", "1"],
        8,
        81,
    );
}

/// Structured patterns on weights they do not fit are skipped with the
/// reason (never an error), the others pruned exactly: n:m on input axes
/// that are not a multiple of M; blocks of more than half the axis (as
/// coremltools).
#[test]
fn structured_patterns_skip_weights_they_do_not_fit() {
    let dir = tempdir();
    let input = fixture("tiny-sd-unet-ios18");
    type Fits = fn(&[u64]) -> bool;
    let cases: [(&[&str], Fits, &str, f64); 2] = [
        (
            &["--n-m", "1:3"],
            |s| s[1] % 3 == 0,
            "axis not divisible by M",
            1.0 / 3.0,
        ),
        (
            &["--sparsity", "0.5", "--block-size", "32"],
            |s| s[0] >= 64,
            "block size larger than half the axis",
            0.5,
        ),
    ];
    for (flags, fits, reason, fraction) in cases {
        let out = dir.path().join("o.mlpackage");
        let mut a = vec!["prune", input.to_str().unwrap(), "--force"];
        a.extend_from_slice(flags);
        let r = run_ok(&a, &out);
        let (mut pruned, mut skipped) = (0, 0);
        for w in r["weights"].as_array().unwrap() {
            let shape = shape_of(w);
            let n: u64 = shape.iter().product();
            if n <= 2048 || shape.len() < 2 {
                continue;
            }
            if fits(&shape) {
                let want = (fraction * n as f64).round() as u64;
                assert_eq!(w["pruned"].as_u64(), Some(want), "{flags:?} {}", w["name"]);
                pruned += 1;
            } else {
                let why = w["skipped"].as_str().unwrap_or("");
                assert!(why.contains(reason), "{flags:?} {}: {why}", w["name"]);
                skipped += 1;
            }
        }
        assert!(
            pruned > 0 && skipped > 0,
            "{flags:?}: {pruned} pruned, {skipped} skipped"
        );
        println!("{flags:?} on tiny-sd-unet-ios18: {pruned} pruned, {skipped} skipped ({reason})");
    }
}

// ---------------------------------------------------------------------------------------------
// Config file
// ---------------------------------------------------------------------------------------------

/// A prune config: unstructured 40% globally, 2:4 for linear weights (the
/// op-type level replaces the global pattern), one conv weight left dense by
/// name; `--sparsity 0.5` on the command line overrides the global level
/// only.
#[test]
fn config_file_sets_patterns_per_op_type_and_name() {
    let dir = tempdir();
    let cfg = dir.path().join("prune.json");
    let dense = "unet_down_blocks_0_resnets_0_conv1_weight_to_fp16";
    std::fs::write(
        &cfg,
        format!(
            r#"{{"global_config": {{"sparsity": 0.4}},
                "op_type_configs": {{"linear": {{"n_m_ratio": [2, 4]}}}},
                "op_name_configs": {{"{dense}": null}}}}"#
        ),
    )
    .unwrap();
    let input = fixture("tiny-sd-unet-ios18");
    for (extra, global) in [(&[][..], 0.4), (&["--sparsity", "0.5"][..], 0.5)] {
        let out = dir.path().join("o.mlpackage");
        let report = dir.path().join("r.json");
        let mut args = vec![
            "prune",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--force",
            "--quiet",
            "--config",
            cfg.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let o = sdcompress(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        let (mut lin, mut conv) = (0, 0);
        for w in r["weights"].as_array().unwrap() {
            let name = w["name"].as_str().unwrap();
            if name == dense {
                assert_eq!(w["skipped"], "disabled by config");
                continue;
            }
            if !w["skipped"].is_null() {
                continue;
            }
            let n = numel(w);
            if w["op_types"][0] == "linear" {
                assert_eq!(w["pattern"]["n_m"], serde_json::json!([2, 4]), "{name}");
                assert_eq!(w["pruned"].as_u64(), Some(n / 2), "{name}");
                lin += 1;
            } else {
                assert_eq!(w["pattern"]["sparsity"].as_f64(), Some(global), "{name}");
                assert_eq!(
                    w["pruned"].as_u64(),
                    Some((global * n as f64).round() as u64),
                    "{name}"
                );
                conv += 1;
            }
        }
        assert_eq!(lin + conv, 80, "every candidate but the disabled one");
        assert!(lin > 0 && conv > 0);
    }
}

// ---------------------------------------------------------------------------------------------
// Joint sparse + palettized
// ---------------------------------------------------------------------------------------------

/// A successful run of `sdcompress <args>` writing `out` with a report next
/// to it; the parsed report.
fn run_ok(args: &[&str], out: &Path) -> Value {
    let report = out.with_extension("report.json");
    let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    a.extend([
        "-o".to_string(),
        out.display().to_string(),
        "--quiet".to_string(),
        "--report".to_string(),
        report.display().to_string(),
    ]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let o = sdcompress(&a);
    assert_success(&o, &format!("sdcompress {}", a.join(" ")));
    serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap()
}

fn shape_of(w: &Value) -> Vec<u64> {
    w["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap())
        .collect()
}

/// `prune ... --nbits ...` writes exactly the bytes of `prune ...` followed
/// by `palettize --nbits ...` with the same options: unstructured + grouped
/// LUT on iOS18; 2:4 + per-tensor LUT on an iOS17 model moved to iOS18 (the
/// intermediate package has iOS16-form sparse ops); blocks + 3-bit with a
/// selection, where conv_out cannot take the blocks and gets a dense LUT
/// either way.
#[test]
fn joint_one_shot_equals_prune_then_palettize() {
    let dir = tempdir();
    let cases: &[(&str, &[&str], &[&str])] = &[
        (
            "tiny-sd-unet-ios18",
            &["--sparsity", "0.4"],
            &["--nbits", "4", "--group-size", "16"],
        ),
        (
            "tiny-sd-unet",
            &["--n-m", "2:4", "--upgrade-opset"],
            &["--nbits", "4"],
        ),
        (
            "tiny-sd-unet-ios18",
            &[
                "--sparsity",
                "0.5",
                "--block-size",
                "4",
                "--exclude",
                "down_blocks_0",
            ],
            &["--nbits", "3", "--group-size", "4"],
        ),
    ];
    for (i, (base, prune, lut)) in cases.iter().enumerate() {
        let input = fixture(base);
        let input = input.to_str().unwrap();
        let one = dir.path().join(format!("one{i}.mlpackage"));
        let mid = dir.path().join(format!("mid{i}.mlpackage"));
        let two = dir.path().join(format!("two{i}.mlpackage"));
        let mut a = vec!["prune", input];
        a.extend_from_slice(prune);
        a.extend_from_slice(lut);
        let r1 = run_ok(&a, &one);
        let mut a = vec!["prune", input];
        a.extend_from_slice(prune);
        run_ok(&a, &mid);
        // palettize takes the same selection and target flags (prune's
        // pattern flags are not palettize flags).
        let mut a = vec!["palettize", mid.to_str().unwrap()];
        let mut k = 0;
        while k < prune.len() {
            match prune[k] {
                "--sparsity" | "--n-m" | "--block-size" => k += 2,
                "--exclude" => {
                    a.extend_from_slice(&prune[k..k + 2]);
                    k += 2
                }
                f => {
                    a.push(f);
                    k += 1
                }
            }
        }
        a.extend_from_slice(lut);
        let r2 = run_ok(&a, &two);
        assert_same_tree(
            &tree_contents(&one),
            &tree_contents(&two),
            &format!("{base}: prune {prune:?} {lut:?} vs prune then palettize"),
        );
        assert_eq!(
            r1["totals"]["weight_bytes_after"],
            r2["totals"]["weight_bytes_after"]
        );
        let joint = r1["weights"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["lut_values"] == "nonzero")
            .count();
        assert!(joint >= 60, "{base}: only {joint} joint weights");
        println!(
            "{base} {prune:?} {lut:?}: identical ({} bytes of weights, {joint} joint weights)",
            r1["totals"]["weight_bytes_after"]
        );
    }
}

/// Runs ct_weights.py over jobs (package, out.npz, decompress) in one
/// coremltools import.
fn ct_weights(py: &Path, dir: &Path, jobs: &[(PathBuf, PathBuf, bool)]) {
    let j: Vec<Value> = jobs
        .iter()
        .map(|(p, o, d)| serde_json::json!({"package": p, "out": o, "decompress": d}))
        .collect();
    let f = dir.join("ct-jobs.json");
    std::fs::write(&f, serde_json::to_vec(&j).unwrap()).unwrap();
    py_run(
        py,
        &[
            &script("ct_weights.py"),
            "--quiet",
            "--jobs",
            f.to_str().unwrap(),
        ],
    );
}

/// sparse_facts.py: per weight slot, error and zeros of each decoded
/// package against `base`.
fn sparse_facts(py: &Path, dir: &Path, base: &Path, xs: &[&Path]) -> BTreeMap<String, Value> {
    let out = dir.join("sparse-facts.json");
    let mut a = vec![
        script("sparse_facts.py"),
        base.display().to_string(),
        out.display().to_string(),
    ];
    a.extend(xs.iter().map(|p| p.display().to_string()));
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    py_run(py, &a);
    let v: BTreeMap<String, Value> = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    v
}

fn py_run(py: &Path, args: &[&str]) -> String {
    let out = Command::new(py)
        .arg("-B")
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("TQDM_DISABLE", "1")
        .output()
        .expect("run python");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "python {args:?} failed:\n{text}");
    text
}

/// The facts of `report`'s compressed weights: (report line, facts of its
/// slot), pairing by function, consumer op and shape.
fn pair<'a>(report: &'a Value, facts: &'a Value) -> Vec<(&'a Value, &'a Value)> {
    let slots = facts.as_object().unwrap();
    let mut v = Vec::new();
    for w in report["weights"].as_array().unwrap() {
        if !w["skipped"].is_null() {
            continue;
        }
        let op = w["ops"][0].as_str().unwrap();
        let f = w["function"].as_str().unwrap();
        let hits: Vec<&Value> = slots
            .values()
            .filter(|s| s["function"] == f && s["op"] == op)
            .filter(|s| {
                s["shape"].as_array().map(|a| a.len()) == w["shape"].as_array().map(|a| a.len())
            })
            .filter(|s| s["shape"] == w["shape"])
            .collect();
        assert_eq!(hits.len(), 1, "{}: slots of {op}", w["name"]);
        v.push((w, hits[0]));
    }
    v
}

/// Joint outputs in coremltools, against the report and against
/// coremltools' own joint fixture (40% + 4-bit, group size 16):
///
/// * `prune --sparsity 0.4 --nbits 4 --group-size 16` (one shot) and
///   `palettize --nbits 4 --group-size 16` of coremltools' own pruned
///   fixture load in coremltools; its `decompress_weights` gives, per
///   weight, exactly the reported number of zeros (the smallest weights)
///   and the reported SNR (±0.01 dB);
/// * our `decompress` of both is bit-identical to coremltools'
///   `decompress_weights`;
/// * per weight, the SNR against the dense base is at least coremltools'
///   joint fixture's, for both (same mask for the second: the LUT alone
///   is compared).
#[test]
fn joint_outputs_decode_in_coremltools_and_beat_its_joint_output() {
    let Some(py) = python() else { return };
    let dir = tempdir();
    let d = dir.path();
    let base = fixture("tiny-sd-unet-ios18");
    let ct_pruned = fixture("tiny-sd-unet-ios18.prune0.4");
    let ct_joint = fixture("tiny-sd-unet-ios18.prune0.4-p4-gs16");
    let one = d.join("one.mlpackage");
    let pal = d.join("pal.mlpackage");
    let r_one = run_ok(
        &[
            "prune",
            base.to_str().unwrap(),
            "--sparsity",
            "0.4",
            "--nbits",
            "4",
            "--group-size",
            "16",
        ],
        &one,
    );
    let r_pal = run_ok(
        &[
            "palettize",
            ct_pruned.to_str().unwrap(),
            "--nbits",
            "4",
            "--group-size",
            "16",
        ],
        &pal,
    );
    let mut jobs = vec![
        (base.clone(), d.join("base.npz"), false),
        (ct_pruned.clone(), d.join("ct-pruned.npz"), true),
        (ct_joint.clone(), d.join("ct-joint.npz"), true),
        (one.clone(), d.join("one.ct.npz"), true),
        (pal.clone(), d.join("pal.ct.npz"), true),
    ];
    for (name, pkg) in [("one", &one), ("pal", &pal)] {
        let ours = d.join(format!("{name}.dec.mlpackage"));
        let o = common::decompress(pkg, &ours, false);
        assert_success(&o, "decompress");
        jobs.push((ours, d.join(format!("{name}.ours.npz")), false));
    }
    ct_weights(&py, d, &jobs);
    // decompress = coremltools' decompress_weights, bit for bit.
    for name in ["one", "pal"] {
        let text = py_run(
            &py,
            &[
                &script("compare_weights.py"),
                "--weights-only",
                d.join(format!("{name}.ours.npz")).to_str().unwrap(),
                d.join(format!("{name}.ct.npz")).to_str().unwrap(),
            ],
        );
        assert!(text.contains("all bit-identical"), "{name}: {text}");
    }
    // The report against coremltools' decoding: one-shot vs the dense base,
    // palettize vs its (pruned) input.
    let vs_base = sparse_facts(
        &py,
        d,
        &d.join("base.npz"),
        &[
            &d.join("one.ct.npz"),
            &d.join("ct-joint.npz"),
            &d.join("pal.ct.npz"),
        ],
    );
    let vs_pruned = sparse_facts(&py, d, &d.join("ct-pruned.npz"), &[&d.join("pal.ct.npz")]);
    let key = |p: &str| d.join(p).display().to_string();
    for (id, report, facts) in [
        ("one-shot", &r_one, &vs_base[&key("one.ct.npz")]),
        (
            "palettize of coremltools' pruned",
            &r_pal,
            &vs_pruned[&key("pal.ct.npz")],
        ),
    ] {
        let pairs = pair(report, facts);
        assert_eq!(pairs.len(), 81, "{id}");
        for (w, f) in pairs {
            let name = w["name"].as_str().unwrap();
            assert_eq!(w["lut_values"], "nonzero", "{id}: {name}");
            assert_eq!(
                f["zeros"], w["pruned"],
                "{id}: {name}: zeros decoded vs reported"
            );
            assert_eq!(f["zeros_smallest"], true, "{id}: {name}");
            let s = w["sparsity"].as_f64().unwrap();
            let n = f["numel"].as_f64().unwrap();
            assert!(
                (s - f["zeros"].as_f64().unwrap() / n).abs() < 1e-12,
                "{id}: {name}"
            );
            let (a, b) = (w["snr_db"].as_f64().unwrap(), f["snr_db"].as_f64().unwrap());
            assert!(
                (a - b).abs() <= 0.01,
                "{id}: {name}: report SNR {a} vs coremltools {b}"
            );
        }
    }
    // Quality against coremltools' joint fixture, per weight.
    let theirs = &vs_base[&key("ct-joint.npz")];
    for (id, ours) in [
        ("one-shot", "one.ct.npz"),
        ("palettize of coremltools' pruned", "pal.ct.npz"),
    ] {
        let ours = &vs_base[&key(ours)];
        let (mut better, mut equal, mut worse) = (0, 0, Vec::new());
        let (mut sse_o, mut sse_t, mut sig) = (0.0, 0.0, 0.0);
        for (slot, t) in theirs.as_object().unwrap() {
            let o = &ours[slot];
            let (so, st) = (o["sse"].as_f64().unwrap(), t["sse"].as_f64().unwrap());
            sse_o += so;
            sse_t += st;
            sig += t["sig"].as_f64().unwrap();
            if so > st * (1.0 + 1e-9) {
                worse.push(format!(
                    "{slot}: SNR ours {} < coremltools {}",
                    o["snr_db"], t["snr_db"]
                ));
            } else if so < st * (1.0 - 1e-9) {
                better += 1;
            } else {
                equal += 1;
            }
        }
        println!(
            "{id} vs coremltools prune0.4-p4-gs16: {better} better, {equal} equal, {} worse; global SNR ours {:.3} dB, coremltools {:.3} dB",
            worse.len(),
            10.0 * (sig / sse_o).log10(),
            10.0 * (sig / sse_t).log10()
        );
        assert_eq!(better + equal, 81, "{id}");
        assert!(worse.is_empty(), "{id}: {worse:?}");
    }
    // verify.py: loads, and measures the sparsity and SNR the report says.
    let Some(verify) = oracle() else { return };
    let out = Command::new(&py)
        .arg("-B")
        .arg(&verify)
        .arg(&one)
        .arg("--reference")
        .arg(&base)
        .arg("--json")
        .env("TQDM_DISABLE", "1")
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).expect("verify.py JSON");
    assert!(
        out.status.success() && v["ok"] == true,
        "verify.py: {}",
        v["problems"]
    );
    let by_uses: BTreeMap<String, &Value> = v["weights"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["compressed"] == true)
        .map(|r| {
            (
                r["uses"][0]
                    .as_str()
                    .unwrap()
                    .split('.')
                    .next()
                    .unwrap()
                    .to_string(),
                r,
            )
        })
        .collect();
    let mut n = 0;
    for w in r_one["weights"].as_array().unwrap() {
        if !w["skipped"].is_null() {
            continue;
        }
        let r = by_uses[w["ops"][0].as_str().unwrap()];
        assert_eq!(r["shape"], w["shape"]);
        let (a, b) = (
            w["sparsity"].as_f64().unwrap(),
            r["sparsity"].as_f64().unwrap(),
        );
        assert!(
            (a - b).abs() < 1e-12,
            "{}: sparsity report {a} vs verify.py {b}",
            w["name"]
        );
        let (a, b) = (w["snr_db"].as_f64().unwrap(), r["snr_db"].as_f64().unwrap());
        assert!(
            (a - b).abs() <= 0.01,
            "{}: SNR report {a} vs verify.py {b}",
            w["name"]
        );
        n += 1;
    }
    assert_eq!(n, 81);
    println!(
        "verify.py: {n} joint weights, sparsity {} and global SNR {} dB (report {})",
        v["totals"]["sparsity_compressed"],
        v["totals"]["snr_db_global"],
        r_one["totals"]["global_snr_db"]
    );
}

/// An iOS17 package pruned by coremltools (iOS16-form sparse ops), palettized
/// with `--upgrade-opset` while some weights are excluded: the excluded ones
/// are rewritten as iOS18 sparse ops (their values unchanged), the others
/// joint; verify.py and coremltools load it.
#[test]
fn joint_from_ios16_sparse_input_with_excluded_weights() {
    let Some(py) = python() else { return };
    let dir = tempdir();
    let d = dir.path();
    let input = fixture("tiny-sd-unet.prune0.4");
    let out = d.join("o.mlpackage");
    let r = run_ok(
        &[
            "palettize",
            input.to_str().unwrap(),
            "--nbits",
            "6",
            "--upgrade-opset",
            "--exclude",
            "up_blocks",
        ],
        &out,
    );
    assert_eq!(r["specification_version"][1], 9);
    let ws = r["weights"].as_array().unwrap();
    let joint = ws.iter().filter(|w| w["skipped"].is_null()).count();
    let excluded = ws
        .iter()
        .filter(|w| w["skipped"] == "matched by --exclude")
        .filter(|w| shape_of(w).len() >= 2 && shape_of(w).iter().product::<u64>() > 2048)
        .count();
    assert!(
        joint > 20 && excluded > 20,
        "{joint} joint, {excluded} excluded"
    );
    ct_weights(
        &py,
        d,
        &[
            (input.clone(), d.join("in.npz"), true),
            (out.clone(), d.join("out.npz"), true),
        ],
    );
    let facts = sparse_facts(&py, d, &d.join("in.npz"), &[&d.join("out.npz")]);
    let facts = &facts[&d.join("out.npz").display().to_string()];
    for (w, f) in pair(&r, facts) {
        assert_eq!(f["zeros"], w["pruned"], "{}", w["name"]);
    }
    // Excluded weights decode to exactly the input's values.
    let mut exact = 0;
    for f in facts.as_object().unwrap().values() {
        if f["sse"] == 0.0 {
            exact += 1;
        }
    }
    assert_eq!(exact, excluded, "excluded weights are unchanged");
    if let Some(verify) = oracle() {
        let o = Command::new(&py)
            .arg("-B")
            .arg(&verify)
            .arg(&out)
            .arg("--reference")
            .arg(&input)
            .arg("--json")
            .env("TQDM_DISABLE", "1")
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&o.stdout).expect("verify.py JSON");
        assert!(
            o.status.success() && v["ok"] == true,
            "verify.py: {}",
            v["problems"]
        );
    }
    println!("iOS16-form sparse input: {joint} joint weights, {excluded} kept sparse (iOS18 form)");
}

/// `--threads 1` and `--threads 4` give byte-identical joint packages and
/// identical reports apart from wall time and the thread option.
#[test]
fn joint_threads_do_not_change_output() {
    let dir = tempdir();
    let input = fixture("tiny-sdxl-unet");
    let mut trees = Vec::new();
    let mut reports = Vec::new();
    for threads in ["1", "4"] {
        let sub = dir.path().join(format!("t{threads}"));
        std::fs::create_dir(&sub).unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_sdcompress"))
            .current_dir(&sub)
            .args([
                "prune",
                input.to_str().unwrap(),
                "-o",
                "out.mlpackage",
                "--quiet",
            ])
            .args(["--report", "r.json", "--sparsity", "0.4", "--nbits", "4"])
            .args([
                "--group-size",
                "16",
                "--upgrade-opset",
                "--threads",
                threads,
            ])
            .output()
            .unwrap();
        assert_success(&o, "prune --nbits");
        trees.push(tree_contents(&sub.join("out.mlpackage")));
        let mut r: Value =
            serde_json::from_slice(&std::fs::read(sub.join("r.json")).unwrap()).unwrap();
        r["options"].as_object_mut().unwrap().remove("threads");
        r["totals"].as_object_mut().unwrap().remove("wall_seconds");
        reports.push(r);
    }
    assert_same_tree(&trees[0], &trees[1], "--threads 1 vs 4 (joint)");
    assert_eq!(reports[0], reports[1]);
    let n = reports[0]["totals"]["compressed"].as_u64().unwrap();
    assert!(n > 100, "{n} weights");
    let shape_total: u64 = reports[0]["weights"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["skipped"].is_null())
        .map(|w| shape_of(w).iter().product::<u64>())
        .sum();
    println!("tiny-sdxl-unet joint: {n} weights ({shape_total} parameters), identical for 1 and 4 threads");
}
