//! `sdcompress prune` through the binary: coremltools reads the output and
//! decodes exactly the requested sparsity pattern (checked in Python with
//! coremltools' own decompression), the report agrees, and the size of the
//! output matches what the mask and kept values need.

mod common;

use common::{fixture, python, tempdir};
use std::path::Path;
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
/// checks the pattern weight by weight.
fn check(base: &str, flags: &[&str], checker: &[&str], want_spec: i64) {
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
        r["totals"]["compressed"], 81,
        "81 weights of the tiny UNet are candidates"
    );
    assert_eq!(r["specification_version"][1], want_spec);
    for w in r["weights"].as_array().unwrap() {
        if w["skipped"].is_null() {
            let n: u64 = w["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .product();
            let pruned = w["pruned"].as_u64().unwrap();
            if let Some(f) = flags.iter().position(|f| *f == "--sparsity") {
                let s: f64 = flags[f + 1].parse().unwrap();
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
        text.contains("81 pruned weights checked, all exact"),
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
