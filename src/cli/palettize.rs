//! `sdcompress palettize`.

use super::args::PalettizeArgs;
use anyhow::{anyhow, Result};
use sdcompress::compress::config::{
    Entry, Granularity, GroupSizeFallback, LutDType, OptimizationConfig, ScaleAxis,
};
use sdcompress::compress::palettize::{Palettize, PalettizeOptions};
use sdcompress::kernels::palettize::Mode;
use sdcompress::package::Package;
use std::time::Instant;

pub fn run(a: PalettizeArgs, quiet: bool) -> Result<u8> {
    let t0 = Instant::now();
    let c = &a.common;
    let pool = super::thread_pool(c.threads)?;
    let selection = super::selection(c)?;
    let mut config: OptimizationConfig = match &c.config {
        Some(p) => OptimizationConfig::load(p).map_err(|e| anyhow!(e))?,
        None => OptimizationConfig::default(),
    };
    let mut flags = super::lut_entry(&a.lut, c.weight_threshold)?;
    flags.lut_dtype = a.lut_dtype.map(|d| match d {
        super::args::LutDTypeArg::Int8 => LutDType::Int8,
        super::args::LutDTypeArg::Uint8 => LutDType::Uint8,
    });
    flags.per_channel_scale = a.per_channel_scale.then_some(true);
    flags.cluster_dim = a.cluster_dim.map(|d| d as usize);
    flags.scale_axis = a.scale_axis.map(|x| match x {
        super::args::ScaleAxisArg::Input => ScaleAxis::Input,
        super::args::ScaleAxisArg::Output => ScaleAxis::Output,
    });
    config.global_config = Some(flags.over(&config.global_config.clone().unwrap_or_default()));
    let global = config.global_config.clone().unwrap_or_default();
    let opts = PalettizeOptions {
        config,
        selection,
        upgrade_opset: c.upgrade_opset || c.target.is_some(),
        min_spec: super::min_spec(c),
        seed: c.seed,
    };
    let pkg = Package::open(&c.model)?;
    let mut pass =
        Palettize::plan(&pkg, &opts).map_err(|e| anyhow!("{}: {e}", c.model.display()))?;
    let options = serde_json::json!({
        "nbits": a.lut.nbits, "group_size": a.lut.group_size,
        "granularity": global.granularity.unwrap_or(
            if a.lut.group_size.is_some() { Granularity::PerGroupedChannel } else { Granularity::PerTensor }
        ),
        "mode": global.mode.unwrap_or(Mode::Kmeans),
        "group_size_fallback": global.group_size_fallback.unwrap_or(GroupSizeFallback::Divisor),
        "weight_threshold": c.weight_threshold.unwrap_or(2048),
        "lut_dtype": global.lut_dtype,
        "per_channel_scale": global.per_channel_scale.unwrap_or(false),
        "scale_axis": global.per_channel_scale.unwrap_or(false)
            .then(|| global.scale_axis.unwrap_or(ScaleAxis::Input)),
        "cluster_dim": global.cluster_dim.unwrap_or(1),
        "include": c.include, "exclude": c.exclude, "op_types": c.op_types,
        "config": c.config.as_ref().map(|p| p.display().to_string()),
        "target": pass.out_target.ios,
        "threads": c.threads, "seed": c.seed,
    });
    super::run_pass(
        &pool,
        "palettize",
        "palettized",
        c,
        &pkg,
        &mut pass,
        options,
        t0,
        quiet,
    )
}
