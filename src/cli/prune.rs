//! `sdcompress prune`.

use super::args::PruneArgs;
use anyhow::{anyhow, Result};
use sdcompress::compress::config::{Entry, OptimizationConfig, PruneEntry};
use sdcompress::compress::prune::{Prune, PruneOptions};
use sdcompress::package::Package;
use std::time::Instant;

pub fn run(a: PruneArgs, quiet: bool) -> Result<u8> {
    let t0 = Instant::now();
    let c = &a.common;
    let pool = super::thread_pool(c.threads)?;
    let selection = super::selection(c)?;
    let mut config: OptimizationConfig<PruneEntry> = match &c.config {
        Some(p) => OptimizationConfig::load(p).map_err(|e| anyhow!(e))?,
        None => OptimizationConfig::default(),
    };
    let lut = super::lut_entry(&a.lut, c.weight_threshold)?;
    let flags = PruneEntry {
        sparsity: a.sparsity,
        n_m: a.n_m,
        block_size: a.block_size,
        dim: a.dim,
        weight_threshold: c.weight_threshold,
        nbits: lut.nbits,
        mode: lut.mode,
        granularity: lut.granularity,
        group_size: lut.group_size,
        channel_axis: lut.channel_axis,
        group_size_fallback: lut.group_size_fallback,
    };
    // Flags override the config's global level.
    config.global_config = Some(flags.over(&config.global_config.clone().unwrap_or_default()));
    let opts = PruneOptions {
        config,
        selection,
        upgrade_opset: c.upgrade_opset || c.target.is_some(),
        min_spec: super::min_spec(c),
    };
    // Pre-flight: settings are checked before the model is read; the
    // message names the config file when there is one.
    opts.validate()
        .map_err(|e| anyhow!("{}: {e}", c.config.as_deref().unwrap_or(&c.model).display()))?;
    let pkg = Package::open(&c.model)?;
    let mut pass = Prune::plan(&pkg, &opts).map_err(|e| anyhow!("{}: {e}", c.model.display()))?;
    let joint = a.lut.nbits.is_some() || a.lut.mode.is_some();
    let options = serde_json::json!({
        "method": "magnitude",
        "sparsity": a.sparsity, "n_m": a.n_m, "block_size": a.block_size, "dim": a.dim,
        "nbits": a.lut.nbits, "group_size": a.lut.group_size,
        "granularity": lut.granularity, "mode": lut.mode, "channel_axis": a.lut.channel_axis,
        "weight_threshold": c.weight_threshold.unwrap_or(2048),
        "include": c.include, "exclude": c.exclude, "op_types": c.op_types,
        "config": c.config.as_ref().map(|p| p.display().to_string()),
        "target": pass.out_target.ios,
        "threads": c.threads, "seed": c.seed,
    });
    let verb = if joint {
        "pruned + palettized"
    } else {
        "pruned"
    };
    super::run_pass(&pool, "prune", verb, c, &pkg, &mut pass, options, t0, quiet)
}
