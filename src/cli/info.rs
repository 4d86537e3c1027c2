//! `sdcompress info`: human summary or JSON.

use super::args::InfoArgs;
use anyhow::Result;
use sdcompress::info::{inspect, Info};
use sdcompress::package::Package;
use std::io::Write;

pub fn run(a: InfoArgs) -> Result<u8> {
    let pkg = Package::open(&a.model)?;
    let info = inspect(&pkg, &a.model.display().to_string())?;
    let mut out = std::io::stdout().lock();
    if a.json {
        // Serialise first so that a closed stdout surfaces as a plain
        // io::Error (main treats BrokenPipe as success).
        let mut text = serde_json::to_string_pretty(&info)?;
        text.push('\n');
        out.write_all(text.as_bytes())?;
    } else {
        human(&mut out, &info)?;
    }
    Ok(super::EXIT_OK)
}

fn mib(b: u64) -> String {
    format!("{:.2} MiB", b as f64 / (1024.0 * 1024.0))
}

fn shape(s: &[i64]) -> String {
    let v: Vec<String> = s
        .iter()
        .map(|d| if *d < 0 { "?".into() } else { d.to_string() })
        .collect();
    format!("[{}]", v.join(","))
}

fn human(o: &mut impl Write, i: &Info) -> std::io::Result<()> {
    writeln!(o, "{}", i.path)?;
    writeln!(
        o,
        "  specification version {} ({}), model.mlmodel {}",
        i.specification_version,
        i.deployment_target.unwrap_or("unknown target"),
        mib(i.model_bytes)
    )?;
    for f in &i.inputs {
        writeln!(
            o,
            "  input  {:<28} {} {}",
            f.name,
            f.dtype.as_deref().unwrap_or(&f.kind),
            shape(&f.shape)
        )?;
    }
    for f in &i.outputs {
        writeln!(
            o,
            "  output {:<28} {} {}",
            f.name,
            f.dtype.as_deref().unwrap_or(&f.kind),
            shape(&f.shape)
        )?;
    }
    for f in &i.functions {
        writeln!(
            o,
            "  function {}: opset {} ({}), {} ops",
            f.name,
            f.opset,
            f.deployment_target.unwrap_or("?"),
            f.op_count
        )?;
        let mut h: Vec<_> = f.op_types.iter().collect();
        h.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let line: Vec<String> = h.iter().map(|(k, v)| format!("{k} {v}")).collect();
        writeln!(o, "    ops: {}", line.join(", "))?;
    }
    let w = &i.weights;
    writeln!(
        o,
        "  weights: {} tensors, {} parameters, {} stored",
        w.count,
        w.parameters,
        mib(w.stored_bytes)
    )?;
    for (dt, n) in &w.dense_parameters_by_dtype {
        writeln!(
            o,
            "    dense {dt}: {n} parameters, {}",
            mib(w.dense_bytes_by_dtype.get(dt).copied().unwrap_or(0))
        )?;
    }
    let c = &i.compressed;
    if c.count > 0 {
        let kinds: Vec<String> = c.by_kind.iter().map(|(k, v)| format!("{k} {v}")).collect();
        writeln!(
            o,
            "    compressed: {} tensors, {} parameters, {} stored ({:.2} bits/weight): {}",
            c.count,
            c.parameters,
            mib(c.stored_bytes),
            c.stored_bytes as f64 * 8.0 / c.parameters.max(1) as f64,
            kinds.join(", ")
        )?;
    } else {
        writeln!(o, "    compressed: none")?;
    }
    writeln!(o, "  largest weights:")?;
    for x in &i.largest {
        let comp = x.compression.as_ref().map_or("dense".to_string(), |c| {
            let mut s = c.kind.clone();
            if let Some(b) = c.lut_nbits {
                s += &format!(" {b}-bit");
            }
            if let Some(v) = c.lut_vector_size.filter(|&v| v > 1) {
                s += &format!(" vectors of {v}");
            }
            if let Some(g) = c.lut_groups.filter(|&g| g > 1) {
                s += &format!(" {g} groups");
            }
            if let Some(sp) = c.sparsity {
                s += &format!(" {:.1}% zeros", sp * 100.0);
            }
            if let Some(q) = c.quantized_dtype {
                s += &format!(" {q}");
            }
            s
        });
        let sh: Vec<i64> = x.shape.iter().map(|&d| d as i64).collect();
        writeln!(
            o,
            "    {:<60} {} {} {} ({})",
            x.name,
            x.dtype,
            shape(&sh),
            x.parameters,
            comp
        )?;
    }
    for f in &i.weight_files {
        writeln!(
            o,
            "  weight file {}: {}, {} blobs ({} unreferenced)",
            f.name,
            mib(f.bytes),
            f.blobs,
            f.unreferenced_blobs
        )?;
    }
    Ok(())
}
