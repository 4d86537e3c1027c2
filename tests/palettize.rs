//! `sdcompress palettize` through the real binary, asserting the numbers that matter:
//!
//! * interop: what we write loads in coremltools 9.0 (its milproto frontend, through
//!   `tests/interop/ct_palettized.py`), every compressed weight decodes through coremltools' own
//!   decompression to values whose SNR against the input is the report's `snr_db` (±0.01 dB),
//!   and the report's compressed set is what coremltools sees as compressed; the shared oracle
//!   `verify.py` agrees when `../shared` is present;
//! * accuracy: per weight, our squared error is never above coremltools' own palettization of
//!   the same fixture (its reference variants in `fixtures/`), and weight.bin is as small;
//! * determinism across `--threads`;
//! * opset handling (iOS16 / iOS17 / iOS18 op forms, `--upgrade-opset`, refusals);
//! * selection flags and the `--config` file;
//! * bad flags.
//!
//! Python: `$SDCOMPRESS_PYTHON`, else `.venv/bin/python` (see `tests/interop.rs`). Without
//! coremltools the coremltools parts print "skipped: ..." (the rest still runs) unless
//! `SDCOMPRESS_REQUIRE_INTEROP=1`. The oracle: `$SDCOMPRESS_ORACLE`, else
//! `../shared/oracle/verify.py`; absent, it prints "skipped: ../shared/oracle/verify.py not
//! present" unless `SDCOMPRESS_REQUIRE_ORACLE=1`.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The report's `snr_db` and coremltools' decoded SNR must agree this closely (dB).
const SNR_TOL_DB: f64 = 0.01;
/// Weights of tiny-sd-unet(-ios18) that coremltools compresses with default settings.
const TINY_CANDIDATES: u64 = 81;

// ---------------------------------------------------------------------------------------------
// Python / oracle discovery (same rules as tests/interop.rs)
// ---------------------------------------------------------------------------------------------

fn cmd_line(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn py_cmd(py: &Path, script: &str) -> Command {
    let mut cmd = Command::new(py);
    cmd.arg("-B")
        .arg(repo_root().join("tests").join("interop").join(script))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("TQDM_DISABLE", "1");
    cmd
}

// ---------------------------------------------------------------------------------------------
// Running palettize
// ---------------------------------------------------------------------------------------------

/// A successful palettize run: its output package and its parsed report.
struct Run {
    out: PathBuf,
    report: Value,
}

fn report_path(out: &Path) -> PathBuf {
    out.with_extension("report.json")
}

fn palettize_cmd(input: &Path, out: &Path, args: &[&str]) -> Command {
    let mut c = sdcompress();
    c.arg("palettize")
        .arg(input)
        .arg("-o")
        .arg(out)
        .arg("--quiet")
        .arg("--report")
        .arg(report_path(out))
        .args(args);
    c
}

/// `palettize INPUT -o OUT --quiet --report OUT.report.json ARGS`, which must succeed.
fn palettize(input: &Path, out: &Path, args: &[&str]) -> Run {
    let mut c = palettize_cmd(input, out, args);
    let line = cmd_line(&c);
    let o = c.output().expect("run sdcompress");
    assert_success(&o, &line);
    assert!(
        out.join("Manifest.json").is_file(),
        "`{line}` wrote no package"
    );
    let text = std::fs::read(report_path(out)).unwrap_or_else(|e| panic!("`{line}`: report: {e}"));
    let report: Value = serde_json::from_slice(&text)
        .unwrap_or_else(|e| panic!("`{line}`: the report is not JSON: {e}"));
    assert_eq!(report["schema"], "sdcompress.report/1", "`{line}`");
    assert_eq!(report["command"], "palettize", "`{line}`");
    Run {
        out: out.to_path_buf(),
        report,
    }
}

/// Runs palettize expecting failure; asserts exit 2, nothing on stdout, no panic, and nothing
/// written (no output, no staging directory, no report). Returns stderr.
fn palettize_fails(input: &Path, out: &Path, args: &[&str]) -> String {
    let mut c = palettize_cmd(input, out, args);
    let line = cmd_line(&c);
    let o = c.output().expect("run sdcompress");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(2), "`{line}`:\n{}", show(&o));
    assert!(
        !err.contains("panicked"),
        "`{line}` panicked:\n{}",
        show(&o)
    );
    assert!(
        o.stdout.is_empty(),
        "`{line}` printed on stdout:\n{}",
        show(&o)
    );
    assert!(
        err.starts_with("error: "),
        "`{line}`: stderr must start with 'error: ':\n{err}"
    );
    assert!(
        std::fs::symlink_metadata(out).is_err(),
        "`{line}` failed but left {} behind",
        out.display()
    );
    assert!(
        !report_path(out).exists(),
        "`{line}` failed but wrote a report"
    );
    let left = staging_leftovers(out.parent().unwrap());
    assert!(left.is_empty(), "`{line}` left staging dirs: {left:?}");
    err
}

/// stderr is one `error: ...` line. clap's own usage errors may add its standard tip
/// ("For more information, try '--help'."), which is all they may add.
fn assert_one_line_error(err: &str, what: &str) {
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| l.trim() != "For more information, try '--help'.")
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: the error must be one line, got {}:\n{err}",
        lines.len()
    );
    assert!(lines[0].starts_with("error: "), "{what}: {err}");
}

// ---------------------------------------------------------------------------------------------
// Reading reports
// ---------------------------------------------------------------------------------------------

fn weights(report: &Value) -> &Vec<Value> {
    report["weights"].as_array().expect("report.weights")
}

fn name_of(w: &Value) -> String {
    w["name"].as_str().expect("weight name").to_string()
}

fn is_compressed(w: &Value) -> bool {
    w["skipped"].is_null()
}

fn compressed_names(report: &Value) -> BTreeSet<String> {
    weights(report)
        .iter()
        .filter(|w| is_compressed(w))
        .map(name_of)
        .collect()
}

fn by_name(report: &Value) -> BTreeMap<String, &Value> {
    let mut m = BTreeMap::new();
    for w in weights(report) {
        assert!(
            m.insert(name_of(w), w).is_none(),
            "two report weights named {}",
            name_of(w)
        );
    }
    m
}

fn u64_at(v: &Value, what: &str) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("{what} is not an unsigned integer: {v}"))
}

fn totals_compressed(report: &Value) -> u64 {
    u64_at(&report["totals"]["compressed"], "totals.compressed")
}

/// Consistency of a report with itself: counts, every compressed weight has its fields.
fn check_report_shape(id: &str, report: &Value) {
    let ws = weights(report);
    let n_comp = ws.iter().filter(|w| is_compressed(w)).count() as u64;
    assert_eq!(totals_compressed(report), n_comp, "{id}: totals.compressed");
    assert_eq!(
        u64_at(&report["totals"]["weights"], "totals.weights"),
        ws.len() as u64,
        "{id}: totals.weights"
    );
    assert_eq!(
        u64_at(&report["totals"]["skipped"], "totals.skipped"),
        ws.len() as u64 - n_comp,
        "{id}: totals.skipped"
    );
    for w in ws.iter().filter(|w| is_compressed(w)) {
        for k in ["mode", "nbits", "granularity", "groups", "rel_l2", "sse"] {
            assert!(!w[k].is_null(), "{id}: {} has no {k}", name_of(w));
        }
        assert!(
            w.get("snr_db").is_some(),
            "{id}: {} has no snr_db field",
            name_of(w)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// coremltools facts (tests/interop/ct_palettized.py)
// ---------------------------------------------------------------------------------------------

/// One package for ct_palettized.py, optionally compared with a base package.
struct Job {
    id: String,
    package: PathBuf,
    base: Option<PathBuf>,
}

fn job(id: &str, package: &Path, base: Option<&Path>) -> Job {
    Job {
        id: id.to_string(),
        package: package.to_path_buf(),
        base: base.map(Path::to_path_buf),
    }
}

/// Runs ct_palettized.py once for all jobs; the facts by job id.
fn ct_facts(py: &Path, dir: &Path, jobs: &[Job]) -> BTreeMap<String, Value> {
    let jobs_json: Vec<Value> = jobs
        .iter()
        .map(|j| json!({"id": j.id, "package": j.package, "base": j.base}))
        .collect();
    let jobs_file = dir.join("ct-jobs.json");
    let out_file = dir.join("ct-facts.json");
    std::fs::write(&jobs_file, serde_json::to_vec(&jobs_json).unwrap()).unwrap();
    let mut cmd = py_cmd(py, "ct_palettized.py");
    cmd.arg("--jobs")
        .arg(&jobs_file)
        .arg("--out")
        .arg(&out_file);
    let line = cmd_line(&cmd);
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{line}`: {e}"));
    print!("{}", String::from_utf8_lossy(&o.stdout));
    assert!(
        o.status.success(),
        "`{line}` failed ({}):\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let facts: BTreeMap<String, Value> =
        serde_json::from_slice(&std::fs::read(&out_file).unwrap()).expect("facts JSON");
    for j in jobs {
        let f = &facts[&j.id];
        assert!(
            f.get("error").is_none(),
            "{}: coremltools cannot read {}: {}",
            j.id,
            j.package.display(),
            f["error"]
        );
        let problems = f["problems"].as_array().expect("problems");
        assert!(
            problems.is_empty(),
            "{}: weights of {} do not pair with the base {:?}: {problems:?}",
            j.id,
            j.package.display(),
            j.base
        );
    }
    facts
}

/// What a case must look like in coremltools.
struct Expect {
    /// Output specification version.
    spec: i64,
    /// iOS18 op form (LUT of rank K+2, uintN indices) rather than the iOS16 one.
    ios18_form: bool,
}

/// The core interop assertion: coremltools loads the output; its compressed set is the
/// report's; every compressed weight decodes (coremltools' own decompression) to values whose
/// SNR vs the input equals the report's `snr_db` within 0.01 dB, with `2^nbits` LUT entries
/// and the report's number of groups; every other weight is bit-for-bit unchanged.
fn check_against_coremltools(id: &str, run: &Run, facts: &Value, expect: &Expect) {
    let report = &run.report;
    check_report_shape(id, report);
    assert_eq!(
        facts["spec_version"].as_i64(),
        Some(expect.spec),
        "{id}: specification version seen by coremltools"
    );
    assert_eq!(
        report["specification_version"][1].as_i64(),
        Some(expect.spec),
        "{id}: report specification_version"
    );
    let want_opset = match expect.spec {
        7 => "CoreML6",
        8 => "CoreML7",
        9 => "CoreML8",
        s => panic!("unexpected spec {s}"),
    };
    for (f, opset) in facts["opsets"].as_object().unwrap() {
        assert_eq!(opset, want_opset, "{id}: opset of function {f}");
    }
    let ct_count = u64_at(
        &facts["summary"]["compressed"]["count"],
        "summary.compressed.count",
    );
    assert_eq!(
        totals_compressed(report),
        ct_count,
        "{id}: the report's compressed count vs what coremltools sees as compressed"
    );
    let ct_weights = facts["weights"].as_object().expect("facts.weights");
    let ct_compressed: BTreeSet<String> = ct_weights
        .iter()
        .filter(|(_, w)| w["compressed"] == Value::Bool(true))
        .map(|(n, _)| n.clone())
        .collect();
    assert_eq!(
        compressed_names(report),
        ct_compressed,
        "{id}: compressed weights, report vs coremltools"
    );
    let mut worst = 0.0f64;
    for w in weights(report) {
        let name = name_of(w);
        let ct = ct_weights
            .get(&name)
            .unwrap_or_else(|| panic!("{id}: coremltools has no weight {name}"));
        if !is_compressed(w) {
            assert_eq!(
                ct["sse"].as_f64(),
                Some(0.0),
                "{id}: skipped weight {name} changed"
            );
            continue;
        }
        assert_eq!(
            ct["op_type"], "constexpr_lut_to_dense",
            "{id}: {name} is not a constexpr_lut_to_dense"
        );
        assert_eq!(ct["out_dtype"], ct["base_dtype"], "{id}: {name} dtype");
        let nbits = u64_at(&w["nbits"], "nbits");
        assert_eq!(
            ct["lut_entries"].as_u64(),
            Some(1 << nbits),
            "{id}: {name}: LUT size seen by coremltools vs the report's nbits {nbits}"
        );
        assert_eq!(
            ct["lut_groups"].as_u64(),
            w["groups"].as_u64(),
            "{id}: {name}: number of LUTs, coremltools vs report"
        );
        match (w["snr_db"].as_f64(), ct["snr_db"].as_f64()) {
            (Some(ours), Some(theirs)) => {
                let d = (ours - theirs).abs();
                worst = worst.max(d);
                assert!(
                    d <= SNR_TOL_DB,
                    "{id}: {name}: report snr_db {ours} vs {theirs} dB decoded by coremltools"
                );
            }
            (None, _) => assert_eq!(
                ct["sse"].as_f64(),
                Some(0.0),
                "{id}: {name}: the report says exact (snr_db null) but coremltools decodes sse {}",
                ct["sse"]
            ),
            (Some(ours), None) => panic!(
                "{id}: {name}: report snr_db {ours} but coremltools decodes it exactly (sse {})",
                ct["sse"]
            ),
        }
        let (sse, ct_sse) = (w["sse"].as_f64().unwrap(), ct["sse"].as_f64().unwrap());
        assert!(
            (sse - ct_sse).abs() <= 1e-9 * ct_sse.max(1e-12),
            "{id}: {name}: report sse {sse} vs {ct_sse} decoded by coremltools"
        );
        let rel = w["rel_l2"].as_f64().unwrap();
        let ct_rel = ct["rel_l2"].as_f64().unwrap();
        assert!(
            (rel - ct_rel).abs() <= 1e-9 + 1e-6 * ct_rel,
            "{id}: {name}: rel_l2 {rel} vs {ct_rel}"
        );
    }
    // The op form: iOS16 = rank-1 LUT + packed uint8 indices; iOS18 = LUT of rank K+2, uintN
    // indices in the weight's shape.
    for (var, l) in facts["luts"].as_object().unwrap() {
        let rank = l["lut_shape"].as_array().expect("lut_shape").len();
        let idx = l["indices_dtype"].as_str().unwrap_or("?");
        if expect.ios18_form {
            assert!(
                rank >= 3 && idx.starts_with("uint"),
                "{id}: {var}: expected the iOS18 form, LUT shape {} indices {idx}",
                l["lut_shape"]
            );
        } else {
            assert!(
                rank == 1 && idx == "uint8",
                "{id}: {var}: expected the iOS16 form, LUT shape {} indices {idx}",
                l["lut_shape"]
            );
        }
    }
    println!(
        "{id}: coremltools agrees: {} compressed, spec {}, max |snr_db(report) - snr_db(coremltools)| = {worst:.2e} dB",
        ct_count, expect.spec
    );
}

/// verify.py OUT --reference REF --json: ok, and its per-weight numbers are the report's.
fn check_with_oracle(py: &Path, verify: &Path, id: &str, run: &Run, reference: &Path) {
    let mut cmd = Command::new(py);
    cmd.arg("-B")
        .arg(verify)
        .arg(&run.out)
        .arg("--reference")
        .arg(reference)
        .arg("--json")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("TQDM_DISABLE", "1");
    let line = cmd_line(&cmd);
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{line}`: {e}"));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let v: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "`{line}` printed no JSON ({e}); exit {}:\n{stdout}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        )
    });
    assert!(
        o.status.success() && v["ok"] == Value::Bool(true),
        "{id}: `{line}` failed (exit {}): problems {}",
        o.status,
        v["problems"]
    );
    let report = &run.report;
    // Compressed report weights by (consumer op names, shape).
    let mut ours: BTreeMap<(Vec<String>, Vec<u64>), &Value> = BTreeMap::new();
    for w in weights(report).iter().filter(|w| is_compressed(w)) {
        let mut ops: Vec<String> = w["ops"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o.as_str().unwrap().to_string())
            .collect();
        ops.sort();
        ops.dedup();
        let shape: Vec<u64> = w["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        assert!(
            ours.insert((ops, shape), w).is_none(),
            "{id}: two compressed weights with the same consumers and shape"
        );
    }
    let rows = v["weights"].as_array().expect("verify.py weights");
    let mut matched = 0u64;
    for r in rows {
        let name = r["name"].as_str().unwrap_or("?");
        if r["compressed"] != Value::Bool(true) {
            assert_eq!(
                r["snr_db"], "inf",
                "{id}: verify.py: uncompressed weight {name} changed ({line})"
            );
            continue;
        }
        let mut ops: Vec<String> = r["uses"]
            .as_array()
            .expect("uses")
            .iter()
            .map(|u| {
                let u = u.as_str().unwrap();
                u.rsplit_once('.').map_or(u, |(op, _)| op).to_string()
            })
            .collect();
        ops.sort();
        ops.dedup();
        let shape: Vec<u64> = r["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        let w = ours.get(&(ops.clone(), shape)).unwrap_or_else(|| {
            panic!("{id}: verify.py sees {name} (uses {ops:?}) compressed; the report does not")
        });
        matched += 1;
        let nbits = w["nbits"].as_u64().unwrap();
        let kind = r["kind"].as_str().unwrap_or("");
        assert!(
            kind.starts_with(&format!("lut{nbits} ")),
            "{id}: {name}: verify.py kind {kind:?}, report nbits {nbits}"
        );
        match (&w["snr_db"], &r["snr_db"]) {
            (Value::Null, s) => assert_eq!(
                s, "inf",
                "{id}: {name}: the report says exact, verify.py says snr {s}"
            ),
            (ours, theirs) => {
                let (a, b) = (ours.as_f64().unwrap(), theirs.as_f64().unwrap_or(f64::NAN));
                assert!(
                    (a - b).abs() <= SNR_TOL_DB,
                    "{id}: {name}: report snr_db {a} vs verify.py {theirs}"
                );
            }
        }
        let (a, b) = (w["rel_l2"].as_f64().unwrap(), r["rel_l2"].as_f64().unwrap());
        assert!(
            (a - b).abs() <= 1e-9 + 1e-6 * b,
            "{id}: {name}: rel_l2 report {a} vs verify.py {b}"
        );
    }
    assert_eq!(
        matched,
        totals_compressed(report),
        "{id}: verify.py's compressed weights vs the report's"
    );
    assert_eq!(
        v["totals"]["tensors_compressed"].as_u64(),
        Some(totals_compressed(report)),
        "{id}: verify.py totals.tensors_compressed"
    );
    println!(
        "{id}: verify.py ok: {matched} compressed weights, global SNR {} dB (report {})",
        v["totals"]["snr_db_global"], report["totals"]["global_snr_db"]
    );
}

// ---------------------------------------------------------------------------------------------
// 1. Interop
// ---------------------------------------------------------------------------------------------

/// A palettize setting on a fixture, and how its output must look.
struct Case {
    id: &'static str,
    fixture: &'static str,
    args: &'static [&'static str],
    expect: Expect,
}

const CASES: &[Case] = &[
    Case {
        id: "p4-tensor-ios17",
        fixture: "tiny-sd-unet",
        args: &["--nbits", "4"],
        expect: Expect {
            spec: 8,
            ios18_form: false,
        },
    },
    Case {
        id: "p4-tensor-ios18",
        fixture: "tiny-sd-unet-ios18",
        args: &["--nbits", "4"],
        expect: Expect {
            spec: 9,
            ios18_form: true,
        },
    },
    Case {
        id: "p4-gs16-ios18",
        fixture: "tiny-sd-unet-ios18",
        args: &["--nbits", "4", "--group-size", "16"],
        expect: Expect {
            spec: 9,
            ios18_form: true,
        },
    },
    Case {
        id: "p6-tensor-ios17",
        fixture: "tiny-sd-unet",
        args: &["--nbits", "6"],
        expect: Expect {
            spec: 8,
            ios18_form: false,
        },
    },
    Case {
        id: "p8-uniform-ios17",
        fixture: "tiny-sd-unet",
        args: &["--nbits", "8", "--mode", "uniform"],
        expect: Expect {
            spec: 8,
            ios18_form: false,
        },
    },
    Case {
        id: "p2-tensor-ios17",
        fixture: "tiny-sd-unet",
        args: &["--nbits", "2"],
        expect: Expect {
            spec: 8,
            ios18_form: false,
        },
    },
    Case {
        id: "p3-gs16-ios18",
        fixture: "tiny-sd-unet-ios18",
        args: &["--nbits", "3", "--group-size", "16"],
        expect: Expect {
            spec: 9,
            ios18_form: true,
        },
    },
];

/// Every interop case palettized into `dir`: (id, run, reference package, expectation).
/// The last one is `--mode unique` on tiny-sd-unet.p4-tensor decompressed by us.
fn interop_runs(dir: &Path) -> Vec<(String, Run, PathBuf, &'static Expect)> {
    static UNIQUE: Expect = Expect {
        spec: 8,
        ios18_form: false,
    };
    let mut v = Vec::new();
    for c in CASES {
        let run = palettize(
            &fixture(c.fixture),
            &dir.join(format!("{}.mlpackage", c.id)),
            c.args,
        );
        assert_eq!(
            totals_compressed(&run.report),
            TINY_CANDIDATES,
            "{}: compressed count",
            c.id
        );
        for w in weights(&run.report).iter().filter(|w| is_compressed(w)) {
            let want = c.args[1].parse::<u64>().unwrap();
            assert_eq!(w["nbits"].as_u64(), Some(want), "{}: {}", c.id, name_of(w));
        }
        v.push((c.id.to_string(), run, fixture(c.fixture), &c.expect));
    }
    // --mode unique: decompress coremltools' 4-bit LUTs, then recover them losslessly.
    let dense = dir.join("p4-tensor.decompressed.mlpackage");
    assert_success(
        &decompress(&fixture("tiny-sd-unet.p4-tensor"), &dense, false),
        "decompress tiny-sd-unet.p4-tensor",
    );
    let run = palettize(&dense, &dir.join("unique.mlpackage"), &["--mode", "unique"]);
    let r = &run.report;
    assert_eq!(
        totals_compressed(r),
        TINY_CANDIDATES,
        "unique: compressed count"
    );
    for w in weights(r).iter().filter(|w| is_compressed(w)) {
        let n = name_of(w);
        assert_eq!(w["mode"], "unique", "unique: {n}");
        assert_eq!(
            w["nbits"].as_u64(),
            Some(4),
            "unique: {n} should need exactly 4 bits"
        );
        assert!(
            w["snr_db"].is_null(),
            "unique: {n} is not exact: snr {}",
            w["snr_db"]
        );
        assert_eq!(w["rel_l2"].as_f64(), Some(0.0), "unique: {n} rel_l2");
        assert_eq!(
            w["max_abs_err"].as_f64(),
            Some(0.0),
            "unique: {n} max_abs_err"
        );
        assert_eq!(w["sse"].as_f64(), Some(0.0), "unique: {n} sse");
    }
    assert!(
        r["totals"]["global_snr_db"].is_null(),
        "unique: global SNR should be exact (null)"
    );
    // Same LUTs, same storage as coremltools' own 4-bit package.
    let ours = std::fs::metadata(run.out.join(WEIGHT_REL)).unwrap().len();
    let theirs = std::fs::metadata(fixture("tiny-sd-unet.p4-tensor").join(WEIGHT_REL))
        .unwrap()
        .len();
    assert_eq!(
        ours, theirs,
        "unique: weight.bin bytes vs tiny-sd-unet.p4-tensor"
    );
    v.push(("unique".to_string(), run, dense, &UNIQUE));
    v
}

/// Every interop output loads in coremltools; what it decodes matches the report.
#[test]
fn interop_outputs_load_and_decode_in_coremltools() {
    let Some(py) = python() else { return };
    let tmp = tempdir();
    let runs = interop_runs(tmp.path());
    let jobs: Vec<Job> = runs
        .iter()
        .map(|(id, run, base, _)| job(id, &run.out, Some(base)))
        .collect();
    let facts = ct_facts(&py, tmp.path(), &jobs);
    for (id, run, _, expect) in &runs {
        check_against_coremltools(id, run, &facts[id], expect);
    }
}

/// The shared oracle accepts every interop output and measures what the report says.
#[test]
fn interop_outputs_pass_the_shared_oracle() {
    let Some(verify) = oracle() else { return };
    let Some(py) = python() else { return };
    let tmp = tempdir();
    for (id, run, base, _) in interop_runs(tmp.path()) {
        check_with_oracle(&py, &verify, &id, &run, &base);
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Accuracy vs coremltools
// ---------------------------------------------------------------------------------------------

/// Our palettization of `base` with `args` vs coremltools' reference variant `theirs`: per
/// weight squared error against the base (both decoded by coremltools), and weight.bin size.
#[test]
fn accuracy_not_worse_than_coremltools() {
    let Some(py) = python() else { return };
    let tmp = tempdir();
    let pairs: &[(&str, &str, &[&str], &str)] = &[
        (
            "p4-tensor",
            "tiny-sd-unet",
            &["--nbits", "4"],
            "tiny-sd-unet.p4-tensor",
        ),
        (
            "p6-tensor",
            "tiny-sd-unet",
            &["--nbits", "6"],
            "tiny-sd-unet.p6-tensor",
        ),
        (
            "p4-gs16",
            "tiny-sd-unet-ios18",
            &["--nbits", "4", "--group-size", "16"],
            "tiny-sd-unet-ios18.p4-gs16",
        ),
        (
            "p8-uniform",
            "tiny-sd-unet",
            &["--nbits", "8", "--mode", "uniform"],
            "tiny-sd-unet.p8-uniform",
        ),
    ];
    let mut jobs = Vec::new();
    let mut runs = Vec::new();
    for (id, base, args, theirs) in pairs {
        let run = palettize(
            &fixture(base),
            &tmp.path().join(format!("{id}.mlpackage")),
            args,
        );
        jobs.push(job(&format!("{id}/ours"), &run.out, Some(&fixture(base))));
        jobs.push(job(
            &format!("{id}/coremltools"),
            &fixture(theirs),
            Some(&fixture(base)),
        ));
        runs.push(run);
    }
    let facts = ct_facts(&py, tmp.path(), &jobs);
    let mut failures = Vec::new();
    for ((id, _, _, theirs_name), run) in pairs.iter().zip(&runs) {
        let ours = facts[&format!("{id}/ours")]["weights"].as_object().unwrap();
        let theirs = facts[&format!("{id}/coremltools")]["weights"]
            .as_object()
            .unwrap();
        let (mut better, mut equal, mut worse) = (0, 0, Vec::new());
        let (mut sse_o, mut sse_t, mut sig) = (0.0f64, 0.0f64, 0.0f64);
        let mut n_luts = 0u64;
        for (name, t) in theirs {
            if t["compressed"] != Value::Bool(true) {
                continue;
            }
            let o = ours
                .get(name)
                .unwrap_or_else(|| panic!("{id}: our output lacks {name}"));
            assert_eq!(
                o["compressed"],
                Value::Bool(true),
                "{id}: coremltools compresses {name}, we do not"
            );
            n_luts += o["lut_groups"].as_u64().unwrap();
            let (so, st) = (o["sse"].as_f64().unwrap(), t["sse"].as_f64().unwrap());
            sse_o += so;
            sse_t += st;
            sig += t["sig"].as_f64().unwrap();
            if so > st * (1.0 + 1e-9) {
                worse.push(format!("{name}: sse ours {so:.6e} > coremltools {st:.6e}"));
            } else if so < st * (1.0 - 1e-9) {
                better += 1;
            } else {
                equal += 1;
            }
        }
        let n_theirs = theirs
            .values()
            .filter(|t| t["compressed"] == Value::Bool(true))
            .count();
        let n_ours = ours
            .values()
            .filter(|t| t["compressed"] == Value::Bool(true))
            .count();
        assert_eq!(
            n_ours, n_theirs,
            "{id}: compressed weights, ours vs coremltools"
        );
        assert!(n_theirs > 0, "{id}: coremltools compressed nothing?");
        let bin_o = facts[&format!("{id}/ours")]["weight_bin_bytes"]
            .as_u64()
            .unwrap();
        let bin_t = facts[&format!("{id}/coremltools")]["weight_bin_bytes"]
            .as_u64()
            .unwrap();
        println!(
            "{id} vs {theirs_name}: {better} better, {equal} equal, {} worse; global SNR ours {:.3} dB, coremltools {:.3} dB; weight.bin ours {bin_o}, coremltools {bin_t} ({n_luts} LUTs); report global_snr_db {}",
            worse.len(),
            10.0 * (sig / sse_o).log10(),
            10.0 * (sig / sse_t).log10(),
            run.report["totals"]["global_snr_db"]
        );
        if !worse.is_empty() {
            failures.push(format!(
                "{id}: {} weights worse than coremltools: {:?}",
                worse.len(),
                &worse[..worse.len().min(5)]
            ));
        }
        if bin_o.abs_diff(bin_t) > 64 * n_luts {
            failures.push(format!(
                "{id}: weight.bin {bin_o} bytes vs coremltools {bin_t}: differ by more than 64 x {n_luts} LUTs"
            ));
        }
        assert_eq!(
            run.report["totals"]["weight_bytes_after"].as_u64(),
            Some(bin_o),
            "{id}: report weight_bytes_after vs the weight files"
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// 3. Determinism
// ---------------------------------------------------------------------------------------------

/// `--threads 1` and `--threads 4` give byte-identical packages and identical reports apart
/// from `totals.wall_seconds` and `options.threads`.
#[test]
fn threads_do_not_change_output_or_report() {
    let tmp = tempdir();
    let input = fixture("tiny-sdxl-unet");
    let mut trees = Vec::new();
    let mut reports = Vec::new();
    for threads in ["1", "4"] {
        // Same relative output path in two directories, so that report.output is equal too.
        let dir = tmp.path().join(format!("t{threads}"));
        std::fs::create_dir(&dir).unwrap();
        let mut c = sdcompress();
        c.current_dir(&dir)
            .arg("palettize")
            .arg(&input)
            .args(["-o", "out.mlpackage", "--quiet", "--report", "report.json"])
            .args(["--nbits", "4", "--group-size", "16", "--threads", threads]);
        let line = cmd_line(&c);
        assert_success(&c.output().unwrap(), &line);
        trees.push(tree_contents(&dir.join("out.mlpackage")));
        let mut r: Value =
            serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
        assert_eq!(
            r["options"]["threads"].as_u64(),
            Some(threads.parse().unwrap())
        );
        assert!(r["totals"]["wall_seconds"].as_f64().is_some());
        assert!(
            totals_compressed(&r) > 100,
            "tiny-sdxl-unet: {} compressed",
            totals_compressed(&r)
        );
        r["options"].as_object_mut().unwrap().remove("threads");
        r["totals"].as_object_mut().unwrap().remove("wall_seconds");
        reports.push(r);
    }
    assert_same_tree(&trees[0], &trees[1], "--threads 1 vs --threads 4");
    assert_eq!(
        serde_json::to_string_pretty(&reports[0]).unwrap(),
        serde_json::to_string_pretty(&reports[1]).unwrap(),
        "reports differ between --threads 1 and --threads 4"
    );
    println!(
        "tiny-sdxl-unet 4-bit gs16: {} files identical, {} weights compressed",
        trees[0].len(),
        totals_compressed(&reports[0])
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Opset handling
// ---------------------------------------------------------------------------------------------

fn assert_ios18(pkg: &Path) {
    let info = info_json(pkg);
    assert_eq!(
        info["specification_version"].as_i64(),
        Some(9),
        "{}",
        pkg.display()
    );
    assert_eq!(info["deployment_target"], "iOS18", "{}", pkg.display());
    for f in info["functions"].as_array().unwrap() {
        assert_eq!(
            f["opset"],
            "CoreML8",
            "{}: function {}",
            pkg.display(),
            f["name"]
        );
    }
}

/// Per-grouped-channel on an iOS17 model: refused without a flag (nothing written), done with
/// `--upgrade-opset` (spec 9 / CoreML8, loads in coremltools); the same on Apple's iOS16
/// converter output, where conv_out (4 output channels) is skipped for the group size.
#[test]
fn grouped_channel_needs_ios18_and_upgrades_with_flag() {
    let tmp = tempdir();
    let d = tmp.path();
    let err = palettize_fails(
        &fixture("tiny-sd-unet"),
        &d.join("refused.mlpackage"),
        &["--nbits", "4", "--group-size", "16"],
    );
    assert!(
        err.contains("iOS18"),
        "the refusal should name iOS18:\n{err}"
    );
    assert!(
        err.contains("--upgrade-opset"),
        "the refusal should name --upgrade-opset:\n{err}"
    );
    assert!(
        err.contains("tiny-sd-unet.mlpackage"),
        "the refusal should name the input:\n{err}"
    );

    let up = palettize(
        &fixture("tiny-sd-unet"),
        &d.join("upgraded.mlpackage"),
        &["--nbits", "4", "--group-size", "16", "--upgrade-opset"],
    );
    assert_eq!(up.report["specification_version"], json!([8, 9]));
    assert_eq!(totals_compressed(&up.report), TINY_CANDIDATES);
    assert_ios18(&up.out);

    let err = palettize_fails(
        &fixture("mlsd-unet-ios16"),
        &d.join("mlsd-refused.mlpackage"),
        &["--nbits", "4", "--group-size", "16"],
    );
    assert!(
        err.contains("iOS18") && err.contains("--upgrade-opset") && err.contains("iOS16"),
        "mlsd-unet-ios16 refusal should name iOS18, --upgrade-opset and the current iOS16:\n{err}"
    );
    let mlsd = palettize(
        &fixture("mlsd-unet-ios16"),
        &d.join("mlsd.mlpackage"),
        // coremltools' behaviour (skip); the default divisor fallback is tested below.
        &[
            "--nbits",
            "4",
            "--group-size",
            "16",
            "--upgrade-opset",
            "--group-size-fallback",
            "skip",
        ],
    );
    assert_eq!(mlsd.report["specification_version"], json!([7, 9]));
    assert_ios18(&mlsd.out);
    let w = by_name(&mlsd.report);
    let conv_out = w
        .get("conv_out_weight_to_fp16")
        .expect("mlsd report lists conv_out_weight_to_fp16");
    assert_eq!(conv_out["shape"], json!([4, 96, 3, 3]));
    let why = conv_out["skipped"].as_str().unwrap_or_else(|| {
        panic!("conv_out (4 output channels) was compressed with group size 16: {conv_out}")
    });
    assert!(why.contains("group size"), "conv_out skip reason: {why}");
    assert!(
        why.contains("16"),
        "conv_out skip reason should give the group size: {why}"
    );
    // Everything else above the threshold is compressed, in groups of 16 channels.
    for w in weights(&mlsd.report) {
        if is_compressed(w) {
            assert_eq!(w["group_size"].as_u64(), Some(16), "{}", name_of(w));
            assert_eq!(
                w["groups"].as_u64(),
                Some(w["shape"][0].as_u64().unwrap() / 16),
                "{}",
                name_of(w)
            );
        } else if name_of(w) != "conv_out_weight_to_fp16" {
            let why = w["skipped"].as_str().unwrap();
            assert!(why.contains("weight threshold"), "{}: {why}", name_of(w));
        }
    }
    // With the default fallback, conv_out's 4 channels form one group of 4.
    let mlsd_div = palettize(
        &fixture("mlsd-unet-ios16"),
        &d.join("mlsd-div.mlpackage"),
        &["--nbits", "4", "--group-size", "16", "--upgrade-opset"],
    );
    let c = by_name(&mlsd_div.report)["conv_out_weight_to_fp16"].clone();
    assert!(c["skipped"].is_null(), "{c}");
    assert_eq!(c["group_size"], 4, "{c}");
    assert_eq!(c["group_size_requested"], 16, "{c}");
    assert_eq!(c["groups"], 1, "{c}");
    let Some(py) = python() else { return };
    let facts = ct_facts(
        &py,
        d,
        &[
            job(
                "tiny-sd-unet upgraded",
                &up.out,
                Some(&fixture("tiny-sd-unet")),
            ),
            job(
                "mlsd-unet-ios16 upgraded",
                &mlsd.out,
                Some(&fixture("mlsd-unet-ios16")),
            ),
        ],
    );
    let e = Expect {
        spec: 9,
        ios18_form: true,
    };
    check_against_coremltools(
        "tiny-sd-unet upgraded",
        &up,
        &facts["tiny-sd-unet upgraded"],
        &e,
    );
    check_against_coremltools(
        "mlsd-unet-ios16 upgraded",
        &mlsd,
        &facts["mlsd-unet-ios16 upgraded"],
        &e,
    );
}

/// An input that already holds iOS16-form constexpr ops (coremltools' 4-bit package): it can
/// neither be moved to iOS18 nor palettized again, so a per-grouped-channel request with
/// `--upgrade-opset` is refused, as are `--target ios18` and a plain per-tensor request;
/// nothing is written.
#[test]
fn ios16_compressed_input_is_refused() {
    let tmp = tempdir();
    let input = fixture("tiny-sd-unet.p4-tensor");
    let cases: &[&[&str]] = &[
        &["--nbits", "4", "--group-size", "16", "--upgrade-opset"],
        &["--nbits", "4", "--target", "ios18"],
        &["--nbits", "4"],
    ];
    for (i, args) in cases.iter().enumerate() {
        let err = palettize_fails(&input, &tmp.path().join(format!("r{i}.mlpackage")), args);
        assert!(
            err.contains("already compressed") || err.contains("iOS16-form"),
            "{args:?}: the refusal should say the input is already compressed (or holds iOS16-form ops):\n{err}"
        );
        assert!(
            err.contains("tiny-sd-unet.p4-tensor.mlpackage"),
            "{args:?}: the refusal should name the input:\n{err}"
        );
        assert!(
            err.contains("decompress"),
            "{args:?}: the refusal should point to `sdcompress decompress`:\n{err}"
        );
        println!("{args:?}: {}", err.lines().next().unwrap());
    }
}

/// README, exit codes: any error is one line `error: <file>: <what is wrong>` on stderr.
/// Checks the palettize refusals that carry a hint or a library's message.
#[test]
fn palettize_errors_are_one_line() {
    let tmp = tempdir();
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "per-grouped-channel on iOS17 without --upgrade-opset",
            "tiny-sd-unet",
            &["--nbits", "4", "--group-size", "16"],
        ),
        (
            "already-compressed input",
            "tiny-sd-unet.p4-tensor",
            &["--nbits", "4"],
        ),
        (
            "invalid --include regex",
            "tiny-sd-unet",
            &["--nbits", "4", "--include", "(["],
        ),
        (
            "invalid --exclude regex",
            "tiny-sd-unet",
            &["--nbits", "4", "--exclude", "a{2,1}"],
        ),
    ];
    let mut bad = Vec::new();
    for (i, (what, input, args)) in cases.iter().enumerate() {
        let err = palettize_fails(
            &fixture(input),
            &tmp.path().join(format!("e{i}.mlpackage")),
            args,
        );
        // One `error:` line; an optional `hint:` line may follow it (what
        // to do about it), nothing else.
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        let n = lines.len();
        let ok = lines.first().is_some_and(|l| l.starts_with("error: "))
            && (n == 1 || (n == 2 && lines[1].starts_with("hint: ")));
        if !ok {
            bad.push(format!(
                "{what} (palettize {input} {}): {n} lines:\n{err}",
                args.join(" ")
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "errors that are not one line:\n{}",
        bad.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Selection & config
// ---------------------------------------------------------------------------------------------

/// Weights that `matches` selects among `base` (names or consumer names).
fn matching(base: &Value, re: &regex::Regex) -> BTreeSet<String> {
    weights(base)
        .iter()
        .filter(|w| is_compressed(w))
        .filter(|w| {
            re.is_match(&name_of(w))
                || w["ops"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|o| re.is_match(o.as_str().unwrap()))
        })
        .map(name_of)
        .collect()
}

/// Asserts `run` compressed exactly `want` and that every weight `base` compressed but `run`
/// did not carries a reason containing `flag`.
fn assert_selected(id: &str, base: &Value, run: &Value, want: &BTreeSet<String>, flag: &str) {
    check_report_shape(id, run);
    let got = compressed_names(run);
    assert_eq!(&got, want, "{id}: compressed set");
    assert_eq!(
        totals_compressed(run),
        want.len() as u64,
        "{id}: totals.compressed"
    );
    let rw = by_name(run);
    for n in compressed_names(base).difference(want) {
        let why = rw[n]["skipped"]
            .as_str()
            .unwrap_or_else(|| panic!("{id}: {n} not skipped"));
        assert!(
            why.contains(flag),
            "{id}: {n}: skip reason {why:?} does not name {flag}"
        );
    }
    // What the base skipped stays skipped (the selection flags are checked first, so the
    // reason may now name the flag instead of the threshold).
    for w in weights(base).iter().filter(|w| !is_compressed(w)) {
        assert!(
            !is_compressed(rw[&name_of(w)]),
            "{id}: {} compressed although the base run skipped it",
            name_of(w)
        );
    }
    println!(
        "{id}: {} of {} compressed",
        got.len(),
        compressed_names(base).len()
    );
}

#[test]
fn selection_flags_choose_exactly_the_matching_weights() {
    let tmp = tempdir();
    let d = tmp.path();
    let input = fixture("tiny-sd-unet");
    let base = palettize(&input, &d.join("base.mlpackage"), &["--nbits", "2"]).report;
    assert_eq!(totals_compressed(&base), TINY_CANDIDATES);

    let inc = "attn[12]_to_(q|k)";
    let r = palettize(
        &input,
        &d.join("inc.mlpackage"),
        &["--nbits", "2", "--include", inc],
    )
    .report;
    let want = matching(&base, &regex::Regex::new(inc).unwrap());
    assert_eq!(
        want.len(),
        16,
        "attn1/attn2 to_q/to_k in 4 transformer blocks"
    );
    assert_selected("--include", &base, &r, &want, "--include");

    // Consumer op names count too: conv ops here are named after their outputs.
    let exc = "resnets";
    let r = palettize(
        &input,
        &d.join("exc.mlpackage"),
        &["--nbits", "2", "--exclude", exc],
    )
    .report;
    let hit = matching(&base, &regex::Regex::new(exc).unwrap());
    assert!(!hit.is_empty() && hit.len() < base_len(&base));
    let want: BTreeSet<String> = compressed_names(&base).difference(&hit).cloned().collect();
    assert_selected("--exclude", &base, &r, &want, "--exclude");

    let r = palettize(
        &input,
        &d.join("lin.mlpackage"),
        &["--nbits", "2", "--op-types", "linear"],
    )
    .report;
    let want: BTreeSet<String> = weights(&base)
        .iter()
        .filter(|w| {
            is_compressed(w)
                && w["op_types"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|t| t == "linear")
        })
        .map(name_of)
        .collect();
    assert_eq!(
        want.len(),
        50,
        "tiny-sd-unet has 50 linear weights above the threshold"
    );
    assert_selected("--op-types linear", &base, &r, &want, "--op-types");
    for w in weights(&r).iter().filter(|w| is_compressed(w)) {
        assert_eq!(w["op_types"], json!(["linear"]), "{}", name_of(w));
    }

    // Nothing in tiny-sd-unet has more than 100000 elements (the largest has 73728).
    let r = palettize(
        &input,
        &d.join("thr.mlpackage"),
        &["--nbits", "2", "--weight-threshold", "100000"],
    )
    .report;
    assert_selected(
        "--weight-threshold 100000 (tiny-sd-unet)",
        &base,
        &r,
        &BTreeSet::new(),
        "weight threshold",
    );
    for n in compressed_names(&base) {
        let why = by_name(&r)[&n]["skipped"].as_str().unwrap().to_string();
        assert!(
            why.contains("100000"),
            "{n}: the reason should give the threshold: {why}"
        );
    }
    assert_eq!(r["options"]["weight_threshold"].as_u64(), Some(100000));
}

fn base_len(base: &Value) -> usize {
    compressed_names(base).len()
}

/// On Apple's converter output (4.2 M parameters) 15 weights have more than 100000 elements.
#[test]
fn weight_threshold_splits_mlsd_unet() {
    let tmp = tempdir();
    let r = palettize(
        &fixture("mlsd-unet-ios16"),
        &tmp.path().join("thr.mlpackage"),
        &["--nbits", "2", "--weight-threshold", "100000"],
    )
    .report;
    check_report_shape("mlsd --weight-threshold 100000", &r);
    let mut n = 0;
    for w in weights(&r) {
        let big = numel(w) > 100_000 && w["shape"].as_array().unwrap().len() >= 2;
        assert_eq!(
            is_compressed(w),
            big,
            "{}: {} elements, skipped {}",
            name_of(w),
            numel(w),
            w["skipped"]
        );
        if big {
            n += 1;
        } else if numel(w) > 2048 && w["shape"].as_array().unwrap().len() >= 2 {
            let why = w["skipped"].as_str().unwrap();
            assert!(
                why.contains("weight threshold") && why.contains("100000"),
                "{}: {why}",
                name_of(w)
            );
        }
    }
    assert_eq!(n, 15);
    assert_eq!(totals_compressed(&r), 15);
    assert_eq!(
        r["specification_version"],
        json!([7, 7]),
        "per tensor stays on iOS16"
    );
}

/// A config file: linear weights 6-bit (op_type_configs), one conv weight left dense
/// (op_name_configs null), everything else at the command line's 4 bits, which override the
/// config's global 2 bits.
#[test]
fn config_file_sets_bits_per_op_type_and_skips_by_name() {
    let tmp = tempdir();
    let d = tmp.path();
    let named = "unet_up_blocks_0_resnets_0_conv1_weight_to_fp16";
    let config = d.join("config.json");
    std::fs::write(
        &config,
        serde_json::to_vec_pretty(&json!({
            "global_config": {"mode": "kmeans", "nbits": 2},
            "op_type_configs": {"linear": {"nbits": 6}},
            "op_name_configs": {named: null}
        }))
        .unwrap(),
    )
    .unwrap();
    let input = fixture("tiny-sd-unet");
    let run = palettize(
        &input,
        &d.join("cfg.mlpackage"),
        &["--nbits", "4", "--config", config.to_str().unwrap()],
    );
    let r = &run.report;
    check_report_shape("config", r);
    let (mut six, mut four) = (0, 0);
    for w in weights(r) {
        let n = name_of(w);
        if n == named {
            let why = w["skipped"]
                .as_str()
                .unwrap_or_else(|| panic!("{named} was compressed"));
            assert!(why.contains("config"), "{named}: reason {why}");
            assert_eq!(
                w["bytes_after"], w["bytes_before"],
                "{named} must stay dense"
            );
            continue;
        }
        if !is_compressed(w) {
            continue;
        }
        let linear = w["op_types"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "linear");
        let want = if linear { 6 } else { 4 };
        assert_eq!(w["nbits"].as_u64(), Some(want), "{n} ({})", w["op_types"]);
        // Storage: packed indices + LUT (+ blob headers/alignment: under 256 bytes).
        let payload = (numel(w) * want).div_ceil(8) + (2u64 << want);
        let after = u64_at(&w["bytes_after"], "bytes_after");
        assert!(
            after >= payload && after < payload + 256,
            "{n}: {after} bytes for a {want}-bit LUT of {} elements (payload {payload})",
            numel(w)
        );
        if linear {
            six += 1;
        } else {
            four += 1;
        }
    }
    assert_eq!(
        (six, four),
        (50, 30),
        "linear 6-bit, conv 4-bit, one conv left dense"
    );
    assert_eq!(totals_compressed(r), 80);

    // info sees the same: 80 LUT weights; the named one (the largest weight) dense; the LUT
    // widths of the largest weights are the report's.
    let info = info_json(&run.out);
    assert_eq!(info["compressed"]["count"].as_u64(), Some(80));
    assert_eq!(info["compressed"]["by_kind"]["lut"].as_u64(), Some(80));
    let rw = by_name(r);
    for l in info["largest"].as_array().unwrap() {
        let n = l["name"].as_str().unwrap();
        let w = rw
            .get(n)
            .unwrap_or_else(|| panic!("info's largest weight {n} is not in the report"));
        if n == named {
            assert!(
                l["compression"].is_null(),
                "{named}: info says compressed: {l}"
            );
        } else if is_compressed(w) {
            assert_eq!(
                l["compression"]["lut_nbits"], w["nbits"],
                "{n}: info vs report nbits"
            );
        }
    }
    assert_eq!(
        info["largest"][0]["name"], named,
        "the named weight is the largest one"
    );

    let Some(py) = python() else { return };
    let facts = ct_facts(&py, d, &[job("config", &run.out, Some(&input))]);
    check_against_coremltools(
        "config",
        &run,
        &facts["config"],
        &Expect {
            spec: 8,
            ios18_form: false,
        },
    );
    let ct = &facts["config"]["weights"];
    assert_eq!(
        ct[named]["compressed"],
        Value::Bool(false),
        "coremltools sees {named} compressed"
    );
    assert_eq!(ct[named]["sse"].as_f64(), Some(0.0));
}

// ---------------------------------------------------------------------------------------------
// 6. Bad flags
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_flags_exit_2_with_one_line_and_write_nothing() {
    let tmp = tempdir();
    let input = fixture("tiny-sd-unet");
    let cases: &[(&str, &[&str], &str)] = &[
        ("--nbits 5", &["--nbits", "5"], "nbits"),
        (
            "--group-size 0",
            &["--nbits", "4", "--group-size", "0"],
            "group size",
        ),
        ("no --nbits (kmeans by default)", &[], "--nbits"),
        (
            "--mode kmeans without --nbits",
            &["--mode", "kmeans"],
            "--nbits",
        ),
    ];
    for (i, (what, args, keyword)) in cases.iter().enumerate() {
        let err = palettize_fails(&input, &tmp.path().join(format!("bad{i}.mlpackage")), args);
        assert_one_line_error(&err, what);
        assert!(
            err.contains(keyword),
            "{what}: the error should mention {keyword}:\n{err}"
        );
        println!("{what}: {}", err.lines().next().unwrap());
    }
}

/// An invalid regex is a usage error naming the flag; nothing is written. (One line: see
/// `palettize_errors_are_one_line`.)
#[test]
fn invalid_regex_exits_2_and_writes_nothing() {
    let tmp = tempdir();
    let input = fixture("tiny-sd-unet");
    for (i, flag) in ["--include", "--exclude"].into_iter().enumerate() {
        let err = palettize_fails(
            &input,
            &tmp.path().join(format!("re{i}.mlpackage")),
            &["--nbits", "4", flag, "(["],
        );
        let first = err.lines().next().unwrap();
        assert!(
            first.contains(flag) && first.contains("regex"),
            "{flag}: the first line should name the flag and say regex:\n{err}"
        );
    }
}
