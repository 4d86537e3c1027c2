//! Command-line edge: clap definitions, dispatch, terminal output. No
//! numerics here; everything real lives in the library.

mod args;
mod decompress;
mod eval;
mod info;
mod palettize;
mod progress;
mod prune;
mod quantize;
mod run;

pub use args::{Cli, Command};

use anyhow::Result;
use sdcompress::compress::config::{Granularity, GroupSizeFallback, PalettizeEntry};
use sdcompress::compress::pass::{WeightPass, WeightRewriter};
use sdcompress::compress::rewrite_package;
use sdcompress::compress::select::Selection;
use sdcompress::kernels::palettize::Mode;
use sdcompress::package::Package;
use sdcompress::report::{Report, Totals, SCHEMA};
use std::time::Instant;

/// Exit code for success.
pub const EXIT_OK: u8 = 0;
/// Exit code for a failed quality gate (`eval --min-psnr`).
pub const EXIT_GATE: u8 = 1;
/// Exit code for any error: usage, I/O, invalid model.
pub const EXIT_ERROR: u8 = 2;

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<u8> {
    let quiet = cli.quiet;
    match cli.command {
        Command::Info(a) => info::run(a),
        Command::Decompress(a) => decompress::run(a, quiet),
        Command::Palettize(a) => palettize::run(*a, quiet),
        Command::Prune(a) => prune::run(*a, quiet),
        Command::Run(a) => run::run(a, quiet),
        Command::Eval(a) => eval::run(a, quiet),
        Command::Quantize(a) => quantize::run(*a, quiet),
    }
}

/// The name/op-type selection flags.
fn selection(c: &args::CommonCompressArgs) -> Result<Selection> {
    Ok(Selection {
        include: regex_flag(&c.include, "--include")?,
        exclude: regex_flag(&c.exclude, "--exclude")?,
        op_types: c.op_types.clone().map(|v| v.into_iter().collect()),
    })
}

/// The spec version `--target` asks for.
fn min_spec(c: &args::CommonCompressArgs) -> Option<i32> {
    c.target.map(|t| match t {
        args::TargetArg::Ios16 => 7,
        args::TargetArg::Ios17 => 8,
        args::TargetArg::Ios18 => 9,
    })
}

/// The LUT flags as a config entry.
fn lut_entry(l: &args::LutArgs, weight_threshold: Option<usize>) -> Result<PalettizeEntry> {
    let e = PalettizeEntry {
        mode: l.mode.map(|m| match m {
            args::ModeArg::Kmeans => Mode::Kmeans,
            args::ModeArg::Uniform => Mode::Uniform,
            args::ModeArg::Unique => Mode::Unique,
        }),
        nbits: l.nbits,
        granularity: l.granularity.map(|g| match g {
            args::GranularityArg::PerTensor => Granularity::PerTensor,
            args::GranularityArg::PerGroupedChannel => Granularity::PerGroupedChannel,
        }),
        group_size: l.group_size,
        channel_axis: l.channel_axis,
        weight_threshold,
        group_size_fallback: l.group_size_fallback.map(|f| match f {
            args::FallbackArg::Divisor => GroupSizeFallback::Divisor,
            args::FallbackArg::Skip => GroupSizeFallback::Skip,
        }),
        lut_dtype: None,
        per_channel_scale: None,
        scale_axis: None,
        cluster_dim: None,
    };
    if e.granularity == Some(Granularity::PerTensor) && e.group_size.is_some() {
        anyhow::bail!("--group-size contradicts --granularity per-tensor");
    }
    Ok(e)
}

/// Runs a planned weight pass in `pool`, then writes the report and the
/// stderr summary (the same for every compression command).
#[allow(clippy::too_many_arguments)]
fn run_pass<P: WeightPass>(
    pool: &rayon::ThreadPool,
    command: &str,
    verb: &str,
    c: &args::CommonCompressArgs,
    pkg: &Package,
    pass: &mut WeightRewriter<'_, P>,
    options: serde_json::Value,
    t0: Instant,
    quiet: bool,
) -> Result<u8> {
    let spec_before = pkg.model.specification_version;
    let pb = progress::bar(0, command, quiet);
    let on_progress = |done: u64, total: u64| {
        pb.set_length(total);
        pb.set_position(done);
    };
    let stats = pool.install(|| rewrite_package(pkg, &c.output, c.force, pass, &on_progress))?;
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
        command: command.into(),
        input: c.model.display().to_string(),
        output: c.output.display().to_string(),
        options,
        specification_version: [spec_before, pass.out_target.spec.max(spec_before)],
        warnings: Report::warnings_for(&pass.reports),
        notes: Report::notes_for(&pass.reports),
        weights: std::mem::take(&mut pass.reports),
        totals,
    };
    write_report(c.report.as_deref(), &report)?;
    for w in &report.warnings {
        // Warnings are printed even with --quiet: they say the output is
        // not what the user wants.
        eprintln!("warning: {w}");
    }
    if !quiet {
        let t = &report.totals;
        let mib = |b: u64| b as f64 / 1048576.0;
        eprintln!(
            "{verb} {} of {} weights ({} skipped) -> {}",
            t.compressed,
            t.weights,
            t.skipped,
            c.output.display()
        );
        eprintln!(
            "  weights {:.2} MiB -> {:.2} MiB (size formula {:.2} MiB; {:.2} bits/weight overall, {:.2} per compressed weight), SNR {} dB, {:.2}s",
            mib(t.weight_bytes_before),
            mib(t.weight_bytes_after),
            mib(t.predicted_bytes),
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
        for n in &report.notes {
            eprintln!("  note: {n}");
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
    use std::io::Write;
    let _ = std::io::stderr().flush();
    Ok(EXIT_OK)
}

/// A rayon pool with `threads` workers (all cores when `None`).
fn thread_pool(threads: Option<usize>) -> Result<rayon::ThreadPool> {
    let mut b = rayon::ThreadPoolBuilder::new();
    if let Some(n) = threads {
        if n == 0 {
            anyhow::bail!("--threads must be at least 1");
        }
        b = b.num_threads(n);
    }
    Ok(b.build()?)
}

/// Writes a report to a file, or stdout for `-`, or nowhere.
fn write_report(path: Option<&std::path::Path>, report: &impl serde::Serialize) -> Result<()> {
    use std::io::Write;
    let Some(p) = path else { return Ok(()) };
    let mut s = serde_json::to_string_pretty(report)?;
    s.push('\n');
    if p.as_os_str() == "-" {
        std::io::stdout().lock().write_all(s.as_bytes())?;
    } else {
        std::fs::write(p, s).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
    }
    Ok(())
}

/// Compiles a selection regex flag; the regex crate's multi-line message is
/// reduced to its cause.
fn regex_flag(r: &Option<String>, flag: &str) -> Result<Option<regex::Regex>> {
    r.as_deref()
        .map(|s| {
            regex::Regex::new(s).map_err(|e| {
                let text = e.to_string();
                let cause = text
                    .lines()
                    .last()
                    .unwrap_or("")
                    .trim_start_matches("error: ")
                    .to_string();
                anyhow::anyhow!("invalid {flag} regex '{s}': {cause}")
            })
        })
        .transpose()
}
