//! `sdcompress quantize`.

use super::args::{QDTypeArg, QGranularityArg, QuantizeArgs};
use anyhow::{anyhow, Result};
use sdcompress::compress::config::{
    Entry, OptimizationConfig, QuantGranularity, QuantMode, QuantizeEntry,
};
use sdcompress::compress::quantize::{Quantize, QuantizeOptions};
use sdcompress::kernels::quantize::QType;
use sdcompress::package::Package;
use std::time::Instant;

pub fn run(a: QuantizeArgs, quiet: bool) -> Result<u8> {
    let t0 = Instant::now();
    let c = &a.common;
    let pool = super::thread_pool(c.threads)?;
    let selection = super::selection(c)?;
    let mut config: OptimizationConfig<QuantizeEntry> = match &c.config {
        Some(p) => OptimizationConfig::load(p).map_err(|e| anyhow!(e))?,
        None => OptimizationConfig::default(),
    };
    let flags = QuantizeEntry {
        mode: if a.asymmetric {
            Some(QuantMode::Linear)
        } else if a.symmetric {
            Some(QuantMode::LinearSymmetric)
        } else {
            None
        },
        dtype: a.dtype.map(|d| match d {
            QDTypeArg::Int8 => QType::Int8,
            QDTypeArg::Uint8 => QType::Uint8,
            QDTypeArg::Int4 => QType::Int4,
            QDTypeArg::Uint4 => QType::Uint4,
        }),
        granularity: a.granularity.map(|g| match g {
            QGranularityArg::PerTensor => QuantGranularity::PerTensor,
            QGranularityArg::PerChannel => QuantGranularity::PerChannel,
            QGranularityArg::PerBlock => QuantGranularity::PerBlock,
        }),
        block_size: a.block_size,
        weight_threshold: c.weight_threshold,
    };
    if a.block_size.is_some()
        && matches!(
            flags.granularity,
            Some(QuantGranularity::PerTensor | QuantGranularity::PerChannel)
        )
    {
        anyhow::bail!("--block-size needs --granularity per-block");
    }
    config.global_config = Some(flags.over(&config.global_config.clone().unwrap_or_default()));
    let global = config.global_config.clone().unwrap_or_default();
    let opts = QuantizeOptions {
        config,
        selection,
        upgrade_opset: c.upgrade_opset || c.target.is_some(),
        min_spec: super::min_spec(c),
    };
    let pkg = Package::open(&c.model)?;
    let mut pass =
        Quantize::plan(&pkg, &opts).map_err(|e| anyhow!("{}: {e}", c.model.display()))?;
    let granularity = global
        .granularity
        .unwrap_or(if global.block_size.is_some() {
            QuantGranularity::PerBlock
        } else {
            QuantGranularity::PerChannel
        });
    let options = serde_json::json!({
        "dtype": global.dtype.unwrap_or(QType::Int8),
        "mode": global.mode.unwrap_or(QuantMode::LinearSymmetric),
        "granularity": granularity,
        "block_size": (granularity == QuantGranularity::PerBlock).then(|| global.block_size.unwrap_or(32)),
        "weight_threshold": c.weight_threshold.unwrap_or(2048),
        "include": c.include, "exclude": c.exclude, "op_types": c.op_types,
        "config": c.config.as_ref().map(|p| p.display().to_string()),
        "target": pass.out_target.ios,
        "threads": c.threads, "seed": c.seed,
    });
    super::run_pass(
        &pool,
        "quantize",
        "quantized",
        c,
        &pkg,
        &mut pass,
        options,
        t0,
        quiet,
    )
}
