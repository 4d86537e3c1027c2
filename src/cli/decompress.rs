//! `sdcompress decompress`.

use super::args::DecompressArgs;
use super::progress::bar;
use anyhow::Result;
use sdcompress::compress::decompress::Decompress;
use sdcompress::compress::rewrite_package;
use sdcompress::package::Package;
use std::time::Instant;

pub fn run(a: DecompressArgs, quiet: bool) -> Result<u8> {
    let t0 = Instant::now();
    let pkg = Package::open(&a.model)?;
    let mut pass = Decompress::new(pkg.model_path(), pkg.model.specification_version);
    let pb = bar(0, "decompress", quiet);
    let progress = |done: u64, total: u64| {
        pb.set_length(total);
        pb.set_position(done);
    };
    let stats = rewrite_package(&pkg, &a.output, a.force, &mut pass, &progress)?;
    pb.finish_and_clear();
    if !quiet {
        eprintln!(
            "wrote {}: {} constexpr ops materialized ({} parameters), weights {} -> {} bytes, {:.2}s",
            a.output.display(),
            pass.materialized,
            pass.parameters,
            pkg.blobs.values().map(|f| f.len()).sum::<u64>(),
            stats.weight_bytes,
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(super::EXIT_OK)
}
