//! The interpreter end to end: `run` reproduces the torch fp32 reference
//! outputs stored in the calibration files on every base fixture, `eval`
//! reports exact agreement for a model against itself and a PSNR that falls
//! with the palettization bit width, bad inputs fail cleanly, the output
//! does not depend on `--threads`, and weight hooks and weight swaps behave.

mod common;

use candle_core::{DType as CD, Device, Tensor};
use common::*;
use sdcompress::interp::calib::{read_tensor, write_safetensors, CalibSet};
use sdcompress::interp::{Hook, Interpreter, Options, WeightKind, WeightOp};
use sdcompress::mil;
use sdcompress::package::Package;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// (package, calibration file) for every base fixture.
const PAIRS: [(&str, &str); 4] = [
    ("tiny-sd-unet", "calib-tiny-sd"),
    ("tiny-sd-unet-ios18", "calib-tiny-sd"),
    ("tiny-sdxl-unet", "calib-tiny-sdxl"),
    ("mlsd-unet-ios16", "calib-mlsd-unet"),
];

/// The interpreter tolerance of the fixtures' README ("fp16 tolerance"):
/// fp32 compute, relative L2 against the torch fp32 `noise_pred`.
const FP32_REL_L2: f64 = 3e-3;
/// The same README's tolerance for fp16 compute.
const FP16_REL_L2: f64 = 5e-3;

fn calib(name: &str) -> PathBuf {
    repo_root()
        .join("fixtures")
        .join(format!("{name}.safetensors"))
}

fn sdc<I, S>(args: I) -> std::process::Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    run(args)
}

/// `sdcompress run` into `out`, which must succeed.
fn run_model(pkg: &Path, calib: &Path, out: &Path, extra: &[&str]) {
    let mut args: Vec<std::ffi::OsString> = vec![
        "run".into(),
        pkg.into(),
        "--inputs".into(),
        calib.into(),
        "-o".into(),
        out.into(),
        "--quiet".into(),
    ];
    args.extend(extra.iter().map(Into::into));
    let o = sdc(&args);
    assert_success(&o, &format!("run {}", pkg.display()));
}

/// Relative L2 and SNR (dB) of `got` against `want`.
fn rel_l2(got: &[f32], want: &[f32]) -> (f64, f64) {
    assert_eq!(got.len(), want.len());
    let (mut e, mut r) = (0f64, 0f64);
    for (&g, &w) in got.iter().zip(want) {
        e += (f64::from(g) - f64::from(w)).powi(2);
        r += f64::from(w).powi(2);
    }
    let rel = (e / r).sqrt();
    (rel, -20.0 * rel.log10())
}

/// fixtures.json's numpy-interpreter result for `pkg` (fp32 compute or
/// fp16-rounded ops) against `noise_pred`: its relative L2.
fn oracle_rel_l2(pkg: &str, mode: &str) -> Option<f64> {
    let j: Value =
        serde_json::from_slice(&std::fs::read(repo_root().join("fixtures/fixtures.json")).ok()?)
            .ok()?;
    j["fixtures"]
        .as_array()?
        .iter()
        .find(|f| f["file"] == format!("{pkg}.mlpackage"))?["program_vs_torch"][mode]["noise_pred"]
        ["rel_l2"]
        .as_f64()
}

#[test]
fn run_reproduces_the_torch_reference_on_every_fixture() {
    let dir = tempdir();
    for (pkg, cal) in PAIRS {
        let out = dir.path().join(format!("{pkg}.safetensors"));
        run_model(&fixture(pkg), &calib(cal), &out, &[]);
        let (shape, got) = read_tensor(&out, "noise_pred").unwrap();
        let (rshape, want) = read_tensor(&calib(cal), "noise_pred").unwrap();
        assert_eq!(shape, rshape, "{pkg}: output shape");
        let (rel, snr) = rel_l2(&got, &want);
        let psnr = sdcompress::eval::metrics(&want, &got).psnr_db;
        eprintln!(
            "{pkg}: rel L2 {rel:.3e} ({snr:.2} dB SNR, {psnr:.2} dB PSNR) vs torch fp32 noise_pred"
        );
        assert!(
            rel <= FP32_REL_L2,
            "{pkg}: rel L2 {rel:.3e} > {FP32_REL_L2}"
        );
        // The independent numpy interpreter (verify.py) measured the same
        // program: the two fp32 interpreters agree to within 1% of the error.
        if let Some(o) = oracle_rel_l2(pkg, "fp32") {
            assert!(
                (rel - o).abs() <= 0.01 * o,
                "{pkg}: rel L2 {rel:.4e}, verify.py measured {o:.4e}"
            );
        }
    }
}

#[test]
fn round_fp16_emulates_fp16_storage() {
    let dir = tempdir();
    let (pkg, cal) = PAIRS[0];
    let out = dir.path().join("fp16.safetensors");
    run_model(&fixture(pkg), &calib(cal), &out, &["--round-fp16"]);
    let (_, got) = read_tensor(&out, "noise_pred").unwrap();
    let (_, want) = read_tensor(&calib(cal), "noise_pred").unwrap();
    let (rel, snr) = rel_l2(&got, &want);
    eprintln!("{pkg} --round-fp16: rel L2 {rel:.3e} ({snr:.2} dB)");
    assert!(rel <= FP16_REL_L2, "rel L2 {rel:.3e}");
    // Rounding must cost accuracy compared with fp32 compute (1.48e-3), and
    // land near verify.py's fp16-rounded run (3.02e-3).
    let o = oracle_rel_l2(pkg, "fp16_rounded_ops").unwrap_or(3.02e-3);
    assert!(
        rel > 2e-3 && (rel - o).abs() <= 0.25 * o,
        "rel L2 {rel:.3e} vs verify.py {o:.3e}"
    );
}

#[test]
fn output_does_not_depend_on_threads_and_samples_prefix() {
    let dir = tempdir();
    let (pkg, cal) = ("tiny-sdxl-unet", "calib-tiny-sdxl");
    let a = dir.path().join("t1.safetensors");
    let b = dir.path().join("t2.safetensors");
    let c = dir.path().join("s3.safetensors");
    run_model(&fixture(pkg), &calib(cal), &a, &["--threads", "1"]);
    run_model(&fixture(pkg), &calib(cal), &b, &["--threads", "2"]);
    run_model(
        &fixture(pkg),
        &calib(cal),
        &c,
        &["--samples", "3", "--threads", "2"],
    );
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        "--threads 1 and 2 must write identical bytes"
    );
    let (sa, va) = read_tensor(&a, "noise_pred").unwrap();
    let (sc, vc) = read_tensor(&c, "noise_pred").unwrap();
    assert_eq!(sa[0], 8);
    assert_eq!(sc, [3, 1, 4, 16, 16]);
    assert_eq!(vc, va[..vc.len()], "--samples 3 = the first 3 samples");
    assert!(staging_leftovers(dir.path()).is_empty());
}

// ----- eval -----------------------------------------------------------------------------

fn eval_json(
    reference: &str,
    compressed: &str,
    cal: &str,
    extra: &[&str],
) -> (Value, std::process::Output) {
    let mut args: Vec<std::ffi::OsString> = vec![
        "eval".into(),
        fixture(reference).into(),
        fixture(compressed).into(),
        "--inputs".into(),
        calib(cal).into(),
        "--json".into(),
        "--quiet".into(),
    ];
    args.extend(extra.iter().map(Into::into));
    let o = sdc(&args);
    let v = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("eval printed invalid JSON ({e}):\n{}", show(&o)));
    (v, o)
}

fn num(v: &Value) -> f64 {
    match v {
        Value::String(s) if s == "Infinity" => f64::INFINITY,
        Value::String(s) if s == "-Infinity" => f64::NEG_INFINITY,
        v => v.as_f64().unwrap_or_else(|| panic!("not a number: {v}")),
    }
}

#[test]
fn eval_of_a_model_against_itself_is_exact() {
    let (v, o) = eval_json("tiny-sd-unet", "tiny-sd-unet", "calib-tiny-sd", &[]);
    assert_success(&o, "eval self");
    assert_eq!(v["schema"], "sdcompress.eval/1");
    assert_eq!(v["samples"], 8);
    let out = &v["outputs"][0];
    assert_eq!(out["name"], "noise_pred");
    for k in ["mean", "worst", "all"] {
        assert_eq!(out[k]["psnr_db"], "Infinity", "{k}: {out}");
        assert_eq!(out[k]["exact"], true, "{k}");
        assert_eq!(num(&out[k]["rel_l2"]), 0.0);
        assert_eq!(num(&out[k]["max_abs_err"]), 0.0);
    }
    assert_eq!(out["per_sample"].as_array().unwrap().len(), 8);
    // The human table says inf as well.
    let o = sdc([
        "eval".as_ref(),
        fixture("tiny-sd-unet-ios18").as_os_str(),
        fixture("tiny-sd-unet-ios18").as_os_str(),
        "--inputs".as_ref(),
        calib("calib-tiny-sd").as_os_str(),
        "--samples".as_ref(),
        "2".as_ref(),
    ]);
    assert_success(&o, "eval human");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("mean") && l.contains("inf")),
        "{text}"
    );
}

#[test]
fn eval_psnr_falls_with_palettization_bits() {
    let mut psnr = Vec::new();
    // Output SNRs that verify.py measured for these variants (fixtures
    // README): 19.87, 19.11 and 7.34 dB.
    for (variant, oracle_snr) in [
        ("p8-uniform", 19.87),
        ("p6-tensor", 19.11),
        ("p4-tensor", 7.34),
    ] {
        let (v, o) = eval_json(
            "tiny-sd-unet",
            &format!("tiny-sd-unet.{variant}"),
            "calib-tiny-sd",
            &[],
        );
        assert_success(&o, variant);
        let out = &v["outputs"][0];
        let p = num(&out["mean"]["psnr_db"]);
        let rel = num(&out["all"]["rel_l2"]);
        eprintln!("{variant}: mean PSNR {p:.2} dB, rel L2 {rel:.4}");
        assert!(p.is_finite() && p > 0.0, "{variant}: {p}");
        assert_eq!(out["mean"]["exact"], false);
        assert!(num(&out["worst"]["psnr_db"]) <= p);
        let snr = -20.0 * rel.log10();
        assert!(
            (snr - oracle_snr).abs() < 0.1,
            "{variant}: output SNR {snr:.2} dB, verify.py {oracle_snr}"
        );
        psnr.push(p);
    }
    assert!(
        psnr[0] > psnr[1] && psnr[1] > psnr[2],
        "PSNR must fall with nbits: {psnr:?}"
    );
}

#[test]
fn eval_min_psnr_gate_exits_1() {
    let (v, o) = eval_json(
        "tiny-sd-unet",
        "tiny-sd-unet.p4-tensor",
        "calib-tiny-sd",
        &["--min-psnr", "35", "--samples", "2"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert_eq!(v["passed"], false);
    assert_eq!(v["min_psnr_db"], 35.0);
    let (v, o) = eval_json(
        "tiny-sd-unet",
        "tiny-sd-unet.p8-uniform",
        "calib-tiny-sd",
        &["--min-psnr", "20", "--samples", "2"],
    );
    assert_success(&o, "gate passes");
    assert_eq!(v["passed"], true);
}

// ----- bad inputs -----------------------------------------------------------------------

/// A calibration file with the given f32 tensors.
fn write_calib(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
    let map: BTreeMap<String, (Vec<usize>, Vec<f32>)> = tensors
        .iter()
        .map(|(k, s, v)| (k.to_string(), (s.clone(), v.clone())))
        .collect();
    write_safetensors(path, true, &map, &BTreeMap::new()).unwrap();
}

/// The tiny-sd calibration inputs, optionally changed.
fn sd_inputs() -> Vec<(&'static str, Vec<usize>, Vec<f32>)> {
    ["sample", "timestep", "encoder_hidden_states"]
        .into_iter()
        .map(|k| {
            let (s, v) = read_tensor(&calib("calib-tiny-sd"), k).unwrap();
            (k, s, v)
        })
        .collect()
}

/// `run` on tiny-sd-unet with calibration file `cal` fails naming `file`
/// and saying `keyword`, and writes nothing.
fn run_fails(pkg: &Path, cal: &Path, file: &str, keyword: &str, extra: &[&str]) -> String {
    let dir = cal.parent().unwrap();
    let out = dir.join("out.safetensors");
    let mut args: Vec<std::ffi::OsString> = vec![
        "run".into(),
        pkg.into(),
        "--inputs".into(),
        cal.into(),
        "-o".into(),
        out.clone().into(),
    ];
    args.extend(extra.iter().map(Into::into));
    let line = assert_error(&sdc(&args), file, keyword);
    assert!(!out.exists(), "a failed run wrote {}", out.display());
    assert!(
        staging_leftovers(dir).is_empty(),
        "staging files left in {}",
        dir.display()
    );
    line
}

#[test]
fn unsupported_op_is_named_with_its_output_and_position() {
    let dir = tempdir();
    let pkg = copy_fixture("tiny-sd-unet", dir.path());
    let mut renamed = String::new();
    edit_model(&pkg, |m| {
        let op = main_ops_mut(m)
            .iter_mut()
            .find(|o| o.r#type == "silu")
            .expect("a silu op");
        op.r#type = "hard_swish_v9".into();
        renamed = op.outputs[0].name.clone();
    });
    let cal = dir.path().join("calib.safetensors");
    std::fs::copy(calib("calib-tiny-sd"), &cal).unwrap();
    let line = run_fails(
        &pkg,
        &cal,
        "model.mlmodel",
        "unsupported op 'hard_swish_v9'",
        &[],
    );
    assert!(line.contains(&renamed), "{line}");
    assert!(line.contains("op #"), "{line}");
    // eval stops the same way.
    let o = sdc([
        "eval".as_ref(),
        fixture("tiny-sd-unet").as_os_str(),
        pkg.as_os_str(),
        "--inputs".as_ref(),
        cal.as_os_str(),
    ]);
    assert_error(&o, "model.mlmodel", "unsupported op 'hard_swish_v9'");
}

#[test]
fn missing_key_wrong_shape_wrong_dtype_are_clear_errors() {
    let dir = tempdir();
    let pkg = fixture("tiny-sd-unet");
    let cal = dir.path().join("bad.safetensors");

    let mut t = sd_inputs();
    t.remove(2);
    write_calib(&cal, &t);
    run_fails(
        &pkg,
        &cal,
        "bad.safetensors",
        "missing key 'encoder_hidden_states'",
        &[],
    );

    let mut t = sd_inputs();
    t[0].1 = vec![8, 1, 4, 32, 8]; // same element count, wrong shape
    write_calib(&cal, &t);
    let line = run_fails(
        &pkg,
        &cal,
        "bad.safetensors",
        "key 'sample' has shape [8, 1, 4, 32, 8]",
        &[],
    );
    assert!(line.contains("[N,1,4,16,16]"), "{line}");

    // No sample axis.
    let mut t = sd_inputs();
    t[1].1 = vec![8];
    t[1].2.truncate(8);
    write_calib(&cal, &t);
    run_fails(
        &pkg,
        &cal,
        "bad.safetensors",
        "key 'timestep' has shape [8]",
        &[],
    );

    // Sample counts that disagree.
    let mut t = sd_inputs();
    t[1].1 = vec![7, 1];
    t[1].2.truncate(7);
    write_calib(&cal, &t);
    run_fails(&pkg, &cal, "bad.safetensors", "holds 7 samples", &[]);

    // Integer data for a float input.
    let t = sd_inputs();
    let ints: Vec<u8> = t[0]
        .2
        .iter()
        .flat_map(|&v| (v as i64).to_le_bytes())
        .collect();
    let mut views = vec![(
        "sample".to_string(),
        safetensors::tensor::TensorView::new(safetensors::Dtype::I64, t[0].1.clone(), &ints)
            .unwrap(),
    )];
    let bytes: Vec<Vec<u8>> = t[1..]
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    for ((k, s, _), b) in t[1..].iter().zip(&bytes) {
        views.push((
            k.to_string(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap(),
        ));
    }
    std::fs::write(&cal, safetensors::tensor::serialize(views, None).unwrap()).unwrap();
    run_fails(
        &pkg,
        &cal,
        "bad.safetensors",
        "key 'sample' holds I64 data",
        &[],
    );

    // Not a safetensors file at all, and a file that does not exist.
    std::fs::write(&cal, b"this is not a safetensors file").unwrap();
    run_fails(
        &pkg,
        &cal,
        "bad.safetensors",
        "not a valid safetensors file",
        &[],
    );
    let gone = dir.path().join("gone.safetensors");
    let o = sdc([
        "run".as_ref(),
        pkg.as_os_str(),
        "--inputs".as_ref(),
        gone.as_os_str(),
        "-o".as_ref(),
        dir.path().join("o.safetensors").as_os_str(),
    ]);
    assert_error(&o, "gone.safetensors", "No such file");

    // More samples than the file holds.
    write_calib(&cal, &sd_inputs());
    run_fails(
        &pkg,
        &cal,
        "bad.safetensors",
        "--samples 9",
        &["--samples", "9"],
    );
}

#[test]
fn output_is_never_clobbered_without_force() {
    let dir = tempdir();
    let pkg = fixture("tiny-sd-unet");
    let out = dir.path().join("out.safetensors");
    std::fs::write(&out, b"precious").unwrap();
    let args = |force: bool| {
        let mut a: Vec<std::ffi::OsString> = vec![
            "run".into(),
            pkg.clone().into(),
            "--inputs".into(),
            calib("calib-tiny-sd").into(),
            "-o".into(),
            out.clone().into(),
            "--samples".into(),
            "1".into(),
            "--quiet".into(),
        ];
        if force {
            a.push("--force".into());
        }
        a
    };
    assert_error(&sdc(args(false)), "out.safetensors", "already exists");
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    assert_success(&sdc(args(true)), "run --force");
    assert_eq!(
        read_tensor(&out, "noise_pred").unwrap().0,
        [1, 1, 4, 16, 16]
    );
    // The calibration file itself is never an output.
    let cal = dir.path().join("calib.safetensors");
    std::fs::copy(calib("calib-tiny-sd"), &cal).unwrap();
    let o = sdc([
        "run".as_ref(),
        pkg.as_os_str(),
        "--inputs".as_ref(),
        cal.as_os_str(),
        "-o".as_ref(),
        cal.as_os_str(),
        "--force".as_ref(),
    ]);
    assert_error(&o, "calib.safetensors", "--inputs file");
    assert_eq!(
        std::fs::read(&cal).unwrap(),
        std::fs::read(calib("calib-tiny-sd")).unwrap()
    );
}

// ----- library: hooks, weight swaps, liveness -------------------------------------------

fn load(pkg: &str) -> Interpreter {
    let p = Package::open(&fixture(pkg)).unwrap();
    Interpreter::load(&p, Options::default()).unwrap()
}

/// What a hook saw for one op.
#[derive(Debug)]
struct Seen {
    name: String,
    op_type: String,
    weight: String,
    weight_shape: Vec<usize>,
    kind: WeightKind,
    input: Tensor,
}

#[derive(Default)]
struct Recorder(Vec<Seen>);

impl Hook for Recorder {
    fn before_weight_op(&mut self, op: &WeightOp<'_>, input: &Tensor) -> Result<(), String> {
        self.0.push(Seen {
            name: op.name.to_string(),
            op_type: op.op_type.to_string(),
            weight: op.weight.to_string(),
            weight_shape: op.weight_shape.to_vec(),
            kind: op.kind.clone(),
            input: input.clone(),
        });
        Ok(())
    }
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(CD::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn hook_sees_every_weight_op_with_consistent_shapes() {
    let it = load("tiny-sd-unet");
    let cal = CalibSet::open(&calib("calib-tiny-sd"), it.inputs(), Some(1)).unwrap();
    let x = cal.sample(0).unwrap();
    let mut rec = Recorder::default();
    let with_hook = it.run(&x, Some(&mut rec)).unwrap();
    let without = it.run(&x, None).unwrap();
    assert_eq!(
        flat(&with_hook[0]),
        flat(&without[0]),
        "a hook must not change the result"
    );
    // Every conv and linear (33 + 50) has a const weight; the iOS17
    // attention matmuls multiply two activations and are not hooked.
    let hist = info_json(&fixture("tiny-sd-unet"))["functions"][0]["op_types"].clone();
    let n_conv = hist["conv"].as_u64().unwrap() as usize;
    let n_linear = hist["linear"].as_u64().unwrap() as usize;
    assert_eq!(rec.0.len(), n_conv + n_linear);
    assert_eq!(rec.0.iter().filter(|s| s.op_type == "conv").count(), n_conv);
    let listed = it.weight_ops();
    assert_eq!(listed.len(), rec.0.len());
    for (s, l) in rec.0.iter().zip(&listed) {
        assert_eq!(
            (&s.name, &s.weight, &s.weight_shape),
            (&l.name, &l.weight, &l.shape)
        );
        assert_eq!(
            it.weight(&s.weight).unwrap().dims(),
            s.weight_shape.as_slice()
        );
        let d = s.input.dims();
        match &s.kind {
            WeightKind::Conv(g) => {
                assert_eq!(s.op_type, "conv");
                assert_eq!(d.len(), 4, "{}", s.name);
                assert_eq!(
                    d[1],
                    s.weight_shape[1] * g.groups,
                    "{}: input channels",
                    s.name
                );
                assert_eq!(g.strides.len(), 2);
            }
            WeightKind::Linear => assert_eq!(*d.last().unwrap(), s.weight_shape[1], "{}", s.name),
            WeightKind::Matmul { .. } => panic!("no const matmul in this fixture"),
        }
    }
    // The down-sampling conv: stride 2, one pixel of padding.
    let down = rec
        .0
        .iter()
        .find(|s| matches!(&s.kind, WeightKind::Conv(g) if g.strides == [2, 2]))
        .expect("a stride-2 conv");
    assert!(matches!(&down.kind, WeightKind::Conv(g) if g.pads == [(1, 1), (1, 1)]));
    // conv_in reads the model input `sample`, rounded to fp16.
    let conv_in = rec
        .0
        .iter()
        .find(|s| s.weight.contains("conv_in"))
        .expect("conv_in");
    let want: Vec<f32> = flat(&x[0])
        .iter()
        .map(|&v| half::f16::from_f32(v).to_f32())
        .collect();
    assert_eq!(flat(&conv_in.input), want);
}

#[test]
fn swapping_a_weight_changes_the_output_as_expected() {
    let mut it = load("tiny-sd-unet-ios18");
    let cal = CalibSet::open(&calib("calib-tiny-sd"), it.inputs(), Some(2)).unwrap();
    let x = cal.sample(1).unwrap();
    let base = flat(&it.run(&x, None).unwrap()[0]);
    // The last weight op is conv_out, whose output is the model output.
    let last = it.weight_ops().pop().unwrap();
    assert!(last.weight.contains("conv_out"), "{}", last.weight);
    let w = it.weight(&last.weight).unwrap();
    let shape = w.dims().to_vec();
    let n: usize = shape.iter().product();
    let to_mil = |v: Vec<f32>| mil::Tensor {
        dtype: mil::DType::Fp32,
        shape: shape.clone(),
        data: mil::Data::F32(v),
    };
    // Zero weight: the output is conv_out's bias, per channel.
    it.set_weight(&last.weight, &to_mil(vec![0.0; n])).unwrap();
    let zero = flat(&it.run(&x, None).unwrap()[0]);
    let bias_name = last.weight.replace("weight", "bias");
    let bias = flat(
        &it.weight(&bias_name)
            .unwrap_or_else(|| panic!("no {bias_name}")),
    );
    let plane = zero.len() / bias.len();
    for (i, &v) in zero.iter().enumerate() {
        assert_eq!(v, bias[i / plane], "element {i}");
    }
    // Doubled weight: the part above the bias doubles.
    let w2: Vec<f32> = flat(&w).iter().map(|v| v * 2.0).collect();
    it.set_weight(&last.weight, &to_mil(w2)).unwrap();
    let twice = flat(&it.run(&x, None).unwrap()[0]);
    for i in 0..twice.len() {
        let b = bias[i / plane];
        let (want, got) = (2.0 * (base[i] - b), twice[i] - b);
        assert!(
            (want - got).abs() <= 1e-5 * (1.0 + want.abs()),
            "element {i}: {got} vs {want}"
        );
    }
    // Putting the original back restores the output bit for bit.
    it.set_weight(&last.weight, &to_mil(flat(&w))).unwrap();
    assert_eq!(flat(&it.run(&x, None).unwrap()[0]), base);
    // Misuse is refused.
    assert!(it
        .set_weight("no_such_weight", &to_mil(vec![0.0; n]))
        .is_err());
    let bad = mil::Tensor {
        dtype: mil::DType::Fp32,
        shape: vec![n],
        data: mil::Data::F32(vec![0.0; n]),
    };
    let e = it.set_weight(&last.weight, &bad).unwrap_err().to_string();
    assert!(e.contains("shape"), "{e}");
}

struct Failing;

impl Hook for Failing {
    fn before_weight_op(&mut self, op: &WeightOp<'_>, _: &Tensor) -> Result<(), String> {
        Err(format!("refusing {}", op.weight))
    }
}

#[test]
fn a_failing_hook_stops_the_run_at_its_op() {
    let it = load("tiny-sdxl-unet");
    let cal = CalibSet::open(&calib("calib-tiny-sdxl"), it.inputs(), Some(1)).unwrap();
    let e = it
        .run(&cal.sample(0).unwrap(), Some(&mut Failing))
        .unwrap_err()
        .to_string();
    let first = &it.weight_ops()[0];
    assert!(
        e.contains("hook: refusing") && e.contains(&first.weight),
        "{e}"
    );
    assert!(e.contains(&format!("op #{}", first.position)), "{e}");
}

#[test]
fn liveness_keeps_few_values_alive() {
    for (pkg, _) in PAIRS {
        let it = load(pkg);
        let peak = it.peak_live_values();
        eprintln!(
            "{pkg}: {} ops per pass, at most {peak} values alive",
            it.step_count()
        );
        // A UNet keeps its skip connections (a handful per resolution) plus
        // the values in flight; never a sizeable part of the program.
        assert!(
            peak * 10 < it.step_count(),
            "{pkg}: {peak} live of {}",
            it.step_count()
        );
    }
}

#[test]
fn inputs_are_checked_by_the_library_too() {
    let it = load("tiny-sd-unet");
    let bad = vec![Tensor::zeros((1, 4, 16, 15), CD::F32, &Device::Cpu).unwrap()];
    assert!(it
        .run(&bad, None)
        .unwrap_err()
        .to_string()
        .contains("inputs given"));
    let mut x = CalibSet::open(&calib("calib-tiny-sd"), it.inputs(), Some(1))
        .unwrap()
        .sample(0)
        .unwrap();
    x[0] = Tensor::zeros((1, 4, 16, 15), CD::F32, &Device::Cpu).unwrap();
    let e = it.run(&x, None).unwrap_err().to_string();
    assert!(
        e.contains("input 'sample' has shape [1, 4, 16, 15]") && e.contains("[1,4,16,16]"),
        "{e}"
    );
}

#[test]
fn every_compressed_fixture_runs_and_matches_verify_py() {
    // Every constexpr form coremltools writes (iOS16 and iOS18 LUTs,
    // grouped LUTs, sparse, joint sparse+LUT, affine and blockwise int8) is
    // materialised on load; the output error against the base program must
    // agree with what verify.py's numpy interpreter measured (fixtures.json).
    let j: Value =
        serde_json::from_slice(&std::fs::read(repo_root().join("fixtures/fixtures.json")).unwrap())
            .unwrap();
    let mut base_out: BTreeMap<String, Vec<Vec<f32>>> = BTreeMap::new();
    let mut checked = 0;
    for f in j["fixtures"].as_array().unwrap() {
        if f["kind"] != "compressed" {
            continue;
        }
        let file = f["file"].as_str().unwrap();
        let name = file.trim_end_matches(".mlpackage");
        let base = f["verify"]["reference"]
            .as_str()
            .unwrap()
            .trim_end_matches(".mlpackage");
        let want = f["verify"]["model_output_vs_reference_program"]["rel_l2"]
            .as_f64()
            .unwrap();
        let it = load(name);
        let cal = CalibSet::open(&calib("calib-tiny-sd"), it.inputs(), None).unwrap();
        let refs = base_out.entry(base.to_string()).or_insert_with(|| {
            let b = load(base);
            (0..cal.samples())
                .map(|i| flat(&b.run(&cal.sample(i).unwrap(), None).unwrap()[0]))
                .collect()
        });
        let (mut e, mut r) = (0f64, 0f64);
        for (i, want_i) in refs.iter().enumerate() {
            let got = flat(&it.run(&cal.sample(i).unwrap(), None).unwrap()[0]);
            for (&g, &w) in got.iter().zip(want_i) {
                assert!(g.is_finite(), "{name}: non-finite output");
                e += (f64::from(g) - f64::from(w)).powi(2);
                r += f64::from(w).powi(2);
            }
        }
        let rel = (e / r).sqrt();
        eprintln!("{name}: rel L2 vs {base} {rel:.5} (verify.py {want:.5})");
        assert!(
            (rel - want).abs() <= 0.005 * want,
            "{name}: rel L2 {rel:.5}, verify.py {want:.5}"
        );
        checked += 1;
    }
    assert_eq!(checked, 11, "compressed fixtures in fixtures.json");
}
