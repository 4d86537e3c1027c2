//! Per-op-family tests of the interpreter, through `interp::ops::run_op`
//! (the same registry and output conversion the interpreter uses).
//!
//! Expected values are hand-computed, computed by a direct (naive) reference
//! implementation in this file that shares no code with the op (convolution
//! by explicit loops, einsum/matmul by index loops, softmax and layer norm in
//! f64), or computed with numpy 2.4 and pasted (the gelu values).

use candle_core::{Device, Tensor};
use sdcompress::interp::ops::run_op;
use sdcompress::interp::Value;
use sdcompress::mil::DType;

// ----- building values ------------------------------------------------------------------

fn f(shape: &[usize], v: &[f32]) -> Value {
    Value::Tensor {
        t: Tensor::from_slice(v, shape, &Device::Cpu).unwrap(),
        dtype: DType::Fp32,
    }
}

fn fs(x: f32) -> Value {
    f(&[], &[x])
}

fn ints(v: &[i64]) -> Value {
    Value::Tensor {
        t: Tensor::from_slice(v, v.len(), &Device::Cpu).unwrap(),
        dtype: DType::Int32,
    }
}

fn int(x: i64) -> Value {
    Value::Tensor {
        t: Tensor::from_slice(&[x], (), &Device::Cpu).unwrap(),
        dtype: DType::Int32,
    }
}

fn int_t(shape: &[usize], v: &[i64]) -> Value {
    Value::Tensor {
        t: Tensor::from_slice(v, shape, &Device::Cpu).unwrap(),
        dtype: DType::Int32,
    }
}

fn boolean(x: bool) -> Value {
    Value::Tensor {
        t: Tensor::from_slice(&[u8::from(x)], (), &Device::Cpu).unwrap(),
        dtype: DType::Bool,
    }
}

fn bools(v: &[bool]) -> Value {
    let b: Vec<u8> = v.iter().map(|&x| u8::from(x)).collect();
    Value::Tensor {
        t: Tensor::from_slice(&b, b.len(), &Device::Cpu).unwrap(),
        dtype: DType::Bool,
    }
}

fn text(s: &str) -> Value {
    Value::Text(s.to_string())
}

/// Deterministic values in [-1, 1).
fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

// ----- running ops ----------------------------------------------------------------------

fn op(t: &str, params: &[(&str, Vec<Value>)]) -> Tensor {
    op_n(t, params, &[DType::Fp32]).remove(0)
}

fn op_n(t: &str, params: &[(&str, Vec<Value>)], outs: &[DType]) -> Vec<Tensor> {
    run_op(t, params, outs).unwrap_or_else(|e| panic!("{t} failed: {e}"))
}

fn op_err(t: &str, params: &[(&str, Vec<Value>)]) -> String {
    match run_op(t, params, &[DType::Fp32]) {
        Ok(v) => panic!("{t} should fail, gave {v:?}"),
        Err(e) => e.to_string(),
    }
}

fn vals(t: &Tensor) -> Vec<f32> {
    t.to_dtype(candle_core::DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn ivals(t: &Tensor) -> Vec<i64> {
    t.to_dtype(candle_core::DType::I64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[track_caller]
fn close(got: &Tensor, shape: &[usize], want: &[f32], tol: f32) {
    assert_eq!(got.dims(), shape, "shape");
    let g = vals(got);
    assert_eq!(g.len(), want.len());
    for (i, (a, b)) in g.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= tol * (1.0 + b.abs()),
            "element {i}: got {a}, want {b} (all: {g:?})"
        );
    }
}

// ----- elementwise ----------------------------------------------------------------------

#[test]
fn add_broadcasts_numpy_style() {
    // [2,1,3] + [4,1] -> [2,4,3]: out[i,j,k] = x[i,0,k] + y[j,0]
    let x: Vec<f32> = (0..6).map(|v| v as f32).collect();
    let y = [10.0, 20.0, 30.0, 40.0];
    let got = op(
        "add",
        &[("x", vec![f(&[2, 1, 3], &x)]), ("y", vec![f(&[4, 1], &y)])],
    );
    let mut want = Vec::new();
    for i in 0..2 {
        for yj in y {
            for k in 0..3 {
                want.push(x[i * 3 + k] + yj);
            }
        }
    }
    close(&got, &[2, 4, 3], &want, 0.0);
    // A scalar on the left, a row on the right.
    let got = op(
        "sub",
        &[("x", vec![fs(1.0)]), ("y", vec![f(&[3], &[1.0, 2.0, 4.0])])],
    );
    close(&got, &[3], &[0.0, -1.0, -3.0], 0.0);
    // Per-channel [1,C,1,1] against [1,C,H,W] (the merged-axes fast path).
    let x = noise(2 * 3 * 5, 1);
    let s = [2.0, -1.0, 0.5];
    let got = op(
        "mul",
        &[
            ("x", vec![f(&[2, 3, 1, 5], &x)]),
            ("y", vec![f(&[1, 3, 1, 1], &s)]),
        ],
    );
    let want: Vec<f32> = x
        .iter()
        .enumerate()
        .map(|(i, v)| v * s[(i / 5) % 3])
        .collect();
    close(&got, &[2, 3, 1, 5], &want, 0.0);
}

#[test]
fn division_power_and_modulo_follow_numpy() {
    let x = f(&[4], &[-7.0, 7.0, -2.0, 9.0]);
    let y = f(&[4], &[2.0, -3.0, 3.0, 0.5]);
    close(
        &op(
            "real_div",
            &[("x", vec![x.clone()]), ("y", vec![y.clone()])],
        ),
        &[4],
        &[-3.5, -7.0 / 3.0, -2.0 / 3.0, 18.0],
        1e-7,
    );
    // floor division rounds towards -inf; mod takes the divisor's sign.
    close(
        &op(
            "floor_div",
            &[("x", vec![x.clone()]), ("y", vec![y.clone()])],
        ),
        &[4],
        &[-4.0, -3.0, -1.0, 18.0],
        0.0,
    );
    close(
        &op("mod", &[("x", vec![x.clone()]), ("y", vec![y.clone()])]),
        &[4],
        &[1.0, -2.0, 1.0, 0.0],
        1e-6,
    );
    // A negative base with an integral exponent.
    let got = op(
        "pow",
        &[
            ("x", vec![f(&[3], &[-2.0, 4.0, 9.0])]),
            ("y", vec![f(&[3], &[3.0, 0.5, -1.0])]),
        ],
    );
    close(&got, &[3], &[-8.0, 2.0, 1.0 / 9.0], 1e-7);
    close(
        &op("maximum", &[("x", vec![x.clone()]), ("y", vec![y.clone()])]),
        &[4],
        &[2.0, 7.0, 3.0, 9.0],
        0.0,
    );
    close(
        &op("minimum", &[("x", vec![x]), ("y", vec![y])]),
        &[4],
        &[-7.0, -3.0, -2.0, 0.5],
        0.0,
    );
}

#[test]
fn integer_arithmetic_stays_exact() {
    // 2^40 + 1 is not representable in f32; shape arithmetic must not round.
    let big = (1i64 << 40) + 1;
    let got = op_n(
        "add",
        &[("x", vec![int(big)]), ("y", vec![int(2)])],
        &[DType::Int32],
    );
    assert_eq!(ivals(&got[0]), vec![big + 2]);
    let got = op_n(
        "mul",
        &[("x", vec![ints(&[3, -4])]), ("y", vec![int(5)])],
        &[DType::Int32],
    );
    assert_eq!(ivals(&got[0]), vec![15, -20]);
}

#[test]
fn comparisons_and_logic_give_bools() {
    let x = f(&[4], &[1.0, 2.0, 3.0, 4.0]);
    let y = fs(2.5);
    let b = |t: &str| {
        ivals(
            &op_n(
                t,
                &[("x", vec![x.clone()]), ("y", vec![y.clone()])],
                &[DType::Bool],
            )[0],
        )
    };
    assert_eq!(b("less"), vec![1, 1, 0, 0]);
    assert_eq!(b("greater_equal"), vec![0, 0, 1, 1]);
    assert_eq!(b("not_equal"), vec![1, 1, 1, 1]);
    let p = bools(&[true, true, false, false]);
    let q = bools(&[true, false, true, false]);
    let l = |t: &str| {
        ivals(
            &op_n(
                t,
                &[("x", vec![p.clone()]), ("y", vec![q.clone()])],
                &[DType::Bool],
            )[0],
        )
    };
    assert_eq!(l("logical_and"), vec![1, 0, 0, 0]);
    assert_eq!(l("logical_or"), vec![1, 1, 1, 0]);
    assert_eq!(l("logical_xor"), vec![0, 1, 1, 0]);
    let n = op_n("logical_not", &[("x", vec![p])], &[DType::Bool]);
    assert_eq!(ivals(&n[0]), vec![0, 0, 1, 1]);
}

#[test]
fn unary_ops_and_their_epsilons() {
    let x = f(&[3], &[0.25, 1.0, 4.0]);
    close(
        &op("sqrt", &[("x", vec![x.clone()])]),
        &[3],
        &[0.5, 1.0, 2.0],
        1e-7,
    );
    close(
        &op("square", &[("x", vec![x.clone()])]),
        &[3],
        &[0.0625, 1.0, 16.0],
        0.0,
    );
    // rsqrt adds epsilon (default 1e-12) before the root.
    close(
        &op("rsqrt", &[("x", vec![x.clone()])]),
        &[3],
        &[2.0, 1.0, 0.5],
        1e-6,
    );
    close(
        &op(
            "rsqrt",
            &[("x", vec![x.clone()]), ("epsilon", vec![fs(0.75)])],
        ),
        &[3],
        &[1.0, 1.0 / 1.75f32.sqrt(), 1.0 / 4.75f32.sqrt()],
        1e-6,
    );
    // inverse: 1/(x + 1e-4) by default.
    close(
        &op("inverse", &[("x", vec![x.clone()])]),
        &[3],
        &[1.0 / 0.2501, 1.0 / 1.0001, 1.0 / 4.0001],
        1e-6,
    );
    close(
        &op("log", &[("x", vec![x])]),
        &[3],
        &[0.25f32.ln(), 0.0, 4f32.ln()],
        1e-6,
    );
    // round: half to even, as MIL documents (0.5 -> 0).
    let r = op(
        "round",
        &[("x", vec![f(&[5], &[0.5, 1.5, 2.5, -0.5, -1.7])])],
    );
    close(&r, &[5], &[0.0, 2.0, 2.0, 0.0, -2.0], 0.0);
    let s = op("sign", &[("x", vec![f(&[3], &[-3.0, 0.0, 0.1])])]);
    close(&s, &[3], &[-1.0, 0.0, 1.0], 0.0);
    let c = op(
        "clip",
        &[
            ("x", vec![f(&[4], &[-2.0, 0.1, 0.7, 9.0])]),
            ("alpha", vec![fs(0.0)]),
            ("beta", vec![fs(0.5)]),
        ],
    );
    close(&c, &[4], &[0.0, 0.1, 0.5, 0.5], 0.0);
    close(
        &op("sin", &[("x", vec![fs(0.5)])]),
        &[],
        &[0.5f32.sin()],
        1e-7,
    );
    close(
        &op("cos", &[("x", vec![fs(0.5)])]),
        &[],
        &[0.5f32.cos()],
        1e-7,
    );
    close(
        &op("exp", &[("x", vec![fs(-1.0)])]),
        &[],
        &[(-1f32).exp()],
        1e-7,
    );
}

#[test]
fn cast_truncates_to_integers_and_tests_non_zero_for_bool() {
    let x = f(&[4], &[-1.7, 2.9, 0.0, 0.3]);
    let i = op_n(
        "cast",
        &[("x", vec![x.clone()]), ("dtype", vec![text("int32")])],
        &[DType::Int32],
    );
    assert_eq!(ivals(&i[0]), vec![-1, 2, 0, 0]);
    let b = op_n(
        "cast",
        &[("x", vec![x]), ("dtype", vec![text("bool")])],
        &[DType::Bool],
    );
    assert_eq!(ivals(&b[0]), vec![1, 1, 0, 1]);
    let back = op_n(
        "cast",
        &[("x", vec![ints(&[3, -2])]), ("dtype", vec![text("fp32")])],
        &[DType::Fp32],
    );
    close(&back[0], &[2], &[3.0, -2.0], 0.0);
}

#[test]
fn select_broadcasts_its_three_operands() {
    let cond = Value::Tensor {
        t: Tensor::from_slice(&[1u8, 0], (2, 1), &Device::Cpu).unwrap(),
        dtype: DType::Bool,
    };
    let got = op(
        "select",
        &[
            ("cond", vec![cond]),
            ("a", vec![f(&[3], &[1.0, 2.0, 3.0])]),
            ("b", vec![fs(-1.0)]),
        ],
    );
    close(&got, &[2, 3], &[1.0, 2.0, 3.0, -1.0, -1.0, -1.0], 0.0);
}

// ----- activations ----------------------------------------------------------------------

#[test]
fn gelu_modes_match_numpy() {
    let x = [-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.5];
    // numpy / math.erf in f64.
    let exact = [
        -0.00404969409489031,
        -0.15865525393145707,
        -0.15426876936299344,
        0.0,
        0.34573123063700656,
        0.8413447460685429,
        2.4844758366855597,
    ];
    let tanh = [
        -0.0036373920817729943,
        -0.1588080093917233,
        -0.15428599017485606,
        0.0,
        0.34571400982514394,
        0.8411919906082768,
        2.484915733910001,
    ];
    let sigm = [
        -0.01807130970778597,
        -0.1542042340671787,
        -0.1496115633936199,
        0.0,
        0.35038843660638014,
        0.8457957659328212,
        2.46501383495143,
    ];
    for (mode, want) in [
        ("EXACT", exact),
        ("TANH_APPROXIMATION", tanh),
        ("SIGMOID_APPROXIMATION", sigm),
    ] {
        let got = op(
            "gelu",
            &[("x", vec![f(&[7], &x)]), ("mode", vec![text(mode)])],
        );
        let w: Vec<f32> = want.iter().map(|&v| v as f32).collect();
        close(&got, &[7], &w, 2e-6);
    }
    // The default mode is EXACT.
    let got = op("gelu", &[("x", vec![f(&[7], &x)])]);
    close(&got, &[7], &exact.map(|v| v as f32), 2e-6);
    assert!(op_err(
        "gelu",
        &[("x", vec![fs(1.0)]), ("mode", vec![text("FAST")])]
    )
    .contains("FAST"));
}

/// Softmax in f64 along `axis` of a row-major array of shape `dims`.
fn softmax_ref(x: &[f32], dims: &[usize], axis: usize) -> Vec<f32> {
    let outer: usize = dims[..axis].iter().product();
    let len = dims[axis];
    let inner: usize = dims[axis + 1..].iter().product();
    let mut out = vec![0f32; x.len()];
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| (o * len + j) * inner + i;
            let m = (0..len)
                .map(|j| f64::from(x[at(j)]))
                .fold(f64::MIN, f64::max);
            let s: f64 = (0..len).map(|j| (f64::from(x[at(j)]) - m).exp()).sum();
            for j in 0..len {
                out[at(j)] = ((f64::from(x[at(j)]) - m).exp() / s) as f32;
            }
        }
    }
    out
}

#[test]
fn softmax_along_any_axis() {
    let dims = [2, 3, 4, 5];
    let x: Vec<f32> = noise(120, 7).iter().map(|v| v * 6.0).collect();
    for axis in [-1i64, 1, 0, -2] {
        let a = if axis < 0 {
            (axis + 4) as usize
        } else {
            axis as usize
        };
        let got = op(
            "softmax",
            &[("x", vec![f(&dims, &x)]), ("axis", vec![int(axis)])],
        );
        close(&got, &dims, &softmax_ref(&x, &dims, a), 1e-6);
    }
    // Default axis -1, and no overflow for large logits.
    let got = op("softmax", &[("x", vec![f(&[2], &[1000.0, 1001.0])])]);
    let e = (-1f64).exp();
    close(
        &got,
        &[2],
        &[(e / (1.0 + e)) as f32, (1.0 / (1.0 + e)) as f32],
        1e-6,
    );
}

#[test]
fn other_activations() {
    let x = f(&[5], &[-2.0, -0.5, 0.0, 0.5, 30.0]);
    let sig = |v: f32| 1.0 / (1.0 + (-v).exp());
    let xs = [-2.0f32, -0.5, 0.0, 0.5, 30.0];
    close(
        &op("relu", &[("x", vec![x.clone()])]),
        &[5],
        &[0.0, 0.0, 0.0, 0.5, 30.0],
        0.0,
    );
    close(
        &op("sigmoid", &[("x", vec![x.clone()])]),
        &[5],
        &xs.map(sig),
        1e-6,
    );
    close(
        &op("silu", &[("x", vec![x.clone()])]),
        &[5],
        &xs.map(|v| v * sig(v)),
        1e-6,
    );
    close(
        &op(
            "leaky_relu",
            &[("x", vec![x.clone()]), ("alpha", vec![fs(0.1)])],
        ),
        &[5],
        &[-0.2, -0.05, 0.0, 0.5, 30.0],
        1e-7,
    );
    close(
        &op("softplus", &[("x", vec![x.clone()])]),
        &[5],
        &xs.map(|v| v.exp().ln_1p()),
        1e-6,
    );
    close(
        &op("relu6", &[("x", vec![x])]),
        &[5],
        &[0.0, 0.0, 0.0, 0.5, 6.0],
        0.0,
    );
}

// ----- linear algebra -------------------------------------------------------------------

#[test]
fn linear_folds_leading_axes() {
    let x = noise(2 * 3 * 4, 3);
    let w = noise(5 * 4, 4);
    let b = noise(5, 5);
    let got = op(
        "linear",
        &[
            ("x", vec![f(&[2, 3, 4], &x)]),
            ("weight", vec![f(&[5, 4], &w)]),
            ("bias", vec![f(&[5], &b)]),
        ],
    );
    let mut want = Vec::new();
    for r in 0..6 {
        for o in 0..5 {
            want.push(b[o] + (0..4).map(|k| x[r * 4 + k] * w[o * 4 + k]).sum::<f32>());
        }
    }
    close(&got, &[2, 3, 5], &want, 1e-5);
    // No bias, rank-1 input.
    let got = op(
        "linear",
        &[
            ("x", vec![f(&[4], &x[..4])]),
            ("weight", vec![f(&[5, 4], &w)]),
        ],
    );
    let want: Vec<f32> = (0..5)
        .map(|o| (0..4).map(|k| x[k] * w[o * 4 + k]).sum())
        .collect();
    close(&got, &[5], &want, 1e-5);
}

/// NumPy matmul of `a` `[.., m, k]` and `b` `[.., k, n]` with broadcast
/// batches, by index loops.
fn matmul_ref(a: &[f32], ad: &[usize], b: &[f32], bd: &[usize]) -> (Vec<usize>, Vec<f32>) {
    let (ra, rb) = (ad.len(), bd.len());
    let (m, k, n) = (ad[ra - 2], ad[ra - 1], bd[rb - 1]);
    let (ba, bb) = (&ad[..ra - 2], &bd[..rb - 2]);
    let r = ba.len().max(bb.len());
    let get = |d: &[usize], i: usize| {
        if i + d.len() >= r {
            d[i + d.len() - r]
        } else {
            1
        }
    };
    let batch: Vec<usize> = (0..r).map(|i| get(ba, i).max(get(bb, i))).collect();
    let nb: usize = batch.iter().product();
    let mut out = Vec::new();
    for bi in 0..nb {
        // Batch index -> offsets with broadcasting.
        let mut rem = bi;
        let (mut oa, mut ob) = (0, 0);
        let (mut sa, mut sb) = (m * k, k * n);
        for i in (0..r).rev() {
            let idx = rem % batch[i];
            rem /= batch[i];
            let (da, db) = (get(ba, i), get(bb, i));
            if da > 1 {
                oa += idx * sa;
            }
            if db > 1 {
                ob += idx * sb;
            }
            sa *= da;
            sb *= db;
        }
        for i in 0..m {
            for j in 0..n {
                out.push((0..k).map(|p| a[oa + i * k + p] * b[ob + p * n + j]).sum());
            }
        }
    }
    let mut shape = batch;
    shape.extend([m, n]);
    (shape, out)
}

#[test]
fn matmul_broadcasts_batches_and_promotes_vectors() {
    let a = noise(2 * 3 * 4, 11); // x is [2, 1, 3, 4]
    let b = noise(5 * 4 * 2, 12);
    let got = op(
        "matmul",
        &[
            ("x", vec![f(&[2, 1, 3, 4], &a)]),
            ("y", vec![f(&[5, 4, 2], &b)]),
        ],
    );
    let (shape, want) = matmul_ref(&a, &[2, 1, 3, 4], &b, &[5, 4, 2]);
    close(&got, &shape, &want, 1e-5);
    // transpose_y: x [3,4] · (y [2,4])ᵀ.
    let y = noise(8, 13);
    let got = op(
        "matmul",
        &[
            ("x", vec![f(&[3, 4], &a[..12])]),
            ("y", vec![f(&[2, 4], &y)]),
            ("transpose_y", vec![boolean(true)]),
        ],
    );
    let mut yt = vec![0f32; 8];
    for i in 0..2 {
        for j in 0..4 {
            yt[j * 2 + i] = y[i * 4 + j];
        }
    }
    let (shape, want) = matmul_ref(&a[..12], &[3, 4], &yt, &[4, 2]);
    close(&got, &shape, &want, 1e-5);
    // 1-D operands: [4]·[4,2] -> [2]; [3,4]·[4] -> [3]; [4]·[4] -> scalar.
    let got = op(
        "matmul",
        &[
            ("x", vec![f(&[4], &a[..4])]),
            ("y", vec![f(&[4, 2], &b[..8])]),
        ],
    );
    let (_, want) = matmul_ref(&a[..4], &[1, 4], &b[..8], &[4, 2]);
    close(&got, &[2], &want, 1e-5);
    let got = op(
        "matmul",
        &[
            ("x", vec![f(&[3, 4], &a[..12])]),
            ("y", vec![f(&[4], &b[..4])]),
        ],
    );
    let (_, want) = matmul_ref(&a[..12], &[3, 4], &b[..4], &[4, 1]);
    close(&got, &[3], &want, 1e-5);
    let got = op(
        "matmul",
        &[("x", vec![f(&[4], &a[..4])]), ("y", vec![f(&[4], &b[..4])])],
    );
    close(&got, &[], &[(0..4).map(|i| a[i] * b[i]).sum()], 1e-5);
    assert!(op_err(
        "matmul",
        &[
            ("x", vec![f(&[3, 4], &a[..12])]),
            ("y", vec![f(&[3, 2], &b[..6])])
        ]
    )
    .contains("inner dimensions"));
}

#[test]
fn einsum_split_attention_equations() {
    // apple/ml-stable-diffusion's split-einsum attention: bkhc,bchq->bkhq
    // and bchk,bkhq->bchq, checked against index loops.
    let (bn, k, h, c, q) = (2, 3, 2, 4, 5);
    let a = noise(bn * k * h * c, 21);
    let b = noise(bn * c * h * q, 22);
    let got = op(
        "einsum",
        &[
            ("values", vec![f(&[bn, k, h, c], &a), f(&[bn, c, h, q], &b)]),
            ("equation", vec![text("bkhc,bchq->bkhq")]),
        ],
    );
    let mut want = vec![0f32; bn * k * h * q];
    for bi in 0..bn {
        for ki in 0..k {
            for hi in 0..h {
                for qi in 0..q {
                    want[((bi * k + ki) * h + hi) * q + qi] = (0..c)
                        .map(|ci| {
                            a[((bi * k + ki) * h + hi) * c + ci]
                                * b[((bi * c + ci) * h + hi) * q + qi]
                        })
                        .sum();
                }
            }
        }
    }
    close(&got, &[bn, k, h, q], &want, 1e-5);
    // bchk,bkhq->bchq with a size-1 batch axis broadcast on one side.
    let x = noise(c * h * k, 23);
    let y = noise(bn * k * h * q, 24);
    let got = op(
        "einsum",
        &[
            ("values", vec![f(&[1, c, h, k], &x), f(&[bn, k, h, q], &y)]),
            ("equation", vec![text("bchk,bkhq->bchq")]),
        ],
    );
    let mut want = vec![0f32; bn * c * h * q];
    for bi in 0..bn {
        for ci in 0..c {
            for hi in 0..h {
                for qi in 0..q {
                    want[((bi * c + ci) * h + hi) * q + qi] = (0..k)
                        .map(|kk| x[(ci * h + hi) * k + kk] * y[((bi * k + kk) * h + hi) * q + qi])
                        .sum();
                }
            }
        }
    }
    close(&got, &[bn, c, h, q], &want, 1e-5);
}

#[test]
fn einsum_other_forms() {
    let a = noise(6, 31);
    let b = noise(12, 32);
    // Plain matrix product with spaces in the equation.
    let got = op(
        "einsum",
        &[
            ("values", vec![f(&[2, 3], &a), f(&[3, 4], &b)]),
            ("equation", vec![text("ij, jk -> ik")]),
        ],
    );
    let (_, want) = matmul_ref(&a, &[2, 3], &b, &[3, 4]);
    close(&got, &[2, 4], &want, 1e-6);
    // An index summed away from one operand only: ij,j->i sums nothing
    // extra, ij,k->i sums j and k.
    let got = op(
        "einsum",
        &[
            ("values", vec![f(&[2, 3], &a), f(&[4], &b[..4])]),
            ("equation", vec![text("ij,k->i")]),
        ],
    );
    let sb: f32 = b[..4].iter().sum();
    let want: Vec<f32> = (0..2)
        .map(|i| a[i * 3..i * 3 + 3].iter().sum::<f32>() * sb)
        .collect();
    close(&got, &[2], &want, 1e-5);
    // One operand: a transpose.
    let got = op(
        "einsum",
        &[
            ("values", vec![f(&[2, 3], &a)]),
            ("equation", vec![text("ij->ji")]),
        ],
    );
    close(&got, &[3, 2], &[a[0], a[3], a[1], a[4], a[2], a[5]], 0.0);
    assert!(op_err(
        "einsum",
        &[
            ("values", vec![f(&[3, 3], &b[..9])]),
            ("equation", vec![text("ii->i")])
        ]
    )
    .contains("repeated index"));
    assert!(op_err(
        "einsum",
        &[
            ("values", vec![f(&[2, 3], &a)]),
            ("equation", vec![text("...i->i")])
        ]
    )
    .contains("ellipsis"));
}

// ----- conv -----------------------------------------------------------------------------

/// Direct convolution by explicit loops: x [N,C,H,W], w [O,C/g,KH,KW].
#[allow(clippy::too_many_arguments)]
fn conv_ref(
    x: &[f32],
    xd: [usize; 4],
    w: &[f32],
    wd: [usize; 4],
    b: Option<&[f32]>,
    s: [usize; 2],
    pads: [(usize, usize); 2],
    d: [usize; 2],
    g: usize,
) -> (Vec<usize>, Vec<f32>) {
    let [n, c, h, wid] = xd;
    let [o, cg, kh, kw] = wd;
    let oh = (h + pads[0].0 + pads[0].1 - ((kh - 1) * d[0] + 1)) / s[0] + 1;
    let ow = (wid + pads[1].0 + pads[1].1 - ((kw - 1) * d[1] + 1)) / s[1] + 1;
    let og = o / g;
    let mut out = vec![0f32; n * o * oh * ow];
    for ni in 0..n {
        for oc in 0..o {
            let grp = oc / og;
            for y in 0..oh {
                for xx in 0..ow {
                    let mut acc = b.map_or(0.0, |b| b[oc]);
                    for ci in 0..cg {
                        let cin = grp * cg + ci;
                        for i in 0..kh {
                            for j in 0..kw {
                                let iy = (y * s[0] + i * d[0]) as isize - pads[0].0 as isize;
                                let ix = (xx * s[1] + j * d[1]) as isize - pads[1].0 as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wid as isize {
                                    continue;
                                }
                                acc += x[((ni * c + cin) * h + iy as usize) * wid + ix as usize]
                                    * w[((oc * cg + ci) * kh + i) * kw + j];
                            }
                        }
                    }
                    out[((ni * o + oc) * oh + y) * ow + xx] = acc;
                }
            }
        }
    }
    (vec![n, o, oh, ow], out)
}

#[test]
fn conv_hand_computed() {
    // 1x1x3x3 input 1..9, 2x2 kernel of ones, valid: sums of 2x2 windows.
    let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
    let got = op(
        "conv",
        &[
            ("x", vec![f(&[1, 1, 3, 3], &x)]),
            ("weight", vec![f(&[1, 1, 2, 2], &[1.0; 4])]),
        ],
    );
    close(&got, &[1, 1, 2, 2], &[12.0, 16.0, 24.0, 28.0], 0.0);
    // Same input, custom pad 1 on every side, stride 2: corners of the
    // padded 5x5 grid -> windows at (-1,-1), (-1,1), (1,-1), (1,1).
    let got = op(
        "conv",
        &[
            ("x", vec![f(&[1, 1, 3, 3], &x)]),
            ("weight", vec![f(&[1, 1, 2, 2], &[1.0; 4])]),
            ("pad_type", vec![text("custom")]),
            ("pad", vec![ints(&[1, 1, 1, 1])]),
            ("strides", vec![ints(&[2, 2])]),
        ],
    );
    close(&got, &[1, 1, 2, 2], &[1.0, 5.0, 11.0, 28.0], 0.0);
}

#[test]
fn conv_padding_modes_strides_dilations_groups() {
    struct Case {
        x: [usize; 4],
        w: [usize; 4],
        pad_type: &'static str,
        pad: Option<[i64; 4]>,
        s: [usize; 2],
        d: [usize; 2],
        g: usize,
        /// (before, after) per axis that the op must use.
        pads: [(usize, usize); 2],
    }
    let cases = [
        // 3x3 "same" at stride 1: 1 on each side.
        Case {
            x: [2, 3, 7, 6],
            w: [4, 3, 3, 3],
            pad_type: "same",
            pad: None,
            s: [1, 1],
            d: [1, 1],
            g: 1,
            pads: [(1, 1), (1, 1)],
        },
        // "same" at stride 2 on an even size: total (4-1)*2+3-8 = 1, extra after.
        Case {
            x: [1, 2, 8, 8],
            w: [3, 2, 3, 3],
            pad_type: "same",
            pad: None,
            s: [2, 2],
            d: [1, 1],
            g: 1,
            pads: [(0, 1), (0, 1)],
        },
        // same_lower puts the extra row/column before.
        Case {
            x: [1, 2, 8, 8],
            w: [3, 2, 3, 3],
            pad_type: "same_lower",
            pad: None,
            s: [2, 2],
            d: [1, 1],
            g: 1,
            pads: [(1, 0), (1, 0)],
        },
        // Even kernel "same": total 1, after.
        Case {
            x: [1, 1, 5, 4],
            w: [2, 1, 2, 2],
            pad_type: "same",
            pad: None,
            s: [1, 1],
            d: [1, 1],
            g: 1,
            pads: [(0, 1), (0, 1)],
        },
        // Asymmetric custom padding, different strides per axis.
        Case {
            x: [1, 3, 6, 9],
            w: [2, 3, 3, 2],
            pad_type: "custom",
            pad: Some([2, 0, 1, 3]),
            s: [1, 3],
            d: [1, 1],
            g: 1,
            pads: [(2, 0), (1, 3)],
        },
        // Dilation 2 (and 3 along W), valid.
        Case {
            x: [1, 2, 9, 11],
            w: [3, 2, 3, 3],
            pad_type: "valid",
            pad: None,
            s: [1, 1],
            d: [2, 3],
            g: 1,
            pads: [(0, 0), (0, 0)],
        },
        // Dilated "same": effective kernel 5, total 4.
        Case {
            x: [1, 2, 6, 6],
            w: [2, 2, 3, 3],
            pad_type: "same",
            pad: None,
            s: [1, 1],
            d: [2, 2],
            g: 1,
            pads: [(2, 2), (2, 2)],
        },
        // Two groups.
        Case {
            x: [2, 4, 5, 5],
            w: [6, 2, 3, 3],
            pad_type: "custom",
            pad: Some([1, 1, 1, 1]),
            s: [1, 1],
            d: [1, 1],
            g: 2,
            pads: [(1, 1), (1, 1)],
        },
        // Depthwise with a channel multiplier of 2.
        Case {
            x: [1, 3, 4, 4],
            w: [6, 1, 3, 3],
            pad_type: "same",
            pad: None,
            s: [1, 1],
            d: [1, 1],
            g: 3,
            pads: [(1, 1), (1, 1)],
        },
        // Pointwise (the 1x1 fast path) with batch 2 and groups.
        Case {
            x: [2, 4, 3, 5],
            w: [6, 2, 1, 1],
            pad_type: "valid",
            pad: None,
            s: [1, 1],
            d: [1, 1],
            g: 2,
            pads: [(0, 0), (0, 0)],
        },
        // Pointwise with stride (not the fast path).
        Case {
            x: [1, 3, 5, 5],
            w: [2, 3, 1, 1],
            pad_type: "valid",
            pad: None,
            s: [2, 2],
            d: [1, 1],
            g: 1,
            pads: [(0, 0), (0, 0)],
        },
    ];
    for (ci, c) in cases.iter().enumerate() {
        let xn: usize = c.x.iter().product();
        let wn: usize = c.w.iter().product();
        let x = noise(xn, 100 + ci as u64);
        let w = noise(wn, 200 + ci as u64);
        let b = noise(c.w[0], 300 + ci as u64);
        let mut params = vec![
            ("x", vec![f(&c.x, &x)]),
            ("weight", vec![f(&c.w, &w)]),
            ("bias", vec![f(&[c.w[0]], &b)]),
            ("pad_type", vec![text(c.pad_type)]),
            ("strides", vec![ints(&c.s.map(|v| v as i64))]),
            ("dilations", vec![ints(&c.d.map(|v| v as i64))]),
            ("groups", vec![int(c.g as i64)]),
        ];
        if let Some(p) = c.pad {
            params.push(("pad", vec![ints(&p)]));
        }
        let got = op("conv", &params);
        let (shape, want) = conv_ref(&x, c.x, &w, c.w, Some(&b), c.s, c.pads, c.d, c.g);
        close(&got, &shape, &want, 1e-5);
        if c.pad_type.starts_with("same") {
            // "same" keeps ceil(in / stride).
            assert_eq!(shape[2], c.x[2].div_ceil(c.s[0]), "case {ci}");
            assert_eq!(shape[3], c.x[3].div_ceil(c.s[1]), "case {ci}");
        }
    }
}

#[test]
fn conv_1d_and_bad_groups() {
    // 1-D conv equals the 2-D one with height 1.
    let x = noise(2 * 3 * 10, 41);
    let w = noise(4 * 3 * 3, 42);
    let got = op(
        "conv",
        &[
            ("x", vec![f(&[2, 3, 10], &x)]),
            ("weight", vec![f(&[4, 3, 3], &w)]),
            ("pad_type", vec![text("custom")]),
            ("pad", vec![ints(&[2, 1])]),
            ("strides", vec![ints(&[2])]),
        ],
    );
    let (shape, want) = conv_ref(
        &x,
        [2, 3, 1, 10],
        &w,
        [4, 3, 1, 3],
        None,
        [1, 2],
        [(0, 0), (2, 1)],
        [1, 1],
        1,
    );
    close(&got, &[shape[0], shape[1], shape[3]], &want, 1e-5);
    let e = op_err(
        "conv",
        &[
            ("x", vec![f(&[1, 3, 4, 4], &noise(48, 1))]),
            ("weight", vec![f(&[2, 2, 1, 1], &[1.0; 4])]),
            ("groups", vec![int(2)]),
        ],
    );
    assert!(e.contains("groups"), "{e}");
}

// ----- normalization --------------------------------------------------------------------

/// Layer norm over the trailing `len` elements of each of `rows` rows... in
/// the general (outer, len, inner) layout, in f64.
fn norm_ref(x: &[f32], outer: usize, len: usize, inner: usize, eps: f64) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| (o * len + j) * inner + i;
            let m = (0..len).map(|j| f64::from(x[at(j)])).sum::<f64>() / len as f64;
            let v = (0..len)
                .map(|j| (f64::from(x[at(j)]) - m).powi(2))
                .sum::<f64>()
                / len as f64;
            for j in 0..len {
                out[at(j)] = ((f64::from(x[at(j)]) - m) / (v + eps).sqrt()) as f32;
            }
        }
    }
    out
}

#[test]
fn layer_norm_last_axis_with_gamma_beta() {
    let x: Vec<f32> = noise(2 * 3 * 8, 51).iter().map(|v| v * 5.0 + 3.0).collect();
    let g = noise(8, 52);
    let b = noise(8, 53);
    let got = op(
        "layer_norm",
        &[
            ("x", vec![f(&[2, 3, 8], &x)]),
            ("axes", vec![ints(&[-1])]),
            ("gamma", vec![f(&[8], &g)]),
            ("beta", vec![f(&[8], &b)]),
            ("epsilon", vec![fs(1e-5)]),
        ],
    );
    let n = norm_ref(&x, 6, 8, 1, 1e-5);
    let want: Vec<f32> = n
        .iter()
        .enumerate()
        .map(|(i, v)| v * g[i % 8] + b[i % 8])
        .collect();
    close(&got, &[2, 3, 8], &want, 1e-5);
}

#[test]
fn layer_norm_channel_axis_and_non_adjacent_axes() {
    // ml-stable-diffusion's layout: [B, C, 1, S] normalised over axis 1.
    let (bn, c, s) = (2, 6, 5);
    let x = noise(bn * c * s, 61);
    let g = noise(c, 62);
    let got = op(
        "layer_norm",
        &[
            ("x", vec![f(&[bn, c, 1, s], &x)]),
            ("axes", vec![ints(&[1])]),
            ("gamma", vec![f(&[c], &g)]),
            ("epsilon", vec![fs(1e-5)]),
        ],
    );
    let n = norm_ref(&x, bn, c, s, 1e-5);
    let want: Vec<f32> = n
        .iter()
        .enumerate()
        .map(|(i, v)| v * g[(i / s) % c])
        .collect();
    close(&got, &[bn, c, 1, s], &want, 1e-5);
    // Axes 0 and 2 of [3, 2, 4]: statistics over 12 values per middle index.
    let x = noise(24, 63);
    let got = op(
        "layer_norm",
        &[
            ("x", vec![f(&[3, 2, 4], &x)]),
            ("axes", vec![ints(&[2, 0])]),
            ("epsilon", vec![fs(0.01)]),
        ],
    );
    let mut want = vec![0f32; 24];
    for m in 0..2 {
        let idx: Vec<usize> = (0..3)
            .flat_map(|a| (0..4).map(move |c| (a * 2 + m) * 4 + c))
            .collect();
        let vals: Vec<f32> = idx.iter().map(|&i| x[i]).collect();
        let r = norm_ref(&vals, 1, 12, 1, 0.01);
        for (k, &i) in idx.iter().enumerate() {
            want[i] = r[k];
        }
    }
    close(&got, &[3, 2, 4], &want, 1e-5);
}

#[test]
fn batch_and_instance_norm() {
    let (n, c, hw) = (2, 3, 4);
    let x = noise(n * c * hw, 71);
    let mean = [0.1, -0.2, 0.3];
    let var = [1.0, 0.5, 2.0];
    let g = [1.5, 1.0, -1.0];
    let b = [0.0, 0.25, 1.0];
    let got = op(
        "batch_norm",
        &[
            ("x", vec![f(&[n, c, 2, 2], &x)]),
            ("mean", vec![f(&[c], &mean)]),
            ("variance", vec![f(&[c], &var)]),
            ("gamma", vec![f(&[c], &g)]),
            ("beta", vec![f(&[c], &b)]),
            ("epsilon", vec![fs(1e-3)]),
        ],
    );
    let want: Vec<f32> = x
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let ch = (i / hw) % c;
            (v - mean[ch]) / (var[ch] + 1e-3f32).sqrt() * g[ch] + b[ch]
        })
        .collect();
    close(&got, &[n, c, 2, 2], &want, 1e-5);
    let got = op(
        "instance_norm",
        &[
            ("x", vec![f(&[n, c, 2, 2], &x)]),
            ("gamma", vec![f(&[c], &g)]),
            ("beta", vec![f(&[c], &b)]),
        ],
    );
    let r = norm_ref(&x, n * c, hw, 1, 1e-5);
    let want: Vec<f32> = r
        .iter()
        .enumerate()
        .map(|(i, v)| v * g[(i / hw) % c] + b[(i / hw) % c])
        .collect();
    close(&got, &[n, c, 2, 2], &want, 1e-5);
}

// ----- reductions -----------------------------------------------------------------------

#[test]
fn reductions_with_axes_and_keep_dims() {
    let x: Vec<f32> = (0..24).map(|v| v as f32).collect();
    let t = f(&[2, 3, 4], &x);
    let got = op(
        "reduce_mean",
        &[
            ("x", vec![t.clone()]),
            ("axes", vec![ints(&[-1])]),
            ("keep_dims", vec![boolean(false)]),
        ],
    );
    close(&got, &[2, 3], &[1.5, 5.5, 9.5, 13.5, 17.5, 21.5], 1e-7);
    let got = op(
        "reduce_sum",
        &[
            ("x", vec![t.clone()]),
            ("axes", vec![ints(&[0, 2])]),
            ("keep_dims", vec![boolean(true)]),
        ],
    );
    // sum over a and c of (12a + 4b + c) = 2*4*4b + (0+12)*4 + 2*6 = 32b + 60
    close(&got, &[1, 3, 1], &[60.0, 92.0, 124.0], 0.0);
    // No axes: everything.
    let got = op("reduce_sum", &[("x", vec![t.clone()])]);
    close(&got, &[], &[276.0], 0.0);
    let got = op(
        "reduce_max",
        &[("x", vec![t.clone()]), ("axes", vec![ints(&[-2])])],
    );
    close(
        &got,
        &[2, 4],
        &[8.0, 9.0, 10.0, 11.0, 20.0, 21.0, 22.0, 23.0],
        0.0,
    );
    let got = op(
        "reduce_prod",
        &[
            ("x", vec![f(&[2, 2], &[-1.0, 2.0, 3.0, 4.0])]),
            ("axes", vec![ints(&[1])]),
        ],
    );
    close(&got, &[2], &[-2.0, 12.0], 0.0);
    let got = op("reduce_l2_norm", &[("x", vec![f(&[2], &[3.0, 4.0])])]);
    close(&got, &[], &[5.0], 1e-7);
    let got = op(
        "reduce_log_sum_exp",
        &[("x", vec![f(&[2], &[1000.0, 1000.0])])],
    );
    close(&got, &[], &[1000.0 + 2f32.ln()], 1e-6);
    // argmax: first index on ties.
    let got = op_n(
        "reduce_argmax",
        &[
            ("x", vec![f(&[2, 3], &[1.0, 5.0, 5.0, 7.0, 0.0, 7.0])]),
            ("axis", vec![int(-1)]),
        ],
        &[DType::Int32],
    );
    assert_eq!(ivals(&got[0]), vec![1, 0]);
}

// ----- shape ops ------------------------------------------------------------------------

#[test]
fn reshape_expand_squeeze_transpose() {
    let x: Vec<f32> = (0..12).map(|v| v as f32).collect();
    let t = f(&[2, 3, 2], &x);
    assert_eq!(
        op(
            "reshape",
            &[("x", vec![t.clone()]), ("shape", vec![ints(&[4, -1])])]
        )
        .dims(),
        &[4, 3]
    );
    // 0 copies the input dimension when the ranks agree.
    assert_eq!(
        op(
            "reshape",
            &[("x", vec![t.clone()]), ("shape", vec![ints(&[0, 0, -1])])]
        )
        .dims(),
        &[2, 3, 2]
    );
    assert!(op_err(
        "reshape",
        &[("x", vec![t.clone()]), ("shape", vec![ints(&[5, -1])])]
    )
    .contains("-1"));
    // expand_dims axes index the output: -1 appends, 0 prepends.
    assert_eq!(
        op(
            "expand_dims",
            &[("x", vec![t.clone()]), ("axes", vec![ints(&[-1, 0])])]
        )
        .dims(),
        &[1, 2, 3, 2, 1]
    );
    assert_eq!(
        op(
            "expand_dims",
            &[("x", vec![t.clone()]), ("axes", vec![ints(&[2])])]
        )
        .dims(),
        &[2, 3, 1, 2]
    );
    let one = f(&[1, 3, 1, 2], &x[..6]);
    assert_eq!(op("squeeze", &[("x", vec![one.clone()])]).dims(), &[3, 2]);
    assert_eq!(
        op(
            "squeeze",
            &[("x", vec![one.clone()]), ("axes", vec![ints(&[-2])])]
        )
        .dims(),
        &[1, 3, 2]
    );
    assert!(op_err("squeeze", &[("x", vec![one]), ("axes", vec![ints(&[1])])]).contains("size 3"));
    let got = op(
        "transpose",
        &[("x", vec![t]), ("perm", vec![ints(&[2, 0, 1])])],
    );
    // out[k,i,j] = x[i,j,k] = 6i + 2j + k
    let want: Vec<f32> = (0..2)
        .flat_map(|k| (0..2).flat_map(move |i| (0..3).map(move |j| (6 * i + 2 * j + k) as f32)))
        .collect();
    close(&got, &[2, 2, 3], &want, 0.0);
}

#[test]
fn concat_split_stack() {
    let a = f(&[2, 1], &[1.0, 2.0]);
    let b = f(&[2, 2], &[3.0, 4.0, 5.0, 6.0]);
    let got = op(
        "concat",
        &[("values", vec![a.clone(), b]), ("axis", vec![int(-1)])],
    );
    close(&got, &[2, 3], &[1.0, 3.0, 4.0, 2.0, 5.0, 6.0], 0.0);
    // interleave takes one slice of each input in turn.
    let c = f(&[2, 1], &[7.0, 8.0]);
    let got = op(
        "concat",
        &[
            ("values", vec![a.clone(), c.clone()]),
            ("axis", vec![int(0)]),
            ("interleave", vec![boolean(true)]),
        ],
    );
    close(&got, &[4, 1], &[1.0, 7.0, 2.0, 8.0], 0.0);
    let got = op("stack", &[("values", vec![a, c]), ("axis", vec![int(1)])]);
    close(&got, &[2, 2, 1], &[1.0, 7.0, 2.0, 8.0], 0.0);
    let x: Vec<f32> = (0..10).map(|v| v as f32).collect();
    let outs = op_n(
        "split",
        &[
            ("x", vec![f(&[2, 5], &x)]),
            ("axis", vec![int(-1)]),
            ("split_sizes", vec![ints(&[2, 3])]),
        ],
        &[DType::Fp32, DType::Fp32],
    );
    close(&outs[0], &[2, 2], &[0.0, 1.0, 5.0, 6.0], 0.0);
    close(&outs[1], &[2, 3], &[2.0, 3.0, 4.0, 7.0, 8.0, 9.0], 0.0);
    let outs = op_n(
        "split",
        &[
            ("x", vec![f(&[2, 5], &x)]),
            ("axis", vec![int(0)]),
            ("num_splits", vec![int(2)]),
        ],
        &[DType::Fp32, DType::Fp32],
    );
    close(&outs[1], &[1, 5], &x[5..], 0.0);
}

#[test]
fn slice_by_index_follows_python_slicing() {
    let x: Vec<f32> = (0..20).map(|v| v as f32).collect();
    let t = f(&[4, 5], &x);
    let s = |begin: &[i64], end: &[i64], extra: Vec<(&'static str, Value)>| {
        let mut p = vec![
            ("x", vec![t.clone()]),
            ("begin", vec![ints(begin)]),
            ("end", vec![ints(end)]),
        ];
        for (k, v) in extra {
            p.push((k, vec![v]));
        }
        op("slice_by_index", &p)
    };
    // x[1:3, -3:]: end_mask on axis 1.
    let got = s(&[1, -3], &[3, 0], vec![("end_mask", bools(&[false, true]))]);
    close(&got, &[2, 3], &[7.0, 8.0, 9.0, 12.0, 13.0, 14.0], 0.0);
    // x[::2, 4:0:-2]
    let got = s(
        &[0, 4],
        &[0, 0],
        vec![
            ("stride", ints(&[2, -2])),
            ("begin_mask", bools(&[true, false])),
            ("end_mask", bools(&[true, false])),
        ],
    );
    close(&got, &[2, 2], &[4.0, 2.0, 14.0, 12.0], 0.0);
    // x[::-1, 1] via squeeze_mask; end beyond the size is clamped.
    let got = s(
        &[0, 1],
        &[99, 0],
        vec![
            ("stride", ints(&[-1, 1])),
            ("begin_mask", bools(&[true, false])),
            ("end_mask", bools(&[true, false])),
            ("squeeze_mask", bools(&[false, true])),
        ],
    );
    close(&got, &[4], &[16.0, 11.0, 6.0, 1.0], 0.0);
    // An empty slice.
    let got = s(&[3, 0], &[1, 5], vec![]);
    assert_eq!(got.dims(), &[0, 5]);
    // slice_by_size with -1.
    let got = op(
        "slice_by_size",
        &[
            ("x", vec![t.clone()]),
            ("begin", vec![ints(&[-2, 1])]),
            ("size", vec![ints(&[-1, 2])]),
        ],
    );
    close(&got, &[2, 2], &[11.0, 12.0, 16.0, 17.0], 0.0);
}

#[test]
fn gather_tile_band_pad_and_friends() {
    let x: Vec<f32> = (0..12).map(|v| v as f32).collect();
    let t = f(&[3, 4], &x);
    // Negative and 2-D indices along axis 1.
    let got = op(
        "gather",
        &[
            ("x", vec![t.clone()]),
            ("indices", vec![int_t(&[2, 2], &[-1, 0, 1, 1])]),
            ("axis", vec![int(1)]),
        ],
    );
    close(
        &got,
        &[3, 2, 2],
        &[3.0, 0.0, 1.0, 1.0, 7.0, 4.0, 5.0, 5.0, 11.0, 8.0, 9.0, 9.0],
        0.0,
    );
    assert!(op_err(
        "gather",
        &[("x", vec![t.clone()]), ("indices", vec![ints(&[3])])]
    )
    .contains("out of range"));
    let got = op(
        "gather_along_axis",
        &[
            ("x", vec![t.clone()]),
            ("indices", vec![int_t(&[3, 1], &[3, 0, -2])]),
            ("axis", vec![int(1)]),
        ],
    );
    close(&got, &[3, 1], &[3.0, 4.0, 10.0], 0.0);
    let got = op(
        "tile",
        &[
            ("x", vec![f(&[1, 2], &[1.0, 2.0])]),
            ("reps", vec![ints(&[2, 2])]),
        ],
    );
    close(
        &got,
        &[2, 4],
        &[1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0],
        0.0,
    );
    // band_part(0, -1): upper triangle.
    let got = op(
        "band_part",
        &[
            ("x", vec![t.clone()]),
            ("lower", vec![int(0)]),
            ("upper", vec![int(-1)]),
        ],
    );
    close(
        &got,
        &[3, 4],
        &[0.0, 1.0, 2.0, 3.0, 0.0, 5.0, 6.0, 7.0, 0.0, 0.0, 10.0, 11.0],
        0.0,
    );
    let row = f(&[1, 3], &[1.0, 2.0, 3.0]);
    let pad = |mode: &str| {
        op(
            "pad",
            &[
                ("x", vec![row.clone()]),
                ("pad", vec![ints(&[0, 0, 2, 1])]),
                ("mode", vec![text(mode)]),
                ("constant_val", vec![fs(9.0)]),
            ],
        )
    };
    close(
        &pad("constant"),
        &[1, 6],
        &[9.0, 9.0, 1.0, 2.0, 3.0, 9.0],
        0.0,
    );
    close(
        &pad("reflect"),
        &[1, 6],
        &[3.0, 2.0, 1.0, 2.0, 3.0, 2.0],
        0.0,
    );
    close(
        &pad("replicate"),
        &[1, 6],
        &[1.0, 1.0, 1.0, 2.0, 3.0, 3.0],
        0.0,
    );
    let got = op_n("shape", &[("x", vec![t])], &[DType::Int32]);
    assert_eq!(ivals(&got[0]), vec![3, 4]);
}

// ----- attention, image -----------------------------------------------------------------

#[test]
fn scaled_dot_product_attention_matches_its_definition() {
    let (b, l, s, e) = (2, 3, 4, 5);
    let q = noise(b * l * e, 81);
    let k = noise(b * s * e, 82);
    let v = noise(b * s * e, 83);
    let reference = |mask: Option<&[bool]>| {
        let mut out = vec![0f32; b * l * e];
        for bi in 0..b {
            for i in 0..l {
                let sc: Vec<f64> = (0..s)
                    .map(|j| {
                        let d: f64 = (0..e)
                            .map(|c| {
                                f64::from(q[(bi * l + i) * e + c])
                                    * f64::from(k[(bi * s + j) * e + c])
                            })
                            .sum();
                        if mask.is_some_and(|m| !m[i * s + j]) {
                            f64::NEG_INFINITY
                        } else {
                            d / (e as f64).sqrt()
                        }
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = sc.iter().map(|x| (x - m).exp()).sum();
                for c in 0..e {
                    out[(bi * l + i) * e + c] = (0..s)
                        .map(|j| (sc[j] - m).exp() / z * f64::from(v[(bi * s + j) * e + c]))
                        .sum::<f64>() as f32;
                }
            }
        }
        out
    };
    let qv = f(&[b, l, e], &q);
    let kv = f(&[b, s, e], &k);
    let vv = f(&[b, s, e], &v);
    let got = op(
        "scaled_dot_product_attention",
        &[
            ("query", vec![qv.clone()]),
            ("key", vec![kv.clone()]),
            ("value", vec![vv.clone()]),
        ],
    );
    close(&got, &[b, l, e], &reference(None), 1e-5);
    // A causal-style bool mask [L, S].
    let mask: Vec<bool> = (0..l * s).map(|i| (i % s) <= (i / s)).collect();
    let m = Value::Tensor {
        t: Tensor::from_vec(
            mask.iter().map(|&x| u8::from(x)).collect::<Vec<u8>>(),
            (l, s),
            &Device::Cpu,
        )
        .unwrap(),
        dtype: DType::Bool,
    };
    let got = op(
        "scaled_dot_product_attention",
        &[
            ("query", vec![qv]),
            ("key", vec![kv]),
            ("value", vec![vv]),
            ("attn_mask", vec![m]),
        ],
    );
    close(&got, &[b, l, e], &reference(Some(&mask)), 1e-5);
}

#[test]
fn upsample_nearest_neighbor_integer_and_fractional() {
    let x = f(&[1, 1, 2, 2], &[1.0, 2.0, 3.0, 4.0]);
    let got = op(
        "upsample_nearest_neighbor",
        &[
            ("x", vec![x.clone()]),
            ("scale_factor_height", vec![fs(2.0)]),
            ("scale_factor_width", vec![int(2)]),
        ],
    );
    close(
        &got,
        &[1, 1, 4, 4],
        &[
            1.0, 1.0, 2.0, 2.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0, 3.0, 3.0, 4.0, 4.0,
        ],
        0.0,
    );
    // 1.5x: out = floor(2*1.5) = 3, pixel i reads floor(i/1.5) = 0, 0, 1.
    let got = op(
        "upsample_nearest_neighbor",
        &[("x", vec![x]), ("scale_factor_height", vec![fs(1.5)])],
    );
    close(&got, &[1, 1, 3, 2], &[1.0, 2.0, 1.0, 2.0, 3.0, 4.0], 0.0);
}

#[test]
fn unknown_op_and_missing_parameters_are_errors() {
    let e = op_err("no_such_op", &[("x", vec![fs(1.0)])]);
    assert!(e.contains("unsupported op 'no_such_op'"), "{e}");
    let e = op_err("add", &[("x", vec![fs(1.0)])]);
    assert!(e.contains("missing parameter 'y'"), "{e}");
    let e = op_err(
        "add",
        &[
            ("x", vec![f(&[2], &[1.0, 2.0])]),
            ("y", vec![f(&[3], &[1.0, 2.0, 3.0])]),
        ],
    );
    assert!(e.contains("do not broadcast"), "{e}");
}
