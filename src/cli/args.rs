//! The clap definitions, alone in one place.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

const AFTER_HELP: &str = "\
Exit codes:
  0  success
  2  any error (usage, I/O, invalid or unsupported model); nothing is written

Outputs are written to a temporary sibling directory and renamed into place
at the end; an existing output is only replaced with --force, and the input
package is never modified.";

/// Shrink Core ML ML Program packages (.mlpackage) for iPhone: inspect,
/// palettize, prune, and rewrite them losslessly.
#[derive(Debug, Parser)]
#[command(name = "sdcompress", version, about, after_help = AFTER_HELP, max_term_width = 100)]
pub struct Cli {
    /// No progress bars and no summary on stderr (errors are still printed).
    #[arg(long, short, global = true)]
    pub quiet: bool,

    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what a package holds: versions, inputs/outputs, op histogram,
    /// weights and how they are compressed.
    Info(InfoArgs),
    /// Replace every constexpr_* weight (LUT, sparse, quantized, joint) by a
    /// plain fp16/fp32 const; a lossless copy for uncompressed packages.
    Decompress(DecompressArgs),
}

/// `sdcompress info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// The .mlpackage directory.
    pub model: PathBuf,
    /// Print the versioned JSON document (schema sdcompress.info/1) on
    /// stdout instead of the human summary.
    #[arg(long)]
    pub json: bool,
}

/// `sdcompress decompress`.
#[derive(Debug, Args)]
pub struct DecompressArgs {
    /// The input .mlpackage directory (never modified).
    pub model: PathBuf,
    /// The output .mlpackage directory.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Replace the output if it exists.
    #[arg(long)]
    pub force: bool,
}
