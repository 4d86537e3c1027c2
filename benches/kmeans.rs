//! Benchmark of the palettization kernel on UNet-like fp16 groups
//! (`cargo bench --bench kmeans`). For the group shapes that dominate
//! SD-1.5 / SDXL at 4 bits it prints CPU time per group and per million
//! weights of
//!
//! * `now`: `palettize_f16` as shipped (histogram from the counting table,
//!   exact k-means, indices);
//! * `before`: the front end of main@ff143d8 rebuilt here (key-transformed
//!   histogram with a branch per table entry, a separate NaN scan, a fresh
//!   index vector) around the same k-means, so the ratio isolates what the
//!   front end costs;
//! * `kmeans`: the exact k-means alone on the group's histogram.
//!
//! CPU time is this thread's on-CPU nanoseconds (`/proc/thread-self/schedstat`),
//! so figures hold on a shared machine; each case repeats until it has used
//! 0.3 s of CPU and the best of three such rounds is printed.

mod common;

use common::{cpu_per_unit, normal_f16};
use half::f16;
use sdcompress::kernels::kmeans::{kmeans_1d, Histogram};
use sdcompress::kernels::palettize::{palettize_f16, Mode, Scratch16};

/// Order-preserving key of a finite fp16 pattern (as main@ff143d8 had it).
fn key16(bits: u16) -> u16 {
    let bits = if bits == 0x8000 { 0 } else { bits };
    if bits & 0x8000 != 0 {
        !bits
    } else {
        bits | 0x8000
    }
}

fn unkey16(k: u16) -> u16 {
    if k & 0x8000 != 0 {
        k & 0x7fff
    } else {
        !k
    }
}

/// main@ff143d8's front end around the same k-means (kmeans mode, groups of
/// at least 8192 values took the table path there).
fn before(values: &[f16], nbits: u32, counts: &mut [u32], index_of: &mut [u8]) -> Vec<u8> {
    assert!(values.iter().all(|v| v.is_finite()));
    let mut present: Vec<u16> = Vec::new();
    if values.len() >= 8192 {
        for v in values {
            counts[key16(v.to_bits()) as usize] += 1;
        }
        for (key, c) in counts.iter().enumerate() {
            if *c != 0 {
                present.push(key as u16);
            }
        }
    } else {
        let mut keys: Vec<u16> = values.iter().map(|v| key16(v.to_bits())).collect();
        keys.sort_unstable();
        for key in keys {
            if counts[key as usize] == 0 {
                present.push(key);
            }
            counts[key as usize] += 1;
        }
    }
    let hist = Histogram {
        values: present
            .iter()
            .map(|&k| f16::from_bits(unkey16(k)).to_f64())
            .collect(),
        counts: present
            .iter()
            .map(|&k| f64::from(counts[k as usize]))
            .collect(),
    };
    for &k in &present {
        counts[k as usize] = 0;
    }
    let lutf: Vec<f64> = kmeans_1d(&hist, 1 << nbits)
        .centroids
        .iter()
        .map(|&c| f16::from_f64(c).to_f64())
        .collect();
    let mut j = 0;
    for (&key, &x) in present.iter().zip(&hist.values) {
        while j + 1 < lutf.len() && (lutf[j + 1] - x).abs() < (lutf[j] - x).abs() {
            j += 1;
        }
        index_of[key as usize] = j as u8;
    }
    values
        .iter()
        .map(|v| index_of[key16(v.to_bits()) as usize])
        .collect()
}

fn main() {
    let cases: &[(&str, usize, u32)] = &[
        ("group 16 x 320 (SD attn 320)", 16 * 320, 4),
        ("group 16 x 1280 (linear 1280)", 16 * 1280, 4),
        ("group 16 x 5120 (ff out)", 16 * 5120, 4),
        ("group 16 x 11520 (conv 1280x3x3)", 16 * 11520, 4),
        ("tensor 1280 x 1280", 1280 * 1280, 4),
        ("tensor 5120 x 1280 (ff in)", 5120 * 1280, 4),
        ("tensor 1280 x 1280, 8-bit", 1280 * 1280, 8),
    ];
    let mut sc = Scratch16::default();
    let (mut counts, mut index_of) = (vec![0u32; 1 << 16], vec![0u8; 1 << 16]);
    println!(
        "{:<34} {:>5} {:>9} {:>11} {:>11} {:>11} {:>7} {:>12}",
        "case", "nbits", "distinct", "now ms", "before ms", "kmeans ms", "before/now", "now ms/Mw"
    );
    for &(name, n, nbits) in cases {
        let groups: Vec<Vec<f16>> = (0..4).map(|g| normal_f16(n, g + 1, 0.03, 64)).collect();
        // The shipped front end must agree with the rebuilt old one.
        for g in &groups {
            let now = palettize_f16(g, nbits, Mode::Kmeans, &mut sc).expect("finite");
            assert_eq!(now.indices, before(g, nbits, &mut counts, &mut index_of));
        }
        let hists: Vec<Histogram> = groups
            .iter()
            .map(|g| Histogram::from_values(&g.iter().map(|v| v.to_f64()).collect::<Vec<_>>()))
            .collect();
        let distinct = hists.iter().map(Histogram::len).sum::<usize>() / hists.len();
        let now = cpu_per_unit(|| {
            for g in &groups {
                std::hint::black_box(
                    palettize_f16(g, nbits, Mode::Kmeans, &mut sc).expect("finite"),
                );
            }
            groups.len()
        });
        let old = cpu_per_unit(|| {
            for g in &groups {
                std::hint::black_box(before(g, nbits, &mut counts, &mut index_of));
            }
            groups.len()
        });
        let km = cpu_per_unit(|| {
            for h in &hists {
                std::hint::black_box(kmeans_1d(h, 1 << nbits));
            }
            hists.len()
        });
        println!(
            "{name:<34} {nbits:>5} {distinct:>9} {:>11.3} {:>11.3} {:>11.3} {:>9.2}x {:>12.1}",
            now * 1e3,
            old * 1e3,
            km * 1e3,
            old / now,
            now * 1e3 * 1e6 / n as f64
        );
    }
}
