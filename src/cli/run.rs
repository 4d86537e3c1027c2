//! `sdcompress run`: the model's outputs for every calibration sample.

use super::args::{InterpArgs, RunArgs};
use super::progress::bar_of;
use anyhow::{bail, Result};
use sdcompress::interp::calib::{check_output, run_samples, write_safetensors, CalibSet};
use sdcompress::interp::{Interpreter, Options, Profile};
use sdcompress::package::Package;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

/// The worker pool for `--threads`. gemm sizes its work split from
/// `RAYON_NUM_THREADS`, so that is set too (before any thread starts).
pub(super) fn interp_pool(a: &InterpArgs) -> Result<rayon::ThreadPool> {
    if let Some(n) = a.threads {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    super::thread_pool(a.threads)
}

/// Loads a package into an interpreter.
pub(super) fn load(model: &Path, a: &InterpArgs) -> Result<Interpreter> {
    let pkg = Package::open(model)?;
    let opts = Options {
        round_fp16: a.round_fp16,
    };
    Ok(Interpreter::load(&pkg, opts)?)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

pub fn run(a: RunArgs, quiet: bool) -> Result<u8> {
    let t0 = Instant::now();
    let pool = interp_pool(&a.interp)?;
    if same_file(&a.output, &a.interp.inputs) {
        bail!(
            "{}: output is the --inputs file; sdcompress never overwrites its input",
            a.output.display()
        );
    }
    if let (Ok(o), Ok(m)) = (
        a.output
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .canonicalize(),
        a.model.canonicalize(),
    ) {
        if o.starts_with(&m) {
            bail!("{}: output is inside the model package", a.output.display());
        }
    }
    check_output(&a.output, a.force)?;
    let interp = load(&a.model, &a.interp)?;
    let calib = CalibSet::open(&a.interp.inputs, interp.inputs(), a.interp.samples)?;
    let n = calib.samples();
    let pb = bar_of(n as u64, "run", "samples", quiet);
    let t_run = Instant::now();
    let mut profile = Profile::new();
    let prof = a.profile.then_some(&mut profile);
    let tensors =
        pool.install(|| run_samples(&interp, &calib, &|done| pb.set_position(done as u64), prof))?;
    pb.finish_and_clear();
    let per_sample = t_run.elapsed().as_secs_f64() / n.max(1) as f64;
    let metadata: BTreeMap<String, String> = [
        ("format", "sdcompress.run/1".to_string()),
        ("model", a.model.display().to_string()),
        ("inputs", a.interp.inputs.display().to_string()),
        ("samples", n.to_string()),
        (
            "layout",
            "every key is a model output stacked along a new leading sample axis: key[i] is the output for sample i".to_string(),
        ),
        (
            "numerics",
            if a.interp.round_fp16 { "fp32 compute, fp16 values rounded after each op" } else { "fp32 compute" }.to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    write_safetensors(&a.output, a.force, &tensors, &metadata)?;
    if a.profile {
        let total: f64 = profile.values().map(|(_, d)| d.as_secs_f64()).sum();
        let mut rows: Vec<_> = profile.iter().collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.1 .1));
        eprintln!(
            "{:<32} {:>7} {:>10} {:>6}",
            "op type", "ops", "ms/sample", "share"
        );
        for (t, (k, d)) in rows {
            eprintln!(
                "{t:<32} {:>7} {:>10.2} {:>5.1}%",
                k / n.max(1),
                d.as_secs_f64() * 1e3 / n.max(1) as f64,
                100.0 * d.as_secs_f64() / total.max(1e-12)
            );
        }
    }
    if !quiet {
        let outs: Vec<String> = interp
            .outputs()
            .iter()
            .map(|o| format!("{} {}", o.name, o.shape_text()))
            .collect();
        eprintln!(
            "wrote {}: {n} samples of {} ({} ops per pass), {:.3}s per sample, {:.2}s total",
            a.output.display(),
            outs.join(", "),
            interp.step_count(),
            per_sample,
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(super::EXIT_OK)
}
