//! The clap definitions, alone in one place.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

const AFTER_HELP: &str = "\
Exit codes:
  0  success
  1  a quality gate failed (eval --min-psnr)
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
    /// Palettize weights: k-means lookup tables (per tensor, or per group of
    /// output channels with --group-size), written as constexpr_lut_to_dense;
    /// already pruned weights get the joint sparse + LUT form (iOS18).
    Palettize(Box<PalettizeArgs>),
    /// Prune weights by magnitude: exactly round(sparsity x numel) zeros per
    /// weight, whole blocks, or N of every M along the input axis, written
    /// as constexpr_sparse_to_dense; with --nbits also palettized (joint).
    Prune(Box<PruneArgs>),
    /// Run the model on the CPU for every sample of a calibration file and
    /// write its outputs (safetensors, stacked along a sample axis).
    Run(RunArgs),
    /// Run a reference and a compressed model on the same samples and
    /// report output PSNR, relative L2 and max error per output.
    Eval(EvalArgs),
    /// Linear quantization: int8/uint8/int4/uint4 codes with a scale (and
    /// zero point) per tensor, per output channel or per block, written as
    /// constexpr_blockwise_shift_scale (iOS18) or constexpr_affine_dequantize.
    Quantize(Box<QuantizeArgs>),
}

/// Code types of `quantize`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum QDTypeArg {
    /// Signed 8-bit (default).
    Int8,
    /// Unsigned 8-bit.
    Uint8,
    /// Signed 4-bit (iOS18).
    Int4,
    /// Unsigned 4-bit (iOS18).
    Uint4,
}

/// Granularities of `quantize` (named as the flag values, which all start
/// with "per").
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
#[allow(clippy::enum_variant_names)]
pub enum QGranularityArg {
    /// One scale per tensor.
    PerTensor,
    /// One scale per output channel (default).
    PerChannel,
    /// One scale per output channel and block of --block-size input
    /// channels (iOS18).
    PerBlock,
}

/// `sdcompress quantize`.
#[derive(Debug, Args)]
#[command(after_help = QUANTIZE_AFTER_HELP)]
pub struct QuantizeArgs {
    #[command(flatten)]
    pub common: CommonCompressArgs,
    /// Code type (default int8).
    #[arg(long, value_enum)]
    pub dtype: Option<QDTypeArg>,
    /// Scale granularity (default per-channel; per-block with --block-size).
    #[arg(long, value_enum)]
    pub granularity: Option<QGranularityArg>,
    /// Input channels per block (per-block granularity; default 32).
    #[arg(long, value_name = "N")]
    pub block_size: Option<usize>,
    /// Range symmetric around 0, zero point fixed (default; coremltools'
    /// linear_symmetric).
    #[arg(long, conflicts_with = "asymmetric")]
    pub symmetric: bool,
    /// Range [min(0,min), max(0,max)] with a per-block zero point
    /// (coremltools' linear).
    #[arg(long)]
    pub asymmetric: bool,
}

const QUANTIZE_AFTER_HELP: &str = "\
Each weight takes, for its block's scale, the code whose decoded value is
nearest to it (round half to even on ties); 0 always decodes to exactly 0.
4-bit codes and per-block scales need iOS18 (pass --upgrade-opset on older
models); below iOS18, int8/uint8 per-tensor/per-channel weights are written as
constexpr_affine_dequantize.

Exit codes: 0 success, 2 any error (nothing is written).";

/// Pruning methods.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum MethodArg {
    /// Smallest |w| first (data-free).
    Magnitude,
    /// SparseGPT (Frantar & Alistarh 2023): layer by layer, from the
    /// layer's input activations on --calibration samples; the kept
    /// weights are updated to compensate for the pruned ones.
    Sparsegpt,
}

/// `sdcompress prune`.
#[derive(Debug, Args)]
#[command(after_help = PRUNE_AFTER_HELP)]
pub struct PruneArgs {
    #[command(flatten)]
    pub common: CommonCompressArgs,
    /// Fraction of each weight to zero, 0 < F < 1 (exactly round(F x numel)
    /// weights, smallest |w| first, ties by position; with --block-size,
    /// exactly round(F x blocks) whole blocks).
    #[arg(long, value_name = "F", conflicts_with = "n_m")]
    pub sparsity: Option<f64>,
    /// N:M structured sparsity: N of every M consecutive weights along the
    /// input axis (axis 1 of conv/linear weights; see --dim) are zeroed, as
    /// coremltools' n_m_ratio (2:4 = 50%). Weights whose axis is not a
    /// multiple of M are skipped with the reason.
    #[arg(long = "n-m", value_name = "N:M", value_parser = parse_n_m)]
    pub n_m: Option<(usize, usize)>,
    /// Block-structured pruning: zero whole blocks of N consecutive weights
    /// along --dim (default 0, the output axis, as coremltools), the blocks
    /// of smallest L2 norm first (conv/linear weights; N >= 2).
    #[arg(long, value_name = "N", conflicts_with = "n_m")]
    pub block_size: Option<usize>,
    /// Axis of --block-size blocks (default 0) or --n-m runs (default 1),
    /// as coremltools' dim.
    #[arg(long, value_name = "0|1")]
    pub dim: Option<usize>,
    /// How to choose the weights to zero.
    #[arg(long, value_enum, default_value = "magnitude")]
    pub method: MethodArg,
    #[command(flatten)]
    pub lut: LutArgs,
    #[command(flatten)]
    pub sparsegpt: SparseGptArgs,
}

/// Options of `prune --method sparsegpt`.
#[derive(Debug, Args)]
#[command(next_help_heading = "SparseGPT (--method sparsegpt)")]
pub struct SparseGptArgs {
    /// Calibration inputs (.safetensors, one key per model input, stacked
    /// along a leading sample axis; the format `run` and `eval` read).
    #[arg(long, value_name = "FILE")]
    pub calibration: Option<PathBuf>,
    /// Use only the first N samples of --calibration.
    #[arg(long, value_name = "N")]
    pub samples: Option<usize>,
    /// Damping added to the Hessian's diagonal, relative to its mean.
    #[arg(long, value_name = "F", default_value_t = 0.01)]
    pub damp: f64,
    /// Columns per block of the SparseGPT sweep (the unstructured mask is
    /// chosen per block).
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub sweep_block: usize,
    /// Stage regex, matched against weight names (repeatable). Weights are
    /// pruned stage by stage in program order, each stage calibrated on
    /// the model with the earlier stages already pruned. Default:
    /// down_blocks_\d+, mid_block, up_blocks_\d+.
    #[arg(long = "layers", value_name = "REGEX")]
    pub layers: Vec<String>,
    /// Take every Hessian from the dense model in one stage (faster, less
    /// accurate than the sequential default).
    #[arg(long)]
    pub one_shot: bool,
    /// Hessians held in memory at once, in GiB (a stage that needs more is
    /// calibrated in several passes over the samples; same result).
    #[arg(long, value_name = "GIB", default_value_t = 4.0)]
    pub hessian_memory: f64,
}

const PRUNE_AFTER_HELP: &str = "\
Joint sparse + palettized (one shot): with --nbits (and optionally --group-size,
--granularity, --mode, --channel-axis) the kept values are also palettized and
each weight is written as constexpr_lut_to_sparse -> constexpr_sparse_to_dense
(iOS18: pass --upgrade-opset on older models). The output is byte-identical to
`prune` followed by `palettize` with the same options. Sparse + LUT is smaller
than the LUT alone only above 1/nbits sparsity; the report warns otherwise.

SparseGPT: --method sparsegpt --calibration FILE prunes each conv/linear/matmul
weight from its input activations on the calibration samples (run through the
model by the built-in interpreter) and updates the kept weights to compensate.
Unstructured sparsity prunes exactly round(F x numel) weights per weight; --n-m
runs along the flattened input axis (Cin x kh x kw for a conv). With --nbits the
compensated kept values are palettized (joint form).

Exit codes: 0 success, 2 any error (nothing is written).";

fn parse_n_m(s: &str) -> Result<(usize, usize), String> {
    let (a, b) = s
        .split_once(':')
        .ok_or_else(|| format!("'{s}' is not of the form N:M"))?;
    let n: usize = a
        .trim()
        .parse()
        .map_err(|_| format!("'{a}' is not a number"))?;
    let m: usize = b
        .trim()
        .parse()
        .map_err(|_| format!("'{b}' is not a number"))?;
    if n == 0 || n >= m {
        return Err(format!("{n}:{m} needs 0 < N < M"));
    }
    Ok((n, m))
}

/// Deployment targets accepted by --target.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum TargetArg {
    /// iOS16 / macOS13 (CoreML6).
    Ios16,
    /// iOS17 / macOS14 (CoreML7).
    Ios17,
    /// iOS18 / macOS15 (CoreML8).
    Ios18,
}

/// Granularity values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum GranularityArg {
    /// One LUT per tensor.
    PerTensor,
    /// One LUT per group of --group-size output channels (iOS18).
    PerGroupedChannel,
}

/// Mode values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ModeArg {
    /// Optimal 1-D k-means (exact, weighted by value counts).
    Kmeans,
    /// 2^nbits evenly spaced values from min to max.
    Uniform,
    /// The tensor's own distinct values (lossless; skipped if too many).
    Unique,
}

/// Flags shared by every compression command.
#[derive(Debug, Args)]
pub struct CommonCompressArgs {
    /// The input .mlpackage directory (never modified).
    pub model: PathBuf,
    /// The output .mlpackage directory.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Replace the output if it exists.
    #[arg(long)]
    pub force: bool,
    /// Only compress weights whose const name or consuming op name matches
    /// this regular expression.
    #[arg(long, value_name = "REGEX")]
    pub include: Option<String>,
    /// Never compress weights whose const name or consuming op name matches.
    #[arg(long, value_name = "REGEX")]
    pub exclude: Option<String>,
    /// Only compress weights read by these op types (comma-separated, e.g.
    /// conv,linear).
    #[arg(long, value_name = "TYPES", value_delimiter = ',')]
    pub op_types: Option<Vec<String>>,
    /// Compress only weights with more than N elements (coremltools'
    /// weight_threshold; default 2048).
    #[arg(long, value_name = "N")]
    pub weight_threshold: Option<usize>,
    /// JSON config with global / per-op-type / per-op-name settings, like
    /// coremltools' OptimizationConfig (see README). Flags given on the
    /// command line override its global level.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Move the program to the iOS18 opset if a setting needs it (refused
    /// when that would change the meaning of an op).
    #[arg(long)]
    pub upgrade_opset: bool,
    /// Minimum deployment target of the output (implies --upgrade-opset).
    #[arg(long, value_enum)]
    pub target: Option<TargetArg>,
    /// Write the JSON report (schema sdcompress.report/1) to FILE, or to
    /// stdout with '-'.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Worker threads (default: all cores). The output does not depend on it.
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Seed for any randomised step (recorded in the report). Only the
    /// vector k-means of palettize --cluster-dim uses it; the scalar
    /// k-means is exact and does not depend on it.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// `sdcompress palettize`.
#[derive(Debug, Args)]
pub struct PalettizeArgs {
    #[command(flatten)]
    pub common: CommonCompressArgs,
    #[command(flatten)]
    pub lut: LutArgs,
    /// Store LUT entries as 8-bit codes with one scale per LUT, decoded by
    /// a constexpr_blockwise_shift_scale that feeds the LUT (iOS18).
    #[arg(long, value_enum)]
    pub lut_dtype: Option<LutDTypeArg>,
    /// Scale each output channel by its max |w| before clustering and fold
    /// the scales into per-channel LUTs (iOS18; coremltools'
    /// enable_per_channel_scale, see the README for the layout).
    #[arg(long)]
    pub per_channel_scale: bool,
    /// With --per-channel-scale: 'input' (default, coremltools' layout: one
    /// scale per input position, the max over the output channels) or
    /// 'output' (one scale per output channel; smaller for conv weights).
    #[arg(long, value_enum, requires = "per_channel_scale")]
    pub scale_axis: Option<ScaleAxisArg>,
    /// Vector palettization (iOS18): each LUT entry is a vector of D
    /// consecutive output channels, found by k-means in D dimensions
    /// (k-means++ seeds from --seed, Lloyd to convergence, best of 3).
    /// D must divide the channel count and the group size, else the weight
    /// is skipped. kmeans mode only; not with --lut-dtype,
    /// --per-channel-scale or pruned input.
    #[arg(long, value_name = "D", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub cluster_dim: Option<u32>,
}

/// Values of --scale-axis.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ScaleAxisArg {
    /// One scale per position off the channel axis.
    Input,
    /// One scale per output channel.
    Output,
}

/// Values of --lut-dtype.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LutDTypeArg {
    /// Signed 8-bit codes, symmetric (no offset).
    Int8,
    /// Unsigned 8-bit codes, symmetric around 127.
    Uint8,
}

/// LUT settings (palettize, and the joint form of prune).
#[derive(Debug, Args)]
pub struct LutArgs {
    /// Index bits per weight: 1, 2, 3, 4, 6 or 8 (3 needs iOS18). Optional
    /// with --mode unique (then the smallest that fits).
    #[arg(long, value_parser = parse_nbits)]
    pub nbits: Option<u32>,
    /// Channels per LUT group; selects per-grouped-channel granularity
    /// (iOS18).
    #[arg(long, value_name = "N")]
    pub group_size: Option<usize>,
    /// per-tensor (default without --group-size) or per-grouped-channel
    /// (default group size 32).
    #[arg(long, value_enum)]
    pub granularity: Option<GranularityArg>,
    /// Output-channel axis for grouping (default: from the consuming op:
    /// 0 for conv/linear, 1 for conv_transpose).
    #[arg(long, value_name = "AXIS", allow_hyphen_values = true)]
    pub channel_axis: Option<i64>,
    /// How LUT entries are chosen.
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    /// When a weight's channel count is not a multiple of --group-size:
    /// 'divisor' (default) uses the largest divisor of the channel count
    /// that is <= the group size (recorded per weight in the report);
    /// 'skip' leaves the weight uncompressed, as coremltools does.
    #[arg(long, value_enum, value_name = "divisor|skip")]
    pub group_size_fallback: Option<FallbackArg>,
}

/// Values of --group-size-fallback.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FallbackArg {
    /// Largest divisor of the channel count <= the group size.
    Divisor,
    /// Leave the weight uncompressed.
    Skip,
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

fn parse_nbits(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n) if [1, 2, 3, 4, 6, 8].contains(&n) => Ok(n),
        _ => Err(format!("'{s}' is not one of 1, 2, 3, 4, 6, 8")),
    }
}

/// Flags of the commands that run a model.
#[derive(Debug, Args)]
pub struct InterpArgs {
    /// Calibration inputs: a safetensors file whose keys are the model's
    /// input names, each with a leading sample axis (see README).
    #[arg(long, value_name = "FILE")]
    pub inputs: PathBuf,
    /// Use only the first N samples.
    #[arg(long, value_name = "N")]
    pub samples: Option<usize>,
    /// Round every value the program declares fp16 to fp16 after each op
    /// (emulates fp16 storage; default: fp32 throughout).
    #[arg(long)]
    pub round_fp16: bool,
    /// Worker threads (default: all cores).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

/// `sdcompress run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The .mlpackage to run.
    pub model: PathBuf,
    #[command(flatten)]
    pub interp: InterpArgs,
    /// Output safetensors file: one f32 key per model output, stacked along
    /// a leading sample axis.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Replace the output if it exists.
    #[arg(long)]
    pub force: bool,
    /// Print the time spent per op type on stderr.
    #[arg(long)]
    pub profile: bool,
}

/// `sdcompress eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The reference .mlpackage (e.g. the uncompressed model).
    pub reference: PathBuf,
    /// The .mlpackage to judge (e.g. its palettized version).
    pub compressed: PathBuf,
    #[command(flatten)]
    pub interp: InterpArgs,
    /// Print the JSON report (schema sdcompress.eval/1) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Exit with code 1 if any output's mean PSNR is below DB
    /// (apple/ml-stable-diffusion fails palettized UNets below 35 dB).
    #[arg(long, value_name = "DB", allow_hyphen_values = true)]
    pub min_psnr: Option<f64>,
}
