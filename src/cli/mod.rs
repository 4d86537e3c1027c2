//! Command-line edge: clap definitions, dispatch, terminal output. No
//! numerics here; everything real lives in the library.

mod args;
mod decompress;
mod eval;
mod info;
mod palettize;
mod progress;
mod prune;
mod run;

pub use args::{Cli, Command};

use anyhow::Result;

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
    }
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
