//! Command-line edge: clap definitions, dispatch, terminal output. No
//! numerics here; everything real lives in the library.

mod args;
mod decompress;
mod info;
mod progress;

pub use args::{Cli, Command};

use anyhow::Result;

/// Exit code for success.
pub const EXIT_OK: u8 = 0;
/// Exit code for any error: usage, I/O, invalid model.
pub const EXIT_ERROR: u8 = 2;

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<u8> {
    let quiet = cli.quiet;
    match cli.command {
        Command::Info(a) => info::run(a),
        Command::Decompress(a) => decompress::run(a, quiet),
    }
}
