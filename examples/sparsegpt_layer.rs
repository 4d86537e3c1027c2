//! Prunes one layer file with the SparseGPT kernel, for the oracle check
//! and the benchmarks (not part of the CLI).
//!
//! ```text
//! cargo run --release --example sparsegpt_layer -- LAYER.safetensors --out OUT.safetensors \
//!     [--sparsity 0.5 | --nm 2:4] [--blocksize 128] [--percdamp 0.01] [--mask-rule reference|exact] \
//!     [--stride S] [--padding P] [--dilation D] [--groups G] [--nsamples N] [--measure-error] \
//!     [--hessian-f32] [--dump-h H.safetensors] [--threads N]
//! ```
//!
//! The input holds `W` and `X` (activations) or `H`, as the shared oracle's
//! `sparsegpt_ref.py` reads them, and the flags mean what they mean there,
//! so `sparsegpt_ref.py check LAYER OUT <same flags>` verifies the output.
//! A JSON summary (loss, counts, seconds) goes to stdout.

use anyhow::{bail, Context, Result};
use clap::Parser;
use sdcompress::sparsegpt::layerfile::{run_layer, write, LayerFile, LayerJob, OutTensor};
use sdcompress::sparsegpt::{ConvGeometry, MaskRule, Pattern, Precision, PruneParams};
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "SparseGPT on one layer file (oracle format)")]
struct Args {
    /// Layer file: W and X or H.
    input: PathBuf,
    /// Output file (W, mask, row_losses).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Unstructured sparsity.
    #[arg(long, default_value_t = 0.5)]
    sparsity: f64,
    /// N:M pattern, e.g. 2:4 (overrides --sparsity).
    #[arg(long)]
    nm: Option<String>,
    /// Sweep block size.
    #[arg(long, default_value_t = 128)]
    blocksize: usize,
    /// Damping relative to the mean Hessian diagonal.
    #[arg(long, default_value_t = 0.01)]
    percdamp: f64,
    /// reference (K+1, ties included) or exact (K per block).
    #[arg(long, default_value = "reference")]
    mask_rule: String,
    /// Conv stride: s or sh,sw.
    #[arg(long, default_value = "1")]
    stride: String,
    /// Conv zero padding: p | ph,pw | t,b,l,r.
    #[arg(long, default_value = "0")]
    padding: String,
    /// Conv dilation: d or dh,dw.
    #[arg(long, default_value = "1")]
    dilation: String,
    /// Conv groups (each pruned as its own layer).
    #[arg(long, default_value_t = 1)]
    groups: usize,
    /// Sample count N in H = (2/N) Σ x xᵀ (only scales the loss).
    #[arg(long)]
    nsamples: Option<u64>,
    /// Also compute the relative reconstruction error.
    #[arg(long)]
    measure_error: bool,
    /// Build the Hessian with f32 tile products (summed in f64).
    #[arg(long)]
    hessian_f32: bool,
    /// Also write the Hessian built from X to this file (key H, f64).
    #[arg(long)]
    dump_h: Option<PathBuf>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

fn ints(s: &str, what: &str) -> Result<Vec<usize>> {
    s.split(',')
        .map(|t| {
            t.trim()
                .parse::<usize>()
                .with_context(|| format!("--{what} {s}"))
        })
        .collect()
}

fn pair(s: &str, what: &str) -> Result<[usize; 2]> {
    match ints(s, what)?.as_slice() {
        [a] => Ok([*a, *a]),
        [a, b] => Ok([*a, *b]),
        _ => bail!("--{what} takes one or two integers, got {s}"),
    }
}

fn main() -> Result<()> {
    let a = Args::parse();
    if let Some(t) = a.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()?;
    }
    let pattern = match &a.nm {
        Some(nm) => {
            let (n, m) = nm.split_once(':').context("--nm N:M")?;
            Pattern::NOfM {
                n: n.parse().context("--nm N:M")?,
                m: m.parse().context("--nm N:M")?,
            }
        }
        None => Pattern::Unstructured {
            sparsity: a.sparsity,
            rule: match a.mask_rule.as_str() {
                "reference" => MaskRule::Reference,
                "exact" => MaskRule::Exact,
                other => bail!("--mask-rule reference|exact, got {other}"),
            },
        },
    };
    let padding = match ints(&a.padding, "padding")?.as_slice() {
        [p] => [*p; 4],
        [ph, pw] => [*ph, *ph, *pw, *pw],
        [t, b, l, r] => [*t, *b, *l, *r],
        _ => bail!("--padding takes 1, 2 or 4 integers"),
    };
    let job = LayerJob {
        params: PruneParams {
            pattern,
            percdamp: a.percdamp,
            sweep_block: a.blocksize,
            damp_retries: 2,
            measure_error: a.measure_error,
        },
        conv: ConvGeometry {
            kernel: [1, 1],
            stride: pair(&a.stride, "stride")?,
            dilation: pair(&a.dilation, "dilation")?,
            padding,
            groups: a.groups,
        },
        nsamples: a.nsamples,
        precision: if a.hessian_f32 {
            Precision::F32Tiles
        } else {
            Precision::F64
        },
        dump_hessian: a.dump_h.clone(),
    };
    let file = LayerFile::open(&a.input)?;
    let r = run_layer(&file, &job)?;
    drop(file);
    if let Some(out) = &a.out {
        write(
            out,
            &[
                ("W", r.shape.clone(), OutTensor::F32(&r.weights)),
                ("mask", r.shape.clone(), OutTensor::U8(&r.mask)),
                (
                    "row_losses",
                    vec![r.row_losses.len()],
                    OutTensor::F64(&r.row_losses),
                ),
            ],
        )?;
    }
    let numel = r.weights.len();
    let summary = serde_json::json!({
        "shape": r.shape,
        "loss": r.loss,
        "pruned": r.pruned,
        "mask_fraction": r.pruned as f64 / numel as f64,
        "achieved_sparsity": r.weights.iter().filter(|&&v| v == 0.0).count() as f64 / numel as f64,
        "dead_columns": r.dead_columns,
        "attempts": r.attempts,
        "rel_errors": r.rel_errors,
        "hessian_seconds": r.hessian_seconds,
        "prune_seconds": r.prune_seconds,
        "threads": rayon::current_num_threads(),
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
