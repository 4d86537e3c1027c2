//! Interop tests: what `sdcompress` writes is read back by coremltools 9.0 (the reference
//! implementation of the format) and, when it is present, by the shared oracle `verify.py`.
//!
//! The Python side lives in `tests/interop/*.py` (numpy + coremltools only). The interpreter is
//! `$SDCOMPRESS_PYTHON`, else `.venv/bin/python` in the repository; `scripts/test.sh` creates
//! that venv. Without coremltools every test here prints "skipped: ..." and passes, unless
//! `SDCOMPRESS_REQUIRE_INTEROP=1` (set by `scripts/test.sh`), which turns the skip into a
//! failure. The oracle tests look for `$SDCOMPRESS_ORACLE`, else `../shared/oracle/verify.py`
//! next to the repository; `SDCOMPRESS_REQUIRE_ORACLE=1` makes its absence a failure.
//!
//! Python work is batched (one interpreter per step, several packages each), because importing
//! coremltools costs about a second and `decompress_weights` a few more per package.

mod common;
use common::{oracle, python};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// Fixtures without compression ops: `decompress` must be a lossless round trip.
const UNCOMPRESSED: &[&str] = &[
    "tiny-sd-unet",
    "tiny-sd-unet-ios18",
    "tiny-sdxl-unet",
    "mlsd-unet-ios16",
];

/// Fixtures made by coremltools' compression passes (iOS16 ops on the iOS17 model, iOS18 ops on
/// the iOS18 one).
const COMPRESSED: &[&str] = &[
    "tiny-sd-unet.p4-tensor",
    "tiny-sd-unet.p6-tensor",
    "tiny-sd-unet.p8-uniform",
    "tiny-sd-unet.prune0.4",
    "tiny-sd-unet.prune-2of4",
    "tiny-sd-unet.int8-channel",
    "tiny-sd-unet-ios18.p4-tensor",
    "tiny-sd-unet-ios18.p4-gs16",
    "tiny-sd-unet-ios18.prune0.4",
    "tiny-sd-unet-ios18.prune0.4-p4-gs16",
    "tiny-sd-unet-ios18.int8-channel",
];

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> PathBuf {
    repo_root()
        .join("fixtures")
        .join(format!("{name}.mlpackage"))
}

fn script(name: &str) -> PathBuf {
    repo_root().join("tests").join("interop").join(name)
}

fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn run(mut cmd: Command) -> Output {
    let line = show(&cmd);
    match cmd.output() {
        Ok(o) => o,
        Err(e) => panic!("cannot run `{line}`: {e}"),
    }
}

/// Runs cmd; panics with its output unless it exits 0. Returns stdout.
fn run_ok(cmd: Command) -> String {
    let line = show(&cmd);
    let o = run(cmd);
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    if !o.status.success() {
        panic!(
            "`{line}` failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
    }
    print!("{stdout}");
    stdout
}

fn py_cmd(py: &Path, script_name: &str) -> Command {
    let mut cmd = Command::new(py);
    cmd.arg("-B") // no __pycache__ inside tests/interop
        .arg(script(script_name))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("TQDM_DISABLE", "1");
    cmd
}

fn sdcompress() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sdcompress"))
}

fn decompress(input: &Path, output: &Path) {
    let mut cmd = sdcompress();
    cmd.arg("decompress")
        .arg(input)
        .arg("-o")
        .arg(output)
        .arg("--quiet");
    run_ok(cmd);
    assert!(
        output.join("Manifest.json").is_file(),
        "decompress wrote no package at {}",
        output.display()
    );
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("sdcompress-interop-")
        .tempdir()
        .expect("temp dir")
}

fn os(p: &Path) -> OsString {
    p.as_os_str().to_owned()
}

/// decompress of a package without compression ops gives the same protobuf (coremltools'
/// Model_pb2 equality, no unknown fields), byte-identical weight files, and the same const
/// values in every slot as coremltools reads them.
#[test]
fn round_trip_of_uncompressed_fixtures_is_lossless() {
    let Some(py) = python() else { return };
    let tmp = tempdir();
    let mut proto_args: Vec<OsString> = vec!["--pairs".into(), "--weights-bytes".into()];
    let mut dump_args: Vec<OsString> = vec!["--quiet".into()];
    let mut cmp_args: Vec<OsString> = vec!["--pairs".into()];
    for name in UNCOMPRESSED {
        let input = fixture(name);
        let out = tmp.path().join(format!("{name}.mlpackage"));
        decompress(&input, &out);
        let (a, b) = (
            tmp.path().join(format!("{name}.in.npz")),
            tmp.path().join(format!("{name}.out.npz")),
        );
        proto_args.extend([os(&input), os(&out)]);
        dump_args.extend([os(&input), os(&a), os(&out), os(&b)]);
        cmp_args.extend([os(&a), os(&b)]);
    }
    let mut cmd = py_cmd(&py, "proto_equal.py");
    cmd.args(&proto_args);
    run_ok(cmd);
    let mut cmd = py_cmd(&py, "ct_weights.py");
    cmd.args(&dump_args);
    run_ok(cmd);
    let mut cmd = py_cmd(&py, "compare_weights.py");
    cmd.args(&cmp_args);
    run_ok(cmd);
}

/// decompress of the compressed fixtures: the dense weights are bit-identical to what
/// coremltools' own `decompress_weights` produces, every other const is unchanged, no
/// constexpr op is left, and the protobuf keeps every ordinary op as it was.
fn check_decompress_matches_coremltools(names: &[&str]) {
    let Some(py) = python() else { return };
    let tmp = tempdir();
    let mut jobs = Vec::new();
    let mut structure_args: Vec<OsString> = vec!["--decompressed".into(), "--pairs".into()];
    let mut vs_ct: Vec<OsString> = vec!["--weights-only".into(), "--pairs".into()];
    let mut vs_raw: Vec<OsString> = vec!["--b-decompresses-a".into(), "--pairs".into()];
    for name in names {
        let input = fixture(name);
        let out = tmp.path().join(format!("{name}.mlpackage"));
        decompress(&input, &out);
        let ct = tmp.path().join(format!("{name}.ct.npz"));
        let raw = tmp.path().join(format!("{name}.raw.npz"));
        let ours = tmp.path().join(format!("{name}.ours.npz"));
        jobs.push(serde_json::json!({"package": input, "out": ct, "decompress": true}));
        jobs.push(serde_json::json!({"package": input, "out": raw, "decompress": false}));
        jobs.push(serde_json::json!({"package": out, "out": ours, "decompress": false}));
        structure_args.extend([os(&input), os(&out)]);
        vs_ct.extend([os(&ours), os(&ct)]);
        vs_raw.extend([os(&raw), os(&ours)]);
    }
    let mut cmd = py_cmd(&py, "proto_equal.py");
    cmd.args(&structure_args);
    run_ok(cmd);
    let jobs_file = tmp.path().join("jobs.json");
    std::fs::write(&jobs_file, serde_json::to_vec(&jobs).unwrap()).unwrap();
    let mut cmd = py_cmd(&py, "ct_weights.py");
    cmd.arg("--quiet").arg("--jobs").arg(&jobs_file);
    run_ok(cmd);
    let mut cmd = py_cmd(&py, "compare_weights.py");
    cmd.args(&vs_ct);
    run_ok(cmd);
    let mut cmd = py_cmd(&py, "compare_weights.py");
    cmd.args(&vs_raw);
    run_ok(cmd);
}

/// The iOS16-op fixtures (constexpr_lut_to_dense / sparse_to_dense / affine_dequantize with
/// attribute parameters).
#[test]
fn decompress_matches_coremltools_ios16_ops() {
    let names: Vec<&str> = COMPRESSED
        .iter()
        .copied()
        .filter(|n| n.starts_with("tiny-sd-unet."))
        .collect();
    assert_eq!(names.len(), 6);
    check_decompress_matches_coremltools(&names);
}

/// The iOS18-op fixtures (input parameters, sub-byte blobs, grouped LUTs, joint
/// lut_to_sparse -> sparse_to_dense, blockwise_shift_scale).
#[test]
fn decompress_matches_coremltools_ios18_ops() {
    let names: Vec<&str> = COMPRESSED
        .iter()
        .copied()
        .filter(|n| n.starts_with("tiny-sd-unet-ios18."))
        .collect();
    assert_eq!(names.len(), 5);
    check_decompress_matches_coremltools(&names);
}

/// `sdcompress info --json` agrees with coremltools on every fixture and on two decompressed
/// outputs: spec version, opsets, op histograms, weight and compressed-weight counts.
#[test]
fn info_agrees_with_coremltools() {
    let Some(py) = python() else { return };
    let tmp = tempdir();
    let mut packages: Vec<(String, PathBuf)> = UNCOMPRESSED
        .iter()
        .chain(COMPRESSED)
        .map(|n| (n.to_string(), fixture(n)))
        .collect();
    for name in [
        "tiny-sd-unet.int8-channel",
        "tiny-sd-unet-ios18.prune0.4-p4-gs16",
    ] {
        let out = tmp.path().join(format!("{name}.decompressed.mlpackage"));
        decompress(&fixture(name), &out);
        packages.push((format!("{name}.decompressed"), out));
    }
    let mut check_args: Vec<OsString> = vec!["--check".into()];
    for (name, pkg) in &packages {
        let mut cmd = sdcompress();
        cmd.arg("info").arg(pkg).arg("--json");
        let json = run_ok(cmd);
        let parsed: Value = serde_json::from_str(&json)
            .unwrap_or_else(|e| panic!("info --json of {name} is not JSON: {e}\n{json}"));
        assert_eq!(
            parsed["schema"], "sdcompress.info/1",
            "info --json schema of {name}"
        );
        let f = tmp.path().join(format!("{name}.info.json"));
        std::fs::write(&f, &json).unwrap();
        check_args.extend([os(pkg), os(&f)]);
    }
    let mut cmd = py_cmd(&py, "ct_info.py");
    cmd.args(&check_args);
    run_ok(cmd);
}

/// The harness checks itself: ct_info.py's facts for every fixture equal what the fixture
/// generator recorded in fixtures.json (coremltools 9.0 + verify.py at generation time).
#[test]
fn ct_info_agrees_with_fixtures_json() {
    let Some(py) = python() else { return };
    let mut cmd = py_cmd(&py, "ct_info.py");
    cmd.arg("--fixtures")
        .arg(repo_root().join("fixtures").join("fixtures.json"));
    run_ok(cmd);
}

/// Runs verify.py OUT --reference REF --json and asserts: exit 0, report ok, every weight
/// (small consts included) paired through its consumer op and bit-for-bit equal (max abs 0,
/// SNR inf), and nothing in OUT compressed.
fn oracle_identical(py: &Path, verify: &Path, out: &Path, reference: &Path) {
    let mut cmd = Command::new(py);
    cmd.arg("-B")
        .arg(verify)
        .arg(out)
        .arg("--reference")
        .arg(reference)
        .arg("--json")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let line = show(&cmd);
    let o = run(cmd);
    let stdout = String::from_utf8_lossy(&o.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "`{line}` printed no JSON ({e}); exit {}:\n{stdout}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        )
    });
    let problems = report["problems"].to_string();
    assert!(
        o.status.success() && report["ok"] == Value::Bool(true),
        "`{line}` failed (exit {}): problems {problems}",
        o.status
    );
    let rows = report["weights"].as_array().expect("weights array");
    assert!(!rows.is_empty(), "`{line}`: no weights paired");
    for r in rows {
        let name = r["name"].as_str().unwrap_or("?");
        assert_eq!(
            r["match"], "consumer-op-name",
            "{name}: paired by {} instead of its consumer op name ({line})",
            r["match"]
        );
        assert_eq!(
            r["max_abs"].as_f64(),
            Some(0.0),
            "{name}: values differ from the reference ({line})"
        );
        assert_eq!(r["snr_db"], "inf", "{name}: not identical ({line})");
        assert_eq!(
            r["compressed"],
            Value::Bool(false),
            "{name}: still compressed ({line})"
        );
        assert_eq!(r["shape"], r["ref_shape"], "{name}: shape ({line})");
        assert_eq!(r["dtype"], r["ref_dtype"], "{name}: dtype ({line})");
    }
    let summary = &report["output_summary"];
    assert_eq!(
        summary["n_compressed"].as_u64(),
        Some(0),
        "{line}: output still has compressed weights"
    );
    assert_eq!(
        summary["n_weights"], report["reference_summary"]["n_weights"],
        "{line}: weight count"
    );
    println!(
        "verify.py: {} weights identical: {}",
        rows.len(),
        out.display()
    );
}

/// The shared oracle accepts every round-trip output and finds every weight identical.
#[test]
fn shared_oracle_round_trip_weights_identical() {
    let Some(verify) = oracle() else { return };
    let Some(py) = python() else { return };
    let tmp = tempdir();
    for name in UNCOMPRESSED {
        let out = tmp.path().join(format!("{name}.mlpackage"));
        decompress(&fixture(name), &out);
        oracle_identical(&py, &verify, &out, &fixture(name));
    }
}

/// The shared oracle accepts every decompressed output and finds every weight identical to the
/// compressed input's materialized chains.
#[test]
fn shared_oracle_decompressed_weights_identical() {
    let Some(verify) = oracle() else { return };
    let Some(py) = python() else { return };
    let tmp = tempdir();
    for name in COMPRESSED {
        let out = tmp.path().join(format!("{name}.mlpackage"));
        decompress(&fixture(name), &out);
        oracle_identical(&py, &verify, &out, &fixture(name));
    }
}
