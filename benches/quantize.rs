//! Benchmark of the linear-quantization kernel on UNet-like fp16 weights
//! (`cargo bench --bench quantize`). For each case it prints this thread's
//! CPU nanoseconds per weight of
//!
//! * `widen`: the fp16 → f32 slice conversion the quantize pass does first;
//! * `quantize`: `quantize_blocks` (block ranges, scales, codes, error sums)
//!   in a one-thread rayon pool, so the figure is per core.
//!
//! CPU time comes from `/proc/thread-self/schedstat`, so figures hold on a
//! shared machine; each case repeats until it has used 0.3 s of CPU and the
//! best of three such rounds is printed.

use half::f16;
use sdcompress::kernels::quantize::{quantize_blocks, QType, Spec, Store};

fn normal_f16(n: usize, seed: u64, std: f64) -> Vec<f16> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|t| {
            let (u1, u2) = (next().max(1e-300), next());
            let g = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            // Per-row scales and rare large outliers, as in trained weights.
            let row = 1.0 + 0.5 * ((t / 1280) % 5) as f64 / 5.0;
            let x = if next() < 0.001 { 8.0 * g.signum() } else { g };
            f16::from_f64(std * row * x)
        })
        .collect()
}

/// CPU seconds per call of `f`: best of three rounds of at least 0.3 s of
/// this thread's CPU each.
fn cpu_per_call(mut f: impl FnMut()) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t0 = thread_cpu();
        let mut calls = 0usize;
        while thread_cpu() - t0 < 0.3 {
            f();
            calls += 1;
        }
        best = best.min((thread_cpu() - t0) / calls as f64);
    }
    best
}

/// Name, shape, block grid, code type, symmetric.
type Case = (&'static str, [usize; 2], [usize; 2], QType, bool);

fn main() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a one-thread pool");
    let cases: &[Case] = &[
        (
            "int8 per channel 1280x1280",
            [1280, 1280],
            [1280, 1],
            QType::Int8,
            true,
        ),
        (
            "int8 per channel 320x2880 (conv)",
            [320, 2880],
            [320, 1],
            QType::Int8,
            true,
        ),
        (
            "uint8 asym per channel 1280x1280",
            [1280, 1280],
            [1280, 1],
            QType::Uint8,
            false,
        ),
        (
            "int4 per block 32, 1280x1280",
            [1280, 1280],
            [1280, 40],
            QType::Int4,
            true,
        ),
        (
            "int8 per tensor 1280x1280",
            [1280, 1280],
            [1, 1],
            QType::Int8,
            true,
        ),
    ];
    println!(
        "{:<36} {:>12} {:>14} {:>12}",
        "case", "widen ns/w", "quantize ns/w", "rel. SSE"
    );
    for (name, shape, grid, qtype, symmetric) in cases {
        let n = shape[0] * shape[1];
        let w = normal_f16(n, 7, 0.03);
        let mut x = vec![0f32; n];
        let spec = Spec {
            qtype: *qtype,
            symmetric: *symmetric,
        };
        let (widen, quant, rel) = pool.install(|| {
            let widen = cpu_per_call(|| {
                half::slice::HalfFloatSliceExt::convert_to_f32_slice(&w[..], &mut x);
                std::hint::black_box(&x);
            });
            let mut rel = 0.0;
            let quant = cpu_per_call(|| {
                let q = quantize_blocks(&x, shape, grid, spec, Store::F16).expect("finite");
                rel = q.sse / q.signal;
                std::hint::black_box(q);
            });
            (widen, quant, rel)
        });
        println!(
            "{name:<36} {:>12.3} {:>14.3} {:>12.3e}",
            widen * 1e9 / n as f64,
            quant * 1e9 / n as f64,
            rel
        );
    }
}

/// On-CPU seconds of the calling thread (Linux `schedstat`, nanoseconds);
/// falls back to the process's user+system ticks elsewhere.
fn thread_cpu() -> f64 {
    if let Some(ns) = std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
    {
        return ns as f64 * 1e-9;
    }
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit(')').next()?.to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ut: f64 = f.get(11)?.parse().ok()?;
            let st: f64 = f.get(12)?.parse().ok()?;
            Some((ut + st) / 100.0)
        })
        .unwrap_or(0.0)
}
