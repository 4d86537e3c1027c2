//! Benchmark of the palettization kernel on UNet-like fp16 groups
//! (`cargo bench --bench kmeans`). Prints time per group and per million
//! weights for the group shapes that dominate SD-1.5 / SDXL at 4 bits.

use half::f16;
use sdcompress::kernels::palettize::{palettize_f16, Mode, Scratch16};
use std::time::Instant;

fn normal_f16(n: usize, seed: u64, std: f64) -> Vec<f16> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (u1, u2) = (next().max(1e-300), next());
            f16::from_f64(std * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos())
        })
        .collect()
}

fn main() {
    let cases: &[(&str, usize, u32)] = &[
        ("group 16 x 320 (SD attn 320)", 16 * 320, 4),
        ("group 16 x 1280 (linear 1280)", 16 * 1280, 4),
        ("group 16 x 5120 (ff out)", 16 * 5120, 4),
        ("group 16 x 11520 (conv 1280x3x3)", 16 * 11520, 4),
        ("tensor 1280 x 1280", 1280 * 1280, 4),
        ("tensor 1280 x 1280, 8-bit", 1280 * 1280, 8),
    ];
    let mut sc = Scratch16::default();
    for &(name, n, nbits) in cases {
        let groups: Vec<Vec<f16>> = (0..8).map(|g| normal_f16(n, g, 0.03)).collect();
        // Warm up, then time.
        palettize_f16(&groups[0], nbits, Mode::Kmeans, &mut sc).expect("finite");
        let t = Instant::now();
        let cpu0 = cpu_seconds();
        for g in &groups {
            palettize_f16(g, nbits, Mode::Kmeans, &mut sc).expect("finite");
        }
        let dt = t.elapsed().as_secs_f64() / groups.len() as f64;
        let dcpu = (cpu_seconds() - cpu0) / groups.len() as f64;
        println!(
            "{name:<36} {nbits}-bit: {:>8.3} ms/group wall, {:>8.3} ms CPU, {:>7.1} ms per million weights",
            dt * 1e3,
            dcpu * 1e3,
            dt * 1e3 * 1e6 / n as f64
        );
    }
}

/// User+system CPU seconds of this process (Linux; 0 elsewhere).
fn cpu_seconds() -> f64 {
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
