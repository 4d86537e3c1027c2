//! Benchmark of the linear-quantization kernel on UNet-like fp16 weights
//! (`cargo bench --bench quantize`). For each case it prints this thread's
//! CPU nanoseconds per weight of
//!
//! * `fp16`: `quantize_blocks_f16` (block ranges, scales, codes, error sums
//!   on the fp16 values read in place, as the quantize pass runs it);
//! * `f32`: `quantize_blocks` on the same values widened to f32 first,
//!
//! in a one-thread rayon pool, so the figures are per core.
//!
//! CPU time comes from `/proc/thread-self/schedstat`, so figures hold on a
//! shared machine; each case repeats until it has used 0.3 s of CPU and the
//! best of three such rounds is printed.

mod common;

use common::{cpu_per_unit, normal_f16};
use sdcompress::kernels::quantize::{quantize_blocks, quantize_blocks_f16, QType, Spec, Store};

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
        "case", "fp16 ns/w", "f32 ns/w", "rel. SSE"
    );
    for (name, shape, grid, qtype, symmetric) in cases {
        let n = shape[0] * shape[1];
        let w = normal_f16(n, 7, 0.03, 1280);
        let mut x = vec![0f32; n];
        let spec = Spec {
            qtype: *qtype,
            symmetric: *symmetric,
        };
        let (in_place, widened, rel) = pool.install(|| {
            let mut rel = 0.0;
            let in_place = cpu_per_unit(|| {
                let q = quantize_blocks_f16(&w, shape, grid, spec).expect("finite");
                rel = q.sse / q.signal;
                std::hint::black_box(q);
                1
            });
            half::slice::HalfFloatSliceExt::convert_to_f32_slice(&w[..], &mut x);
            let widened = cpu_per_unit(|| {
                let q = quantize_blocks(&x, shape, grid, spec, Store::F16).expect("finite");
                std::hint::black_box(q);
                1
            });
            (in_place, widened, rel)
        });
        println!(
            "{name:<36} {:>12.3} {:>14.3} {:>12.3e}",
            in_place * 1e9 / n as f64,
            widened * 1e9 / n as f64,
            rel
        );
    }
}
