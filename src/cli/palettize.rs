//! `sdcompress palettize`.

use super::args::{GranularityArg, ModeArg, PalettizeArgs, TargetArg};
use super::progress::bar;
use anyhow::{anyhow, Result};
use sdcompress::compress::config::{Granularity, OptimizationConfig, PalettizeEntry};
use sdcompress::compress::palettize::{Palettize, PalettizeOptions};
use sdcompress::compress::rewrite_package;
use sdcompress::compress::select::Selection;
use sdcompress::kernels::palettize::Mode;
use sdcompress::package::Package;
use sdcompress::report::{Report, Totals, SCHEMA};
use std::io::Write;
use std::time::Instant;

pub fn run(a: PalettizeArgs, quiet: bool) -> Result<u8> {
    let t0 = Instant::now();
    let c = &a.common;
    let pool = super::thread_pool(c.threads)?;
    let selection = Selection {
        include: super::regex_flag(&c.include, "--include")?,
        exclude: super::regex_flag(&c.exclude, "--exclude")?,
        op_types: c.op_types.clone().map(|v| v.into_iter().collect()),
    };
    let mut config = match &c.config {
        Some(p) => OptimizationConfig::load(p).map_err(|e| anyhow!(e))?,
        None => OptimizationConfig::default(),
    };
    let flags = PalettizeEntry {
        mode: a.mode.map(|m| match m {
            ModeArg::Kmeans => Mode::Kmeans,
            ModeArg::Uniform => Mode::Uniform,
            ModeArg::Unique => Mode::Unique,
        }),
        nbits: a.nbits,
        granularity: a.granularity.map(|g| match g {
            GranularityArg::PerTensor => Granularity::PerTensor,
            GranularityArg::PerGroupedChannel => Granularity::PerGroupedChannel,
        }),
        group_size: a.group_size,
        channel_axis: a.channel_axis,
        weight_threshold: c.weight_threshold,
    };
    if flags.granularity == Some(Granularity::PerTensor) && flags.group_size.is_some() {
        return Err(anyhow!("--group-size contradicts --granularity per-tensor"));
    }
    config.global_config = Some(flags.over(&config.global_config.clone().unwrap_or_default()));
    let min_spec = c.target.map(|t| match t {
        TargetArg::Ios16 => 7,
        TargetArg::Ios17 => 8,
        TargetArg::Ios18 => 9,
    });
    let opts = PalettizeOptions {
        config,
        selection,
        upgrade_opset: c.upgrade_opset || c.target.is_some(),
        min_spec,
    };
    let pkg = Package::open(&c.model)?;
    let spec_before = pkg.model.specification_version;
    let mut pass =
        Palettize::plan(&pkg, &opts).map_err(|e| anyhow!("{}: {e}", c.model.display()))?;
    let pb = bar(0, "palettize", quiet);
    let progress = |done: u64, total: u64| {
        pb.set_length(total);
        pb.set_position(done);
    };
    let stats = pool.install(|| rewrite_package(&pkg, &c.output, c.force, &mut pass, &progress))?;
    pb.finish_and_clear();
    let before: u64 = pkg.blobs.values().map(|f| f.len()).sum();
    let totals = Totals::from_weights(
        &pass.reports,
        before,
        stats.weight_bytes,
        t0.elapsed().as_secs_f64(),
    );
    let report = Report {
        schema: SCHEMA,
        command: "palettize".into(),
        input: c.model.display().to_string(),
        output: c.output.display().to_string(),
        options: serde_json::json!({
            "nbits": a.nbits, "group_size": a.group_size,
            "granularity": opts.config.global_config.as_ref().and_then(|g| g.granularity).unwrap_or(
                if a.group_size.is_some() { Granularity::PerGroupedChannel } else { Granularity::PerTensor }
            ),
            "mode": opts.config.global_config.as_ref().and_then(|g| g.mode).unwrap_or(Mode::Kmeans),
            "weight_threshold": c.weight_threshold.unwrap_or(2048),
            "include": c.include, "exclude": c.exclude, "op_types": c.op_types,
            "config": c.config.as_ref().map(|p| p.display().to_string()),
            "target": pass.out_target.ios,
            "threads": c.threads, "seed": c.seed,
        }),
        specification_version: [spec_before, pass.out_target.spec.max(spec_before)],
        weights: pass.reports.clone(),
        totals,
    };
    super::write_report(c.report.as_deref(), &report)?;
    if !quiet {
        let t = &report.totals;
        eprintln!(
            "palettized {} of {} weights ({} skipped) -> {}",
            t.compressed,
            t.weights,
            t.skipped,
            c.output.display()
        );
        eprintln!(
            "  weights {:.2} MiB -> {:.2} MiB ({:.2} bits/weight overall, {:.2} per compressed weight), SNR {} dB, {:.2}s",
            t.weight_bytes_before as f64 / 1048576.0,
            t.weight_bytes_after as f64 / 1048576.0,
            t.bits_per_weight.unwrap_or(0.0),
            t.bits_per_compressed_weight.unwrap_or(0.0),
            t.global_snr_db.map_or("-".into(), |s| format!("{s:.2}")),
            t.wall_seconds
        );
        if spec_before != report.specification_version[1] {
            eprintln!(
                "  note: specification version {} -> {} ({})",
                spec_before, report.specification_version[1], pass.out_target.ios
            );
        }
        let mut reasons: std::collections::BTreeMap<&str, usize> = Default::default();
        for w in &report.weights {
            if let Some(r) = &w.skipped {
                // Group by the reason's kind; details follow in parentheses.
                let kind = r.split(" (").next().unwrap_or(r);
                *reasons.entry(kind).or_default() += 1;
            }
        }
        for (r, n) in reasons.iter().take(8) {
            eprintln!("  skipped {n}: {r}");
        }
    }
    let _ = std::io::stderr().flush();
    Ok(super::EXIT_OK)
}
