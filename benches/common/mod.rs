//! What the kernel benchmarks share: UNet-like fp16 weights and a CPU-time
//! timer that holds on a shared machine.

use half::f16;

/// `n` fp16 weights, normal with standard deviation `std`, with per-row
/// scales (rows of `row` values, five scale levels) and rare large
/// outliers, as in trained weights. Deterministic for a `seed`.
pub fn normal_f16(n: usize, seed: u64, std: f64, row: usize) -> Vec<f16> {
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
            let scale = 1.0 + 0.5 * ((t / row) % 5) as f64 / 5.0;
            let x = if next() < 0.001 { 8.0 * g.signum() } else { g };
            f16::from_f64(std * scale * x)
        })
        .collect()
}

/// CPU seconds per unit of work: `round` does some work and returns how
/// many units it did; rounds repeat until they have used 0.3 s of this
/// thread's CPU, and the best of three such runs is returned.
pub fn cpu_per_unit(mut round: impl FnMut() -> usize) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t0 = thread_cpu();
        let mut units = 0usize;
        while thread_cpu() - t0 < 0.3 {
            units += round();
        }
        best = best.min((thread_cpu() - t0) / units as f64);
    }
    best
}

/// On-CPU seconds of the calling thread (Linux `schedstat`, nanoseconds);
/// falls back to the process's user+system ticks elsewhere.
pub fn thread_cpu() -> f64 {
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
