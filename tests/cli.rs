//! The command line on good input: help and exit codes, `info` (human and
//! `--json`) against the facts recorded in `fixtures/fixtures.json` when
//! coremltools made the fixtures, a golden `info --json` document, and
//! byte-for-byte deterministic `decompress`.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// `fixtures/fixtures.json`, entries keyed by file name (packages only).
fn fixtures_json() -> BTreeMap<String, Value> {
    let text = std::fs::read_to_string(repo_root().join("fixtures/fixtures.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["fixtures"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["file"].as_str().unwrap().ends_with(".mlpackage"))
        .map(|f| (f["file"].as_str().unwrap().to_string(), f.clone()))
        .collect()
}

fn u64_of(v: &Value, what: &str) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("{what} is not an unsigned integer: {v}"))
}

// ---------------------------------------------------------------------------
// Help, version, exit codes
// ---------------------------------------------------------------------------

#[test]
fn help_exits_0_and_documents_exit_codes() {
    for args in [&["--help"][..], &["-h"], &["help"]] {
        let out = run(args);
        assert_success(&out, &format!("{args:?}"));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Exit codes"), "{args:?}: {text}");
        assert!(text.contains("0  success"), "{args:?}: {text}");
        assert!(text.contains("2  any error"), "{args:?}: {text}");
        assert!(
            text.contains("info") && text.contains("decompress"),
            "{text}"
        );
        assert!(out.stderr.is_empty(), "{}", show(&out));
    }
}

#[test]
fn subcommand_help_exits_0() {
    for sub in ["info", "decompress"] {
        let out = run([sub, "--help"]);
        assert_success(&out, &format!("{sub} --help"));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage:"), "{text}");
    }
    let text = String::from_utf8_lossy(&run(["decompress", "--help"]).stdout).into_owned();
    assert!(
        text.contains("--output") && text.contains("--force"),
        "{text}"
    );
    let text = String::from_utf8_lossy(&run(["info", "--help"]).stdout).into_owned();
    assert!(text.contains("--json"), "{text}");
}

#[test]
fn version_exits_0() {
    let out = run(["--version"]);
    assert_success(&out, "--version");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("sdcompress ") && text.contains(env!("CARGO_PKG_VERSION")),
        "{text}"
    );
}

// ---------------------------------------------------------------------------
// info, human summary
// ---------------------------------------------------------------------------

#[test]
fn info_human_states_the_key_facts() {
    let out = info(&fixture("tiny-sd-unet"));
    assert_success(&out, "info tiny-sd-unet");
    assert!(out.stderr.is_empty(), "{}", show(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "tiny-sd-unet.mlpackage",
        "specification version 8 (iOS17)",
        "function main: opset CoreML7 (iOS17), 1301 ops",
        "const 792",
        "weights: 272 tensors, 1074296 parameters",
        "compressed: none",
        "input  sample",
        "output noise_pred",
        "weight file @model_path/weights/weight.bin",
    ] {
        assert!(text.contains(needle), "missing '{needle}' in:\n{text}");
    }
}

#[test]
fn info_human_on_compressed_fixture() {
    let out = info(&fixture("tiny-sd-unet-ios18.p4-gs16"));
    assert_success(&out, "info p4-gs16");
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "specification version 9 (iOS18)",
        "opset CoreML8 (iOS18)",
        "constexpr_lut_to_dense 81",
        "weights: 272 tensors, 1074296 parameters",
        "compressed: 81 tensors, 1058048 parameters",
        "lut 81",
        "lut 4-bit",
    ] {
        assert!(text.contains(needle), "missing '{needle}' in:\n{text}");
    }
}

// ---------------------------------------------------------------------------
// info --json against fixtures.json
// ---------------------------------------------------------------------------

#[test]
fn info_json_on_every_fixture_matches_fixtures_json() {
    let facts = fixtures_json();
    let all = all_fixtures();
    assert!(all.len() >= 15, "fixtures found: {all:?}");
    let mut compared = 0;
    for name in &all {
        let pkg = fixture(name);
        let doc = info_json(&pkg);
        let ctx = name.as_str();
        assert_eq!(doc["schema"], "sdcompress.info/1", "{ctx}");
        assert_eq!(doc["path"], pkg.display().to_string(), "{ctx}");
        let funcs = doc["functions"].as_array().unwrap();
        assert!(!funcs.is_empty(), "{ctx}: no functions");
        // Internal consistency, for every fixture.
        let w = &doc["weights"];
        let c = &doc["compressed"];
        assert!(
            u64_of(&w["count"], "count") >= u64_of(&c["count"], "count"),
            "{ctx}"
        );
        let by_kind: u64 = c["by_kind"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| u64_of(v, "by_kind"))
            .sum();
        assert_eq!(
            by_kind,
            u64_of(&c["count"], "count"),
            "{ctx}: by_kind sums to count"
        );
        let dense: u64 = w["dense_parameters_by_dtype"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| u64_of(v, "dense"))
            .sum();
        assert_eq!(
            dense + u64_of(&c["parameters"], "parameters"),
            u64_of(&w["parameters"], "parameters"),
            "{ctx}: dense + compressed parameters = all parameters"
        );
        for f in funcs {
            let hist: u64 = f["op_types"]
                .as_object()
                .unwrap()
                .values()
                .map(|v| u64_of(v, "op_types"))
                .sum();
            assert_eq!(
                hist,
                u64_of(&f["op_count"], "op_count"),
                "{ctx}: histogram sums to op_count"
            );
        }
        let wf = doc["weight_files"].as_array().unwrap();
        assert_eq!(wf.len(), 1, "{ctx}");
        assert_eq!(wf[0]["name"], "@model_path/weights/weight.bin", "{ctx}");
        assert_eq!(
            u64_of(&wf[0]["bytes"], "bytes"),
            std::fs::metadata(pkg.join(WEIGHT_REL)).unwrap().len(),
            "{ctx}"
        );
        assert_eq!(wf[0]["unreferenced_blobs"], 0, "{ctx}");
        assert_eq!(
            u64_of(&doc["model_bytes"], "model_bytes"),
            std::fs::metadata(pkg.join(MODEL_REL)).unwrap().len(),
            "{ctx}"
        );

        // Agreement with what coremltools reported when it made the fixture.
        let Some(fx) = facts.get(&format!("{name}.mlpackage")) else {
            continue;
        };
        compared += 1;
        assert_eq!(
            doc["specification_version"], fx["specificationVersion"],
            "{ctx}: specification version"
        );
        assert_eq!(
            u64_of(&w["count"], "count"),
            u64_of(&fx["weight_tensors"], "weight_tensors"),
            "{ctx}: weight tensors"
        );
        assert_eq!(
            u64_of(&w["parameters"], "parameters"),
            u64_of(&fx["weight_params"], "weight_params"),
            "{ctx}: weight parameters"
        );
        assert_eq!(
            u64_of(&c["count"], "count"),
            u64_of(&fx["compressed_tensors"], "compressed_tensors"),
            "{ctx}: compressed tensors"
        );
        assert_eq!(
            u64_of(&c["parameters"], "parameters"),
            u64_of(&fx["compressed_params"], "compressed_params"),
            "{ctx}: compressed parameters"
        );
        assert_eq!(funcs.len(), fx["opset"].as_object().unwrap().len(), "{ctx}");
        for f in funcs {
            let fname = f["name"].as_str().unwrap();
            assert_eq!(f["opset"], fx["opset"][fname], "{ctx}: opset of {fname}");
        }
        // coremltools' in-memory program turns every inline constexpr
        // parameter into a const op of its own.
        let main = funcs.iter().find(|f| f["name"] == "main").unwrap();
        let mut hist: BTreeMap<String, u64> = main["op_types"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), u64_of(v, "op_types")))
            .collect();
        *hist.entry("const".into()).or_default() +=
            u64_of(&main["inline_constexpr_params"], "inline_constexpr_params");
        let want: BTreeMap<String, u64> = fx["op_types"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), u64_of(v, "op_types")))
            .collect();
        assert_eq!(
            hist, want,
            "{ctx}: op histogram (const + inline constexpr params)"
        );
        let inputs: Vec<&str> = doc["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap())
            .collect();
        let want_inputs: Vec<&str> = fx["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap())
            .collect();
        assert_eq!(inputs, want_inputs, "{ctx}: inputs");
        for (got, want) in doc["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .zip(fx["inputs"].as_array().unwrap())
        {
            assert_eq!(got["shape"], want["shape"], "{ctx}: input shape");
        }
    }
    assert_eq!(
        compared,
        facts.len(),
        "every fixture in fixtures.json is on disk"
    );
}

// ---------------------------------------------------------------------------
// Golden info --json
// ---------------------------------------------------------------------------

const GOLDEN_FIXTURE: &str = "tiny-sd-unet-ios18.p4-gs16";

fn golden_path() -> PathBuf {
    repo_root().join(format!("tests/golden/info-{GOLDEN_FIXTURE}.json"))
}

/// `info --json` of the golden fixture, `path` replaced by a fixed label,
/// pretty-printed with a trailing newline.
fn golden_candidate() -> String {
    let pkg = fixture(GOLDEN_FIXTURE);
    let mut doc = info_json(&pkg);
    assert_eq!(doc["path"], pkg.display().to_string());
    doc["path"] = Value::String(format!("fixtures/{GOLDEN_FIXTURE}.mlpackage"));
    let mut s = serde_json::to_string_pretty(&doc).unwrap();
    s.push('\n');
    s
}

/// To accept a deliberate change of the report, run
/// `SDCOMPRESS_BLESS=1 cargo test --test cli info_json_golden` and review
/// the diff of the golden file.
#[test]
fn info_json_golden() {
    let got = golden_candidate();
    let path = golden_path();
    if std::env::var("SDCOMPRESS_BLESS").as_deref() == Ok("1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &got).unwrap();
        return;
    }
    let want =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    if got != want {
        let first = got
            .lines()
            .zip(want.lines())
            .enumerate()
            .find(|(_, (g, w))| g != w)
            .map(|(i, (g, w))| format!("line {}: got {g:?}, golden {w:?}", i + 1))
            .unwrap_or_else(|| {
                format!(
                    "one is a prefix of the other ({} vs {} lines)",
                    got.lines().count(),
                    want.lines().count()
                )
            });
        panic!(
            "info --json of {GOLDEN_FIXTURE} differs from {}: {first}\n\
             (if the change is intended: SDCOMPRESS_BLESS=1 cargo test --test cli info_json_golden)",
            path.display()
        );
    }
}

#[test]
fn info_json_is_the_same_for_a_copy_elsewhere() {
    // Nothing in the report depends on where the package lives, except `path`.
    let dir = tempdir();
    let copy = copy_fixture(GOLDEN_FIXTURE, dir.path());
    let mut a = info_json(&copy);
    let mut b = info_json(&fixture(GOLDEN_FIXTURE));
    a["path"] = Value::Null;
    b["path"] = Value::Null;
    assert_eq!(a, b);
}

// ---------------------------------------------------------------------------
// decompress
// ---------------------------------------------------------------------------

#[test]
fn decompress_is_deterministic() {
    for name in [
        "tiny-sd-unet-ios18.p4-gs16",
        "tiny-sd-unet-ios18.prune0.4-p4-gs16",
        "tiny-sd-unet.p6-tensor",
        "tiny-sd-unet.int8-channel",
    ] {
        let dir = tempdir();
        let a = dir.path().join("a.mlpackage");
        let b = dir.path().join("b.mlpackage");
        assert_success(&decompress(&fixture(name), &a, false), name);
        assert_success(&decompress(&fixture(name), &b, false), name);
        let ta = tree_contents(&a);
        assert!(
            ta.contains_key(Path::new(MODEL_REL)),
            "{name}: {:?}",
            ta.keys()
        );
        assert!(
            ta.contains_key(Path::new(WEIGHT_REL)),
            "{name}: {:?}",
            ta.keys()
        );
        assert_same_tree(
            &ta,
            &tree_contents(&b),
            &format!("{name}: two decompress runs"),
        );
        // Replacing an output gives the same bytes again.
        assert_success(&decompress(&fixture(name), &b, true), name);
        assert_same_tree(
            &ta,
            &tree_contents(&b),
            &format!("{name}: decompress --force"),
        );
        assert!(staging_leftovers(dir.path()).is_empty());
    }
}

#[test]
fn decompress_output_has_no_compressed_weights() {
    for name in [
        "tiny-sd-unet-ios18.prune0.4-p4-gs16",
        "tiny-sd-unet.int8-channel",
    ] {
        let dir = tempdir();
        let out = dir.path().join("out.mlpackage");
        let res = decompress(&fixture(name), &out, false);
        assert_success(&res, name);
        assert!(
            res.stdout.is_empty() && res.stderr.is_empty(),
            "--quiet: {}",
            show(&res)
        );
        let before = info_json(&fixture(name));
        let after = info_json(&out);
        assert_eq!(after["compressed"]["count"], 0, "{name}");
        assert_eq!(
            after["weights"]["count"], before["weights"]["count"],
            "{name}"
        );
        assert_eq!(
            after["weights"]["parameters"], before["weights"]["parameters"],
            "{name}"
        );
        assert_eq!(after["inputs"], before["inputs"], "{name}");
        assert_eq!(after["outputs"], before["outputs"], "{name}");
        assert_eq!(
            after["specification_version"],
            before["specification_version"]
        );
        let ops = &after["functions"][0]["op_types"];
        assert!(
            ops.as_object()
                .unwrap()
                .keys()
                .all(|k| !k.starts_with("constexpr_")),
            "{name}: {ops}"
        );
        // The manifest is copied unchanged.
        assert_eq!(
            std::fs::read(out.join("Manifest.json")).unwrap(),
            std::fs::read(fixture(name).join("Manifest.json")).unwrap()
        );
    }
}

#[test]
fn decompress_summary_on_stderr_without_quiet() {
    let dir = tempdir();
    let out = dir.path().join("out.mlpackage");
    let res = sdcompress()
        .arg("decompress")
        .arg(fixture("tiny-sd-unet.p4-tensor"))
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    assert_success(&res, "decompress");
    assert!(res.stdout.is_empty(), "{}", show(&res));
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(err.starts_with("wrote "), "{err}");
    assert!(err.contains("81 constexpr ops materialized"), "{err}");
}

// ---------------------------------------------------------------------------
// A closed stdout is not an error
// ---------------------------------------------------------------------------

/// Runs `info [--json]` with stdout closed before the binary writes.
fn info_into_closed_pipe(json: bool) -> std::process::Output {
    let mut c = sdcompress();
    c.arg("info");
    if json {
        c.arg("--json");
    }
    c.arg(fixture("tiny-sd-unet"));
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut err = Vec::new();
    child.stderr.take().unwrap().read_to_end(&mut err).unwrap();
    let status = child.wait().unwrap();
    std::process::Output {
        status,
        stdout: Vec::new(),
        stderr: err,
    }
}

#[test]
fn info_into_closed_pipe_is_not_an_error() {
    let out = info_into_closed_pipe(false);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(out.stderr.is_empty(), "{}", show(&out));
}

#[test]
fn info_json_into_closed_pipe_is_not_an_error() {
    let out = info_into_closed_pipe(true);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(out.stderr.is_empty(), "{}", show(&out));
}
