//! Shared helpers for the integration tests that drive the real binary:
//! fixture copies in temporary directories, running `sdcompress`, the
//! error-output contract, byte patches of `weight.bin`, and protobuf edits
//! of `model.mlmodel`.
//!
//! Each integration test crate includes this with `mod common;` and uses
//! only part of it.
#![allow(dead_code)]

use prost::Message;
use sdcompress::proto::mil::{self, value, Operation};
use sdcompress::proto::spec::{model, Model};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// Relative path of the root model file inside a coremltools package.
pub const MODEL_REL: &str = "Data/com.apple.CoreML/model.mlmodel";
/// Relative path of the weight file inside a coremltools package.
pub const WEIGHT_REL: &str = "Data/com.apple.CoreML/weights/weight.bin";

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `fixtures/<name>.mlpackage` (name without the extension).
pub fn fixture(name: &str) -> PathBuf {
    repo_root()
        .join("fixtures")
        .join(format!("{name}.mlpackage"))
}

/// Every shipped `.mlpackage` fixture, by name without the extension, sorted.
pub fn all_fixtures() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(repo_root().join("fixtures"))
        .expect("fixtures/ exists")
        .map(|e| e.expect("readable fixtures/").file_name())
        .filter_map(|n| {
            n.to_str()
                .and_then(|s| s.strip_suffix(".mlpackage"))
                .map(str::to_string)
        })
        .collect();
    v.sort();
    v
}

/// A fresh temporary directory.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("sdcompress-test-")
        .tempdir()
        .expect("create a temporary directory")
}

/// Copies a directory tree (regular files and directories only).
pub fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap_or_else(|e| panic!("mkdir {}: {e}", dst.display()));
    for e in std::fs::read_dir(src).unwrap_or_else(|e| panic!("read {}: {e}", src.display())) {
        let e = e.unwrap();
        let from = e.path();
        let to = dst.join(e.file_name());
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            copy_tree(&from, &to);
        } else if ft.is_file() {
            std::fs::copy(&from, &to)
                .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", from.display(), to.display()));
        } else {
            panic!("unexpected special file in fixture: {}", from.display());
        }
    }
}

/// Copies fixture `name` to `<dir>/<as_name>` and returns that path.
pub fn copy_fixture_as(name: &str, dir: &Path, as_name: &str) -> PathBuf {
    let dst = dir.join(as_name);
    copy_tree(&fixture(name), &dst);
    dst
}

/// Copies fixture `name` to `<dir>/<name>.mlpackage` and returns that path.
pub fn copy_fixture(name: &str, dir: &Path) -> PathBuf {
    copy_fixture_as(name, dir, &format!("{name}.mlpackage"))
}

/// A `Command` for the binary under test.
pub fn sdcompress() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sdcompress"));
    // Never let a developer's environment change what the binary prints.
    c.env_remove("RUST_BACKTRACE").env_remove("RUST_LOG");
    c
}

/// Runs the binary with `args` and returns its output.
pub fn run<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    sdcompress()
        .args(args)
        .output()
        .expect("run the sdcompress binary")
}

/// `sdcompress info <pkg>`.
pub fn info(pkg: &Path) -> Output {
    run([Path::new("info").as_os_str(), pkg.as_os_str()])
}

/// Elements of a report weight (`shape` of a `weights[]` entry).
pub fn numel(w: &serde_json::Value) -> u64 {
    w["shape"]
        .as_array()
        .unwrap_or_else(|| panic!("no shape in {w}"))
        .iter()
        .map(|d| {
            d.as_u64()
                .unwrap_or_else(|| panic!("shape dim is not an unsigned integer: {d}"))
        })
        .product()
}

/// `sdcompress info --json <pkg>`, which must succeed; the parsed document.
pub fn info_json(pkg: &Path) -> serde_json::Value {
    let out = run([
        Path::new("info").as_os_str(),
        Path::new("--json").as_os_str(),
        pkg.as_os_str(),
    ]);
    assert_success(&out, &format!("info --json {}", pkg.display()));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "info --json {} printed invalid JSON: {e}\n{}",
            pkg.display(),
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `sdcompress decompress <input> -o <output> [--force] --quiet`.
pub fn decompress(input: &Path, output: &Path, force: bool) -> Output {
    let mut c = sdcompress();
    c.arg("decompress").arg(input).arg("-o").arg(output);
    if force {
        c.arg("--force");
    }
    c.arg("--quiet");
    c.output().expect("run the sdcompress binary")
}

/// Renders an output for assertion messages.
pub fn show(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Asserts exit code 0 and no panic.
pub fn assert_success(out: &Output, what: &str) {
    assert_eq!(out.status.code(), Some(0), "{what} failed:\n{}", show(out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{what} panicked:\n{}", show(out));
}

/// The error contract of the CLI: exit code 2, nothing on stdout, stderr is
/// exactly one line `error: ...` that contains `file` (the offending file)
/// and `keyword` (the problem), and no panic. Returns that line.
pub fn assert_error(out: &Output, file: &str, keyword: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !err.contains("panicked"),
        "the binary panicked:\n{}",
        show(out)
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "expected exit code 2:\n{}",
        show(out)
    );
    assert!(
        out.stdout.is_empty(),
        "expected nothing on stdout:\n{}",
        show(out)
    );
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "expected exactly one line on stderr:\n{}",
        show(out)
    );
    let line = lines[0];
    assert!(
        err.ends_with('\n'),
        "stderr must end with a newline: {err:?}"
    );
    assert!(
        line.starts_with("error: "),
        "stderr must start with 'error: ': {line}"
    );
    assert!(
        line.contains(file),
        "the message must name the file '{file}': {line}"
    );
    assert!(
        line.contains(keyword),
        "the message must say '{keyword}': {line}"
    );
    line.to_string()
}

/// Entries of `dir` whose name contains `.sdcompress-tmp` (leftover
/// staging directories).
pub fn staging_leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".sdcompress-tmp"))
        .collect()
}

/// After a failed `decompress` to `output`: no output and no staging
/// directory next to it.
pub fn assert_nothing_written(output: &Path) {
    assert!(
        std::fs::symlink_metadata(output).is_err(),
        "a failed decompress left {} behind",
        output.display()
    );
    let parent = output.parent().expect("output has a parent");
    let left = staging_leftovers(parent);
    assert!(
        left.is_empty(),
        "a failed decompress left staging directories in {}: {left:?}",
        parent.display()
    );
}

/// Every regular file below `root`, by path relative to `root`, with its
/// bytes (fixtures are a few MiB, so exact comparison is cheap).
pub fn tree_contents(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        let dir = root.join(rel);
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                out.insert(r.join(""), Vec::new());
                walk(root, &r, out);
            } else {
                out.insert(r.clone(), std::fs::read(root.join(&r)).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, Path::new(""), &mut out);
    out
}

/// Asserts that two trees hold the same files with the same bytes, naming
/// the first difference.
pub fn assert_same_tree(
    a: &BTreeMap<PathBuf, Vec<u8>>,
    b: &BTreeMap<PathBuf, Vec<u8>>,
    what: &str,
) {
    let ka: Vec<_> = a.keys().collect();
    let kb: Vec<_> = b.keys().collect();
    assert_eq!(ka, kb, "{what}: different file lists");
    for (k, va) in a {
        let vb = &b[k];
        if va != vb {
            let first = va.iter().zip(vb).position(|(x, y)| x != y);
            panic!(
                "{what}: {} differs ({} vs {} bytes, first difference at {:?})",
                k.display(),
                va.len(),
                vb.len(),
                first
            );
        }
    }
}

/// Overwrites `bytes` at `offset` in `file`.
pub fn patch(file: &Path, offset: usize, bytes: &[u8]) {
    let mut b = std::fs::read(file).unwrap();
    b[offset..offset + bytes.len()].copy_from_slice(bytes);
    std::fs::write(file, b).unwrap();
}

/// Overwrites a little-endian u32 at `offset` in `file`.
pub fn patch_u32(file: &Path, offset: usize, v: u32) {
    patch(file, offset, &v.to_le_bytes());
}

/// Overwrites a little-endian u64 at `offset` in `file`.
pub fn patch_u64(file: &Path, offset: usize, v: u64) {
    patch(file, offset, &v.to_le_bytes());
}

/// Reads a little-endian u64 at `offset` in `file`.
pub fn read_u64(file: &Path, offset: usize) -> u64 {
    let b = std::fs::read(file).unwrap();
    u64::from_le_bytes(b[offset..offset + 8].try_into().unwrap())
}

/// Truncates `file` to `len` bytes.
pub fn truncate(file: &Path, len: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.set_len(len).unwrap();
}

/// Decodes the package's `model.mlmodel` with prost.
pub fn read_model(pkg: &Path) -> Model {
    let bytes = std::fs::read(pkg.join(MODEL_REL)).unwrap();
    Model::decode(bytes.as_slice()).expect("fixture model decodes")
}

/// Encodes `m` into the package's `model.mlmodel`.
pub fn write_model(pkg: &Path, m: &Model) {
    std::fs::write(pkg.join(MODEL_REL), m.encode_to_vec()).unwrap();
}

/// Decodes, edits and re-encodes the package's `model.mlmodel`.
pub fn edit_model(pkg: &Path, f: impl FnOnce(&mut Model)) {
    let mut m = read_model(pkg);
    f(&mut m);
    write_model(pkg, &m);
}

/// The ML Program of a model.
pub fn program_mut(m: &mut Model) -> &mut mil::Program {
    match &mut m.r#type {
        Some(model::Type::MlProgram(p)) => p,
        _ => panic!("fixture is not an ML Program"),
    }
}

/// The ops of the active block of function `main`.
pub fn main_ops_mut(m: &mut Model) -> &mut Vec<Operation> {
    let f = program_mut(m)
        .functions
        .get_mut("main")
        .expect("fixture has function main");
    let opset = f.opset.clone();
    &mut f
        .block_specializations
        .get_mut(&opset)
        .expect("main has its opset's block")
        .operations
}

/// The `val` attribute of a const op, if it is a blob reference.
pub fn const_blob(op: &mut Operation) -> Option<&mut mil::Value> {
    if op.r#type != "const" {
        return None;
    }
    let v = op.attributes.get_mut("val")?;
    matches!(v.value, Some(value::Value::BlobFileValue(_))).then_some(v)
}

/// Every blob-backed value written directly on `op`: attributes (consts,
/// iOS16 constexpr parameters) and inline input bindings (iOS18 constexpr
/// parameters).
pub fn blob_values_mut(op: &mut Operation) -> Vec<&mut mil::Value> {
    let mut out = Vec::new();
    for v in op.attributes.values_mut() {
        if matches!(v.value, Some(value::Value::BlobFileValue(_))) {
            out.push(v);
        }
    }
    for arg in op.inputs.values_mut() {
        for b in &mut arg.arguments {
            if let Some(mil::argument::binding::Binding::Value(v)) = &mut b.binding {
                if matches!(v.value, Some(value::Value::BlobFileValue(_))) {
                    out.push(v);
                }
            }
        }
    }
    out
}

/// The first const op in `main` whose value lives in a blob, and the
/// index of its first consumer-visible output.
pub fn first_blob_const(m: &mut Model) -> &mut Operation {
    main_ops_mut(m)
        .iter_mut()
        .find(|op| {
            op.r#type == "const"
                && matches!(
                    op.attributes.get("val").and_then(|v| v.value.as_ref()),
                    Some(value::Value::BlobFileValue(_))
                )
        })
        .expect("fixture has a blob-backed const")
}

/// The blob reference inside a blob-backed `Value`.
pub fn blob_ref(v: &mut mil::Value) -> &mut mil::value::BlobFileValue {
    match &mut v.value {
        Some(value::Value::BlobFileValue(bv)) => bv,
        _ => panic!("value is not a blob reference"),
    }
}

/// Sets the declared element type of a tensor `ValueType`.
pub fn set_tensor_dtype(vt: &mut Option<mil::ValueType>, data_type: mil::DataType) {
    match vt.as_mut().and_then(|t| t.r#type.as_mut()) {
        Some(mil::value_type::Type::TensorType(tt)) => tt.data_type = data_type as i32,
        _ => panic!("not a tensor type"),
    }
}

// Python with coremltools, and the shared oracle: found once, skipped with a message when
// absent, required when SDCOMPRESS_REQUIRE_INTEROP / SDCOMPRESS_REQUIRE_ORACLE is 1.

pub fn env_flag(name: &str) -> bool {
    std::env::var(name).map(|v| v == "1").unwrap_or(false)
}

/// The Python interpreter with coremltools, or None (after printing why) when the tests should
/// skip. Panics when `SDCOMPRESS_REQUIRE_INTEROP=1` and coremltools is not importable.
pub fn python() -> Option<PathBuf> {
    static PY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = PY.get_or_init(|| {
        let candidate = match std::env::var_os("SDCOMPRESS_PYTHON") {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => repo_root().join(".venv").join("bin").join("python"),
        };
        match Command::new(&candidate)
            .args([
                "-c",
                "import numpy, coremltools, coremltools.optimize.coreml",
            ])
            .output()
        {
            Ok(o) if o.status.success() => Ok(candidate),
            Ok(o) => {
                let err = String::from_utf8_lossy(&o.stderr);
                let last = err.lines().last().unwrap_or("").to_string();
                Err(format!(
                    "{}: import coremltools failed: {last}",
                    candidate.display()
                ))
            }
            Err(e) => Err(format!("{}: {e}", candidate.display())),
        }
    });
    match found {
        Ok(p) => Some(p.clone()),
        Err(why) => {
            if env_flag("SDCOMPRESS_REQUIRE_INTEROP") {
                panic!("SDCOMPRESS_REQUIRE_INTEROP=1 but coremltools is not available ({why})");
            }
            eprintln!("skipped: coremltools not available (run scripts/test.sh): {why}");
            None
        }
    }
}

/// `verify.py` of the shared oracle, or None (after printing why) when absent.
pub fn oracle() -> Option<PathBuf> {
    let path = match std::env::var_os("SDCOMPRESS_ORACLE") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => match repo_root().parent() {
            Some(parent) => parent.join("shared").join("oracle").join("verify.py"),
            None => PathBuf::from("../shared/oracle/verify.py"),
        },
    };
    if path.is_file() {
        return Some(path);
    }
    if env_flag("SDCOMPRESS_REQUIRE_ORACLE") {
        panic!(
            "SDCOMPRESS_REQUIRE_ORACLE=1 but {} does not exist",
            path.display()
        );
    }
    eprintln!("skipped: ../shared/oracle/verify.py not present");
    None
}
