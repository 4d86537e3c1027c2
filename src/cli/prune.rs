//! `sdcompress prune`.

use super::args::{MethodArg, PruneArgs, SparseGptArgs};
use super::progress::bar_of;
use anyhow::{anyhow, bail, Result};
use sdcompress::compress::config::{Entry, OptimizationConfig, PruneEntry};
use sdcompress::compress::pass::WeightRewriter;
use sdcompress::compress::prune::{Prune, PruneOptions};
use sdcompress::interp::{self, Interpreter};
use sdcompress::package::Package;
use sdcompress::sparsegpt::calibrate::{
    calibrate, open_calibration, CalibrateOptions, Calibrated, Event, Target,
};
use sdcompress::sparsegpt::PruneParams;
use std::sync::Arc;
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
    let sgpt = match a.method {
        MethodArg::Magnitude => {
            if a.sparsegpt.calibration.is_some() {
                bail!(
                    "{}: --calibration applies to --method sparsegpt",
                    c.model.display()
                );
            }
            None
        }
        MethodArg::Sparsegpt => Some(
            sparsegpt_options(&a.sparsegpt).map_err(|e| anyhow!("{}: {e}", c.model.display()))?,
        ),
    };
    let pkg = Package::open(&c.model)?;
    let mut pass = Prune::plan(&pkg, &opts).map_err(|e| anyhow!("{}: {e}", c.model.display()))?;
    let sgpt_info = match &sgpt {
        Some(o) => Some(pool.install(|| run_sparsegpt(&pkg, &mut pass, &a.sparsegpt, o, quiet))?),
        None => None,
    };
    let joint = a.lut.nbits.is_some() || a.lut.mode.is_some();
    let method = match a.method {
        MethodArg::Magnitude => "magnitude",
        MethodArg::Sparsegpt => "sparsegpt",
    };
    let options = serde_json::json!({
        "method": method,
        "sparsegpt": sgpt_info,
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

/// The calibration options from the flags (checked before any work).
fn sparsegpt_options(a: &SparseGptArgs) -> Result<CalibrateOptions> {
    if a.calibration.is_none() {
        bail!("--method sparsegpt needs --calibration FILE.safetensors");
    }
    if !(a.damp.is_finite() && a.damp >= 0.0) {
        bail!("--damp {} must be a non-negative number", a.damp);
    }
    if a.sweep_block == 0 {
        bail!("--sweep-block must be at least 1");
    }
    if a.samples == Some(0) {
        bail!("--samples must be at least 1");
    }
    if !(a.hessian_memory.is_finite() && a.hessian_memory > 0.0) {
        bail!(
            "--hessian-memory {} must be a positive number of GiB",
            a.hessian_memory
        );
    }
    if a.one_shot && !a.layers.is_empty() {
        bail!("--layers sets the stages of the sequential mode; it cannot be combined with --one-shot");
    }
    let stages = if a.layers.is_empty() {
        CalibrateOptions::default_stages()
    } else {
        a.layers
            .iter()
            .map(|r| regex::Regex::new(r).map_err(|e| anyhow!("--layers '{r}': {e}")))
            .collect::<Result<_>>()?
    };
    Ok(CalibrateOptions {
        stages,
        one_shot: a.one_shot,
        hessian_budget: (a.hessian_memory * (1u64 << 30) as f64) as u64,
    })
}

/// Runs SparseGPT over the planned weights and hands each result to the
/// prune pass. Returns the report's `sparsegpt` section.
fn run_sparsegpt(
    pkg: &Package,
    pass: &mut WeightRewriter<'_, Prune>,
    a: &SparseGptArgs,
    opts: &CalibrateOptions,
    quiet: bool,
) -> Result<serde_json::Value> {
    let t0 = Instant::now();
    let calib_path = a.calibration.as_deref().expect("checked");
    let mut targets = Vec::new();
    for (w, s) in pass.planned_mut() {
        let Some(pattern) = s.pattern else { continue };
        match pattern.sparsegpt() {
            Ok(p) => {
                let mut params = PruneParams::unstructured(0.5);
                params.pattern = p;
                params.percdamp = a.damp;
                params.sweep_block = a.sweep_block;
                targets.push(Target {
                    weight: w.value_name.clone(),
                    dtype: w.dtype,
                    params,
                });
            }
            Err(e) => bail!("{}: {}: {e}", pkg.model_path().display(), w.const_name),
        }
    }
    let mut it = Interpreter::load(pkg, interp::Options::default())?;
    let calib = open_calibration(&it, calib_path, a.samples)?;
    let samples = calib.samples() as u64;
    let pb = bar_of(targets.len() as u64, "sparsegpt", "layers", quiet);
    let on = |e: Event<'_>| match e {
        Event::Pass(stage, i, n, layers) => pb.set_message(if n > 1 {
            format!("{stage} {}/{n} ({layers} layers)", i + 1)
        } else {
            format!("{stage} ({layers} layers)")
        }),
        Event::Sample(_) => pb.tick(),
        Event::Pruned(done, _) => pb.set_position(done as u64),
    };
    let mut res: Calibrated = calibrate(&mut it, &calib, &targets, opts, &on)
        .map_err(|e| anyhow!("{}: {e}", pkg.model_path().display()))?;
    pb.finish_and_clear();
    // The interpreter holds every weight as f32: free it before writing.
    drop(it);
    for (w, s) in pass.planned_mut() {
        if s.pattern.is_none() {
            continue;
        }
        let r = match res.layers.remove(&w.value_name) {
            Some(l) => Ok(Arc::new(l)),
            None => Err(res
                .skipped
                .get(&w.value_name)
                .cloned()
                .unwrap_or_else(|| "sparsegpt: no result".into())),
        };
        s.sparsegpt = Some(r);
    }
    Ok(serde_json::json!({
        "calibration": calib_path.display().to_string(),
        "samples": samples,
        "damp": a.damp,
        "sweep_block": a.sweep_block,
        "mode": if opts.one_shot { "one-shot" } else { "sequential" },
        "layers": opts.stages.iter().map(|r| r.as_str().to_string()).collect::<Vec<_>>(),
        "hessian_memory_gib": a.hessian_memory,
        "stages": res.stages.iter().map(|(n, l, p)| serde_json::json!({"name": n, "layers": l, "passes": p})).collect::<Vec<_>>(),
        "calibration_seconds": t0.elapsed().as_secs_f64(),
    }))
}
