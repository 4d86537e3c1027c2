//! `sdcompress prune`.

use super::args::{PruneArgs, TargetArg};
use super::progress::bar;
use anyhow::{anyhow, Result};
use sdcompress::compress::prune::{Pattern, Prune, PruneOptions};
use sdcompress::compress::rewrite_package;
use sdcompress::compress::select::Selection;
use sdcompress::package::Package;
use sdcompress::report::{Report, Totals, SCHEMA};
use std::time::Instant;

pub fn run(a: PruneArgs, quiet: bool) -> Result<u8> {
    let t0 = Instant::now();
    let c = &a.common;
    if c.config.is_some() {
        return Err(anyhow!(
            "--config is not supported by prune yet; use --include/--exclude/--op-types"
        ));
    }
    let pool = super::thread_pool(c.threads)?;
    let selection = Selection {
        include: super::regex_flag(&c.include, "--include")?,
        exclude: super::regex_flag(&c.exclude, "--exclude")?,
        op_types: c.op_types.clone().map(|v| v.into_iter().collect()),
    };
    let pattern = match (a.sparsity, a.n_m) {
        (Some(s), None) => Pattern::Unstructured(s),
        (None, Some((n, m))) => Pattern::NOutOfM(n, m),
        _ => return Err(anyhow!("give exactly one of --sparsity and --n-m")),
    };
    let opts = PruneOptions {
        pattern,
        weight_threshold: c.weight_threshold.unwrap_or(2048),
        selection,
        upgrade_opset: c.upgrade_opset || c.target.is_some(),
        min_spec: c.target.map(|t| match t {
            TargetArg::Ios16 => 7,
            TargetArg::Ios17 => 8,
            TargetArg::Ios18 => 9,
        }),
    };
    let pkg = Package::open(&c.model)?;
    let spec_before = pkg.model.specification_version;
    let mut pass = Prune::plan(&pkg, &opts).map_err(|e| anyhow!("{}: {e}", c.model.display()))?;
    let pb = bar(0, "prune", quiet);
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
        command: "prune".into(),
        input: c.model.display().to_string(),
        output: c.output.display().to_string(),
        options: serde_json::json!({
            "method": "magnitude",
            "sparsity": a.sparsity, "n_m": a.n_m,
            "weight_threshold": opts.weight_threshold,
            "include": c.include, "exclude": c.exclude, "op_types": c.op_types,
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
            "pruned {} of {} weights ({} skipped) -> {}",
            t.compressed,
            t.weights,
            t.skipped,
            c.output.display()
        );
        eprintln!(
            "  weights {:.2} MiB -> {:.2} MiB ({:.2} bits/weight overall), SNR {} dB, {:.2}s",
            t.weight_bytes_before as f64 / 1048576.0,
            t.weight_bytes_after as f64 / 1048576.0,
            t.bits_per_weight.unwrap_or(0.0),
            t.global_snr_db.map_or("-".into(), |s| format!("{s:.2}")),
            t.wall_seconds
        );
    }
    Ok(super::EXIT_OK)
}
