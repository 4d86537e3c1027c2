//! `sdcompress eval`: output PSNR / relative L2 / max error of a compressed
//! model against its reference on calibration samples.

use super::args::EvalArgs;
use super::progress::bar_of;
use super::run::{interp_pool, load};
use anyhow::{bail, Result};
use sdcompress::eval::{evaluate, EvalReport, Metrics, PSNR_DEFINITION};
use sdcompress::interp::calib::CalibSet;
use std::io::Write;
use std::time::Instant;

pub fn run(a: EvalArgs, quiet: bool) -> Result<u8> {
    let t0 = Instant::now();
    let pool = interp_pool(&a.interp)?;
    let reference = load(&a.reference, &a.interp)?;
    let compressed = load(&a.compressed, &a.interp)?;
    if reference.inputs() != compressed.inputs() {
        bail!(
            "{}: its inputs differ from the reference's ({})",
            a.compressed.display(),
            a.reference.display()
        );
    }
    let calib = CalibSet::open(&a.interp.inputs, reference.inputs(), a.interp.samples)?;
    let n = calib.samples();
    let pb = bar_of(n as u64, "eval", "samples", quiet);
    let outputs = pool.install(|| {
        evaluate(&reference, &compressed, &calib, &|done| {
            pb.set_position(done as u64)
        })
    })?;
    pb.finish_and_clear();
    let passed = a
        .min_psnr
        .map(|g| outputs.iter().all(|o| o.mean_psnr_db >= g));
    let report = EvalReport {
        schema: "sdcompress.eval/1",
        reference: a.reference.display().to_string(),
        compressed: a.compressed.display().to_string(),
        inputs: a.interp.inputs.display().to_string(),
        samples: n,
        psnr: PSNR_DEFINITION,
        outputs,
        min_psnr_db: a.min_psnr,
        passed,
        wall_seconds: t0.elapsed().as_secs_f64(),
    };
    let mut out = std::io::stdout().lock();
    if a.json {
        let mut s = serde_json::to_string_pretty(&report)?;
        s.push('\n');
        out.write_all(s.as_bytes())?;
    } else {
        human(&mut out, &report)?;
    }
    out.flush()?;
    if passed == Some(false) {
        if !quiet {
            eprintln!(
                "error: mean PSNR below --min-psnr {} dB",
                a.min_psnr.unwrap_or_default()
            );
        }
        return Ok(super::EXIT_GATE);
    }
    Ok(super::EXIT_OK)
}

fn db(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}")
    } else if x > 0.0 {
        "inf".into()
    } else {
        "-inf".into()
    }
}

fn sci(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3e}")
    } else {
        "inf".into()
    }
}

fn row(o: &mut impl Write, label: &str, m: &Metrics) -> std::io::Result<()> {
    writeln!(
        o,
        "  {label:<8} {:>9} {:>11} {:>11}",
        db(m.psnr_db),
        sci(m.rel_l2),
        sci(m.max_abs_err)
    )
}

fn human(o: &mut impl Write, r: &EvalReport) -> std::io::Result<()> {
    writeln!(o, "reference  {}", r.reference)?;
    writeln!(o, "compressed {}", r.compressed)?;
    writeln!(o, "inputs     {} ({} samples)", r.inputs, r.samples)?;
    for out in &r.outputs {
        writeln!(o, "output {} {:?}", out.name, out.shape)?;
        writeln!(
            o,
            "  {:<8} {:>9} {:>11} {:>11}",
            "sample", "PSNR dB", "rel L2", "max abs"
        )?;
        for (i, m) in out.samples_raw.iter().enumerate() {
            row(o, &i.to_string(), m)?;
        }
        row(o, "mean", &out.mean_raw)?;
    }
    if let (Some(g), Some(p)) = (r.min_psnr_db, r.passed) {
        writeln!(
            o,
            "gate: mean PSNR >= {g} dB: {}",
            if p { "passed" } else { "FAILED" }
        )?;
    }
    Ok(())
}
