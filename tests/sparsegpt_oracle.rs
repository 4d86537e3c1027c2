//! The SparseGPT kernel against the shared numpy oracle
//! (`../shared/oracle/sparsegpt_ref.py check`): random layers from the
//! oracle's own generator, odd shapes, n:m, the exact mask rule, dead
//! inputs, a grouped strided dilated padded conv, and real conv and linear
//! weights of the `tiny-sd-unet` fixture with realistic random activations.
//! Each case writes the layer file, prunes it in-process with the library
//! (`sparsegpt::layerfile::run_layer`, what the `sparsegpt_layer` example
//! runs), writes the candidate, and requires the oracle's verdict: at least
//! 99 % mask agreement, exact per-block zero counts, reconstruction error
//! and reported loss within 0.5 %.
//!
//! Skips with a message when `../shared/oracle` or a Python with numpy
//! (the interop venv) is absent.

mod common;

use sdcompress::mil::constexpr::Evaluator;
use sdcompress::mil::program::{param, FunctionIndex, Param};
use sdcompress::mil::value::decode_value;
use sdcompress::package::Package;
use sdcompress::sparsegpt::layerfile::{run_layer, write, LayerFile, LayerJob, OutTensor};
use sdcompress::sparsegpt::{ConvGeometry, MaskRule, Pattern, PruneParams};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Python and `sparsegpt_ref.py`, or None after saying why.
fn oracle() -> Option<(PathBuf, PathBuf)> {
    let verify = common::oracle()?;
    let sref = verify.with_file_name("sparsegpt_ref.py");
    if !sref.is_file() {
        eprintln!("skipped: {} not present", sref.display());
        return None;
    }
    Some((common::python()?, sref))
}

/// SplitMix64 + Box–Muller: seeded test activations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn normal(&mut self) -> f64 {
        let u = ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let v = ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// Realistic conv activations `[n, ch, h, w]`: smooth low-rank fields
/// mixed into the channels, per-channel scales, a few outlier channels,
/// then SiLU (the input of a resnet conv is GroupNorm + SiLU).
fn activations(seed: u64, n: usize, ch: usize, h: usize, w: usize) -> Vec<f32> {
    let mut rng = Rng(seed);
    let rank = 16.min(ch);
    let mix: Vec<f64> = (0..ch * rank)
        .map(|_| rng.normal() / (rank as f64).sqrt())
        .collect();
    let scale: Vec<f64> = (0..ch)
        .map(|c| (0.5 * rng.normal()).exp() * if c % 37 == 5 { 10.0 } else { 1.0 })
        .collect();
    let mut x = vec![0.0f32; n * ch * h * w];
    for img in 0..n {
        // Coarse fields upsampled ×4 (nearest), plus fine noise.
        let (ch4, cw4) = (h.div_ceil(4), w.div_ceil(4));
        let coarse: Vec<f64> = (0..rank * ch4 * cw4).map(|_| rng.normal()).collect();
        for c in 0..ch {
            for i in 0..h {
                for j in 0..w {
                    let f: f64 = (0..rank)
                        .map(|q| mix[c * rank + q] * coarse[(q * ch4 + i / 4) * cw4 + j / 4])
                        .sum();
                    let v = (f + 0.3 * rng.normal()) * scale[c];
                    x[((img * ch + c) * h + i) * w + j] = (v / (1.0 + (-v).exp())) as f32;
                }
            }
        }
    }
    x
}

/// Prunes `layer` with `flags` (the oracle's flags), writes the candidate
/// and runs `sparsegpt_ref.py check` with the same flags. Returns the
/// oracle's report.
fn check(py: &Path, sref: &Path, dir: &Path, layer: &Path, flags: &[&str]) -> String {
    let mut params = PruneParams::unstructured(0.5);
    let mut conv = ConvGeometry::new([1, 1]);
    let mut rule = MaskRule::Reference;
    let mut sparsity = 0.5;
    let pair = |s: &str| -> [usize; 2] {
        let v: Vec<usize> = s.split(',').map(|t| t.parse().unwrap()).collect();
        if v.len() == 1 {
            [v[0], v[0]]
        } else {
            [v[0], v[1]]
        }
    };
    for f in flags.chunks(2) {
        match f[0] {
            "--sparsity" => sparsity = f[1].parse().unwrap(),
            "--nm" => {
                let (n, m) = f[1].split_once(':').unwrap();
                params.pattern = Pattern::NOfM {
                    n: n.parse().unwrap(),
                    m: m.parse().unwrap(),
                };
            }
            "--blocksize" => params.sweep_block = f[1].parse().unwrap(),
            "--percdamp" => params.percdamp = f[1].parse().unwrap(),
            "--mask-rule" => {
                rule = match f[1] {
                    "exact" => MaskRule::Exact,
                    _ => MaskRule::Reference,
                }
            }
            "--stride" => conv.stride = pair(f[1]),
            "--dilation" => conv.dilation = pair(f[1]),
            "--groups" => conv.groups = f[1].parse().unwrap(),
            "--padding" => {
                let v: Vec<usize> = f[1].split(',').map(|t| t.parse().unwrap()).collect();
                conv.padding = match v.as_slice() {
                    [p] => [*p; 4],
                    [ph, pw] => [*ph, *ph, *pw, *pw],
                    [t, b, l, r] => [*t, *b, *l, *r],
                    _ => panic!("bad --padding"),
                };
            }
            other => panic!("flag {other} not handled by the test"),
        }
    }
    if let Pattern::Unstructured { .. } = params.pattern {
        params.pattern = Pattern::Unstructured { sparsity, rule };
    }
    let job = LayerJob {
        params,
        conv,
        nsamples: None,
        precision: Default::default(),
        dump_hessian: None,
    };
    let r = run_layer(&LayerFile::open(layer).unwrap(), &job)
        .unwrap_or_else(|e| panic!("{}: {e}", layer.display()));
    let cand = dir.join("candidate.safetensors");
    write(
        &cand,
        &[
            ("W", r.shape.clone(), OutTensor::F32(&r.weights)),
            ("mask", r.shape.clone(), OutTensor::U8(&r.mask)),
        ],
    )
    .unwrap();
    let loss = format!("{:e}", r.loss);
    let out = Command::new(py)
        .arg(sref)
        .arg("check")
        .arg(layer)
        .arg(&cand)
        .args(flags)
        .args(["--cand-loss", &loss])
        .output()
        .expect("run sparsegpt_ref.py");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("CHECK OK"),
        "oracle check failed for {} {flags:?}:\n{text}",
        layer.display()
    );
    // Every check line passed; log the figures.
    let name = layer.file_name().unwrap().to_string_lossy();
    for l in text.lines().filter(|l| {
        l.contains("agreement") || l.contains("rel_error") || l.contains("reported loss")
    }) {
        eprintln!("{name} {flags:?}: {l}");
    }
    text
}

fn gen(py: &Path, sref: &Path, out: &Path, rows: usize, cols: usize, n: usize, seed: u64) {
    let st = Command::new(py)
        .arg(sref)
        .args(["gen", out.to_str().unwrap()])
        .args(["--rows", &rows.to_string(), "--cols", &cols.to_string()])
        .args(["--n", &n.to_string(), "--seed", &seed.to_string()])
        .output()
        .expect("run sparsegpt_ref.py gen");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
}

#[test]
fn random_layers_agree_with_the_oracle() {
    let Some((py, sref)) = oracle() else { return };
    let dir = common::tempdir();
    let a = dir.path().join("a.safetensors");
    gen(&py, &sref, &a, 256, 512, 4096, 1);
    let text = check(&py, &sref, dir.path(), &a, &["--sparsity", "0.5"]);
    // f64 everywhere on both sides: the masks are identical.
    assert!(
        text.contains("(1.000000)"),
        "expected full agreement:\n{text}"
    );
    check(&py, &sref, dir.path(), &a, &["--nm", "2:4"]);
    check(
        &py,
        &sref,
        dir.path(),
        &a,
        &["--nm", "4:8", "--blocksize", "64"],
    );

    // Odd shapes: the block size does not divide the columns.
    let b = dir.path().join("b.safetensors");
    gen(&py, &sref, &b, 96, 200, 1500, 2);
    check(
        &py,
        &sref,
        dir.path(),
        &b,
        &["--sparsity", "0.7", "--blocksize", "64"],
    );
    check(
        &py,
        &sref,
        dir.path(),
        &b,
        &[
            "--sparsity",
            "0.4",
            "--mask-rule",
            "exact",
            "--percdamp",
            "0.1",
        ],
    );
}

#[test]
fn dead_inputs_agree_with_the_oracle() {
    let Some((py, sref)) = oracle() else { return };
    let dir = common::tempdir();
    let g = dir.path().join("g.safetensors");
    gen(&py, &sref, &g, 64, 256, 2000, 3);
    let f = LayerFile::open(&g).unwrap();
    let (w, mut x) = (f.read_f32("W").unwrap(), f.read_f32("X").unwrap());
    let cols = x.shape[1];
    for row in x.data.chunks_mut(cols) {
        for &j in &[0, 7, 128, 255] {
            row[j] = 0.0;
        }
    }
    let d = dir.path().join("dead.safetensors");
    write(
        &d,
        &[
            ("W", w.shape.clone(), OutTensor::F32(&w.data)),
            ("X", x.shape.clone(), OutTensor::F32(&x.data)),
        ],
    )
    .unwrap();
    check(
        &py,
        &sref,
        dir.path(),
        &d,
        &["--sparsity", "0.5", "--percdamp", "0.05"],
    );
    check(&py, &sref, dir.path(), &d, &["--nm", "2:4"]);
}

#[test]
fn grouped_strided_dilated_conv_agrees_with_the_oracle() {
    let Some((py, sref)) = oracle() else { return };
    let dir = common::tempdir();
    let mut rng = Rng(9);
    // [Cout 8, Cin/g 3, 3, 3] with 2 groups over a [3, 6, 11, 10] input.
    let w: Vec<f32> = (0..8 * 3 * 3 * 3)
        .map(|_| rng.normal() as f32 * 0.2)
        .collect();
    let x = activations(4, 3, 6, 11, 10);
    let f = dir.path().join("conv.safetensors");
    write(
        &f,
        &[
            ("W", vec![8, 3, 3, 3], OutTensor::F32(&w)),
            ("X", vec![3, 6, 11, 10], OutTensor::F32(&x)),
        ],
    )
    .unwrap();
    let geom = [
        "--groups",
        "2",
        "--stride",
        "2,1",
        "--padding",
        "1,0,1,2",
        "--dilation",
        "1,2",
    ];
    for extra in [
        &["--sparsity", "0.5", "--blocksize", "8"][..],
        &["--nm", "1:3", "--blocksize", "9"],
    ] {
        let flags: Vec<&str> = geom.iter().chain(extra).copied().collect();
        check(&py, &sref, dir.path(), &f, &flags);
    }
}

/// A weight of the fixture as f32, and the op that reads it.
struct FixtureWeight {
    shape: Vec<usize>,
    data: Vec<f32>,
    /// Conv geometry from the op's parameters (None for linear).
    conv: Option<ConvGeometry>,
}

/// A compile-time parameter of `op`.
fn value_of(
    pkg: &Package,
    index: &FunctionIndex<'_>,
    op: &sdcompress::proto::mil::Operation,
    p: &str,
) -> Option<sdcompress::mil::Tensor> {
    Some(match param(op, p).unwrap()? {
        Param::Name(n) => Evaluator::new(index, &pkg.blobs).value(n, "test").unwrap(),
        Param::Value(v) => decode_value(v, &pkg.blobs, "test").unwrap(),
    })
}

fn fixture_weight(pkg: &Package, name: &str) -> FixtureWeight {
    let prog = pkg.program();
    let (fname, func) = prog.functions.iter().next().expect("a function");
    let index = FunctionIndex::new(fname, func).unwrap();
    let mut ev = Evaluator::new(&index, &pkg.blobs);
    let t = ev.value(name, "test").unwrap();
    let (_, op) = index
        .ops
        .iter()
        .find(|(_, op)| matches!(param(op, "weight"), Ok(Some(Param::Name(n))) if n == name))
        .unwrap_or_else(|| panic!("no op reads {name}"));
    let ints = |p: &str| value_of(pkg, &index, op, p).and_then(|t| t.to_i64());
    let conv = (op.r#type == "conv").then(|| {
        let u = |v: Vec<i64>| v.into_iter().map(|x| x as usize).collect::<Vec<_>>();
        let strides = u(ints("strides").unwrap_or(vec![1, 1]));
        let dil = u(ints("dilations").unwrap_or(vec![1, 1]));
        let groups = ints("groups").map_or(1, |g| g[0] as usize);
        let pad = u(ints("pad").unwrap_or(vec![0; 4]));
        let pad_type = value_of(pkg, &index, op, "pad_type").expect("conv has pad_type");
        let padding = match pad_type.as_str().unwrap() {
            b"custom" => [pad[0], pad[1], pad[2], pad[3]],
            b"valid" => [0; 4],
            other => panic!(
                "pad_type {} not handled by the test",
                String::from_utf8_lossy(other)
            ),
        };
        ConvGeometry {
            kernel: [t.shape[2], t.shape[3]],
            stride: [strides[0], strides[1]],
            dilation: [dil[0], dil[1]],
            padding,
            groups,
        }
    });
    FixtureWeight {
        shape: t.shape.clone(),
        data: t.to_f32().unwrap(),
        conv,
    }
}

#[test]
fn real_fixture_layers_agree_with_the_oracle() {
    let Some((py, sref)) = oracle() else { return };
    let pkg = Package::open(&common::fixture("tiny-sd-unet")).unwrap();
    let dir = common::tempdir();

    // The largest conv: up_blocks.0 resnet conv1, [64, 128, 3, 3] (c = 1152).
    let cw = fixture_weight(&pkg, "unet_up_blocks_0_resnets_0_conv1_weight_to_fp16");
    let g = cw.conv.expect("a conv");
    assert_eq!(
        (cw.shape.as_slice(), g.kernel),
        (&[64usize, 128, 3, 3][..], [3, 3])
    );
    let x = activations(11, 4, 128, 12, 12);
    let f = dir.path().join("conv.safetensors");
    write(
        &f,
        &[
            ("W", cw.shape.clone(), OutTensor::F32(&cw.data)),
            ("X", vec![4, 128, 12, 12], OutTensor::F32(&x)),
        ],
    )
    .unwrap();
    let pad = format!(
        "{},{},{},{}",
        g.padding[0], g.padding[1], g.padding[2], g.padding[3]
    );
    let stride = format!("{},{}", g.stride[0], g.stride[1]);
    let dil = format!("{},{}", g.dilation[0], g.dilation[1]);
    let geom = ["--padding", &pad, "--stride", &stride, "--dilation", &dil];
    for extra in [
        &["--sparsity", "0.4"][..],
        &["--sparsity", "0.5"],
        &["--nm", "2:4"],
    ] {
        let flags: Vec<&str> = geom.iter().chain(extra).copied().collect();
        check(&py, &sref, dir.path(), &f, &flags);
    }

    // A linear: the time embedding's second projection, [192, 192], with
    // [8 samples, 1 token, 192] inputs through SiLU as in the model.
    let lw = fixture_weight(&pkg, "unet_time_embedding_linear_2_weight_to_fp16");
    assert!(lw.conv.is_none() && lw.shape == [192, 192]);
    let xl = activations(12, 64, 192, 1, 1);
    let f = dir.path().join("linear.safetensors");
    write(
        &f,
        &[
            ("W", lw.shape.clone(), OutTensor::F32(&lw.data)),
            ("X", vec![64, 192], OutTensor::F32(&xl)),
        ],
    )
    .unwrap();
    check(&py, &sref, dir.path(), &f, &["--sparsity", "0.5"]);
    check(&py, &sref, dir.path(), &f, &["--nm", "2:4"]);
}
