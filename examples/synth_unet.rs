//! Synthetic Stable Diffusion UNet packages for benchmarks and tests.
//!
//! Writes an ML Program `.mlpackage` whose `const` weights have exactly the
//! names and shapes of the conv / linear / norm parameters of a diffusers
//! `UNet2DConditionModel` (SD-1.5, SDXL base, or a tiny variant), filled
//! with seeded, realistic-looking random values. The graph is not a UNet:
//! every weight feeds one op (`conv`, `linear` or `layer_norm`) on a
//! function input of matching shape, each result is reduced to `[1]` with
//! `reduce_mean`, and the results are summed into the single output `out`.
//! That keeps the program valid for coremltools while the weight file has
//! the size and the tensor mix of the real model.
//!
//! ```text
//! cargo run --release --example synth_unet -- --arch sdxl|sd15|tiny --out X.mlpackage \
//!     [--seed N] [--dtype fp16|fp32] [--target ios17|ios18] [--subset N] [--force] [--count-only]
//! ```
//!
//! `--subset N` keeps every N-th conv/linear layer and every N-th norm layer (in execution
//! order, starting with the first), with their exact shapes, names and values: a smaller
//! package with the same tensor mix, e.g. for timing a slow tool on part of the model.
//!
//! Weights are generated tensor by tensor (rows in parallel with rayon,
//! one RNG stream per row, so the bytes do not depend on the thread count)
//! and streamed through [`BlobWriter`]; memory stays at a few tensors.

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use half::f16;
use rayon::prelude::*;
use sdcompress::blob::{BlobDtype, BlobWriter};
use sdcompress::mil::value::tensor_value_type;
use sdcompress::mil::value::{blob_value, goes_to_blob, immediate_value, string_value};
use sdcompress::mil::{DType, Data, Tensor};
use sdcompress::proto::mil::{self, argument, Argument, NamedValueType, Operation};
use sdcompress::proto::spec::{self, array_feature_type::ArrayDataType, feature_type};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::time::Instant;

const WEIGHT_FILE: &str = "@model_path/weights/weight.bin";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Arch {
    /// Stable Diffusion 1.5 UNet (859,520,964 parameters).
    Sd15,
    /// SDXL base UNet (2,567,463,684 parameters).
    Sdxl,
    /// A small SDXL-like UNet (linear projections, text_time embedding).
    Tiny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum WDtype {
    Fp16,
    Fp32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OsTarget {
    /// specificationVersion 8, opset CoreML7.
    Ios17,
    /// specificationVersion 9, opset CoreML8.
    Ios18,
}

/// Generate a synthetic UNet-shaped ML Program package.
#[derive(Debug, Parser)]
struct Cli {
    /// Which UNet's parameter shapes to reproduce.
    #[arg(long, value_enum)]
    arch: Arch,
    /// Output .mlpackage directory.
    #[arg(long)]
    out: Option<PathBuf>,
    /// RNG seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Weight (and I/O) precision.
    #[arg(long, value_enum, default_value_t = WDtype::Fp16)]
    dtype: WDtype,
    /// Deployment target.
    #[arg(long, value_enum, default_value_t = OsTarget::Ios18)]
    target: OsTarget,
    /// Replace the output if it exists.
    #[arg(long)]
    force: bool,
    /// Only print the parameter inventory; write nothing.
    #[arg(long)]
    count_only: bool,
    /// Keep only every N-th conv/linear layer and every N-th norm layer (execution order,
    /// first one kept); shapes, names and values are those of the full model.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    subset: Option<u64>,
}

// ------------------------------------------------------------------------------------------
// UNet2DConditionModel structure
// ------------------------------------------------------------------------------------------

/// The subset of the diffusers config that decides parameter shapes.
struct UnetConfig {
    in_channels: usize,
    out_channels: usize,
    block_out_channels: Vec<usize>,
    layers_per_block: usize,
    /// Per down block: CrossAttnDownBlock2D (true) or DownBlock2D. Up
    /// blocks mirror this (diffusers' standard configs do).
    cross_attn: Vec<bool>,
    /// Per down block; up blocks use the reversed list, the mid block the
    /// last entry (diffusers' defaults).
    transformer_layers: Vec<usize>,
    cross_attention_dim: usize,
    use_linear_projection: bool,
    /// `projection_class_embeddings_input_dim` of the text_time addition
    /// embedding (SDXL), if any.
    addition_embed_input_dim: Option<usize>,
    /// Known parameter total of the real model, to check against.
    reference_total: Option<u64>,
}

fn config(arch: Arch) -> UnetConfig {
    match arch {
        Arch::Sd15 => UnetConfig {
            in_channels: 4,
            out_channels: 4,
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: 2,
            cross_attn: vec![true, true, true, false],
            transformer_layers: vec![1, 1, 1, 1],
            cross_attention_dim: 768,
            use_linear_projection: false,
            addition_embed_input_dim: None,
            reference_total: Some(859_520_964),
        },
        Arch::Sdxl => UnetConfig {
            in_channels: 4,
            out_channels: 4,
            block_out_channels: vec![320, 640, 1280],
            layers_per_block: 2,
            cross_attn: vec![false, true, true],
            transformer_layers: vec![1, 2, 10],
            cross_attention_dim: 2048,
            use_linear_projection: true,
            // pooled text embeds (1280) + 6 time ids x addition_time_embed_dim (256)
            addition_embed_input_dim: Some(1280 + 6 * 256),
            reference_total: Some(2_567_463_684),
        },
        Arch::Tiny => UnetConfig {
            in_channels: 4,
            out_channels: 4,
            block_out_channels: vec![32, 64],
            layers_per_block: 1,
            cross_attn: vec![false, true],
            transformer_layers: vec![1, 2],
            cross_attention_dim: 64,
            use_linear_projection: true,
            addition_embed_input_dim: Some(64 + 6 * 8),
            reference_total: None,
        },
    }
}

/// One torch module that owns parameters, in execution order.
#[derive(Debug, Clone)]
enum Layer {
    /// `nn.Conv2d` with bias; padding k/2 as in every UNet conv.
    Conv {
        name: String,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
    },
    /// `nn.Linear`.
    Linear {
        name: String,
        fin: usize,
        fout: usize,
        bias: bool,
    },
    /// `nn.GroupNorm` / `nn.LayerNorm` (affine): weight and bias of `[c]`.
    Norm { name: String, c: usize },
}

impl Layer {
    /// (suffix, shape) of each parameter, torch order.
    fn params(&self) -> Vec<(&'static str, Vec<usize>)> {
        match self {
            Layer::Conv { cin, cout, k, .. } => {
                vec![("weight", vec![*cout, *cin, *k, *k]), ("bias", vec![*cout])]
            }
            Layer::Linear {
                fin, fout, bias, ..
            } => {
                let mut v = vec![("weight", vec![*fout, *fin])];
                if *bias {
                    v.push(("bias", vec![*fout]));
                }
                v
            }
            Layer::Norm { c, .. } => vec![("weight", vec![*c]), ("bias", vec![*c])],
        }
    }

    fn name(&self) -> &str {
        match self {
            Layer::Conv { name, .. } | Layer::Linear { name, .. } | Layer::Norm { name, .. } => {
                name
            }
        }
    }
}

struct Layers {
    v: Vec<Layer>,
    temb: usize,
}

impl Layers {
    fn conv(&mut self, name: String, cin: usize, cout: usize, k: usize, stride: usize) {
        self.v.push(Layer::Conv {
            name,
            cin,
            cout,
            k,
            stride,
        });
    }
    fn linear(&mut self, name: String, fin: usize, fout: usize, bias: bool) {
        self.v.push(Layer::Linear {
            name,
            fin,
            fout,
            bias,
        });
    }
    fn norm(&mut self, name: String, c: usize) {
        self.v.push(Layer::Norm { name, c });
    }

    /// `ResnetBlock2D(in_channels=cin, out_channels=cout, temb_channels)`.
    fn resnet(&mut self, p: &str, cin: usize, cout: usize) {
        self.norm(format!("{p}.norm1"), cin);
        self.conv(format!("{p}.conv1"), cin, cout, 3, 1);
        self.linear(format!("{p}.time_emb_proj"), self.temb, cout, true);
        self.norm(format!("{p}.norm2"), cout);
        self.conv(format!("{p}.conv2"), cout, cout, 3, 1);
        if cin != cout {
            self.conv(format!("{p}.conv_shortcut"), cin, cout, 1, 1);
        }
    }

    /// `Transformer2DModel` with `n` `BasicTransformerBlock`s (inner dim =
    /// c; attention_bias False, GEGLU feed-forward with mult 4).
    fn transformer(&mut self, p: &str, c: usize, n: usize, cad: usize, linear_proj: bool) {
        self.norm(format!("{p}.norm"), c);
        if linear_proj {
            self.linear(format!("{p}.proj_in"), c, c, true);
        } else {
            self.conv(format!("{p}.proj_in"), c, c, 1, 1);
        }
        for l in 0..n {
            let b = format!("{p}.transformer_blocks.{l}");
            self.norm(format!("{b}.norm1"), c);
            for (attn, kv, norm) in [("attn1", c, "norm2"), ("attn2", cad, "norm3")] {
                self.linear(format!("{b}.{attn}.to_q"), c, c, false);
                self.linear(format!("{b}.{attn}.to_k"), kv, c, false);
                self.linear(format!("{b}.{attn}.to_v"), kv, c, false);
                self.linear(format!("{b}.{attn}.to_out.0"), c, c, true);
                self.norm(format!("{b}.{norm}"), c);
            }
            self.linear(format!("{b}.ff.net.0.proj"), c, 8 * c, true);
            self.linear(format!("{b}.ff.net.2"), 4 * c, c, true);
        }
        if linear_proj {
            self.linear(format!("{p}.proj_out"), c, c, true);
        } else {
            self.conv(format!("{p}.proj_out"), c, c, 1, 1);
        }
    }
}

/// The parameter-owning layers of `UNet2DConditionModel(**cfg)`, following
/// diffusers' constructor (down, mid, up block channel bookkeeping).
fn unet_layers(cfg: &UnetConfig) -> Vec<Layer> {
    let boc = &cfg.block_out_channels;
    let nb = boc.len();
    let temb = 4 * boc[0];
    let cad = cfg.cross_attention_dim;
    let lp = cfg.use_linear_projection;
    let mut l = Layers { v: vec![], temb };
    l.conv("conv_in".into(), cfg.in_channels, boc[0], 3, 1);
    l.linear("time_embedding.linear_1".into(), boc[0], temb, true);
    l.linear("time_embedding.linear_2".into(), temb, temb, true);
    if let Some(d) = cfg.addition_embed_input_dim {
        l.linear("add_embedding.linear_1".into(), d, temb, true);
        l.linear("add_embedding.linear_2".into(), temb, temb, true);
    }
    let mut out_ch = boc[0];
    for (i, &c) in boc.iter().enumerate() {
        let in_ch = out_ch;
        out_ch = c;
        for j in 0..cfg.layers_per_block {
            let cin = if j == 0 { in_ch } else { out_ch };
            l.resnet(&format!("down_blocks.{i}.resnets.{j}"), cin, out_ch);
            if cfg.cross_attn[i] {
                let p = format!("down_blocks.{i}.attentions.{j}");
                l.transformer(&p, out_ch, cfg.transformer_layers[i], cad, lp);
            }
        }
        if i + 1 < nb {
            l.conv(
                format!("down_blocks.{i}.downsamplers.0.conv"),
                out_ch,
                out_ch,
                3,
                2,
            );
        }
    }
    let c = boc[nb - 1];
    l.resnet("mid_block.resnets.0", c, c);
    let mid_n = cfg.transformer_layers[nb - 1];
    l.transformer("mid_block.attentions.0", c, mid_n, cad, lp);
    l.resnet("mid_block.resnets.1", c, c);
    let rev: Vec<usize> = boc.iter().rev().copied().collect();
    let mut out_ch = rev[0];
    for i in 0..nb {
        let prev = out_ch;
        out_ch = rev[i];
        let in_ch = rev[(i + 1).min(nb - 1)];
        let n = cfg.layers_per_block + 1;
        for j in 0..n {
            let skip = if j + 1 == n { in_ch } else { out_ch };
            let rin = if j == 0 { prev } else { out_ch };
            l.resnet(&format!("up_blocks.{i}.resnets.{j}"), rin + skip, out_ch);
            let down = nb - 1 - i;
            if cfg.cross_attn[down] {
                let p = format!("up_blocks.{i}.attentions.{j}");
                l.transformer(&p, out_ch, cfg.transformer_layers[down], cad, lp);
            }
        }
        if i + 1 < nb {
            l.conv(
                format!("up_blocks.{i}.upsamplers.0.conv"),
                out_ch,
                out_ch,
                3,
                1,
            );
        }
    }
    l.norm("conv_norm_out".into(), boc[0]);
    l.conv("conv_out".into(), boc[0], cfg.out_channels, 3, 1);
    l.v
}

/// Every `n`-th conv/linear layer and every `n`-th norm layer, first ones kept.
fn subset(layers: Vec<Layer>, n: usize) -> Vec<Layer> {
    let (mut mats, mut norms) = (0usize, 0usize);
    layers
        .into_iter()
        .filter(|l| {
            let c = if matches!(l, Layer::Norm { .. }) {
                &mut norms
            } else {
                &mut mats
            };
            let keep = *c % n == 0;
            *c += 1;
            keep
        })
        .collect()
}

// ------------------------------------------------------------------------------------------
// Random numbers: splitmix64 seeding, xoshiro256++ stream, Box-Muller normals
// ------------------------------------------------------------------------------------------

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a, to derive a per-tensor stream from the tensor's name.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

struct Rng {
    s: [u64; 4],
    spare: Option<f64>,
}

impl Rng {
    fn new(seed: u64) -> Self {
        let mut sm = seed;
        Self {
            s: [
                splitmix64(&mut sm),
                splitmix64(&mut sm),
                splitmix64(&mut sm),
                splitmix64(&mut sm),
            ],
            spare: None,
        }
    }

    /// Stream `k` derived from `seed` (independent for practical purposes).
    fn derive(seed: u64, k: u64) -> Self {
        let mut sm = seed ^ k.wrapping_mul(0xD1B5_4A32_D192_ED03);
        Self::new(splitmix64(&mut sm))
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let r = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        r
    }

    /// Uniform in [0, 1), 53 bits.
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box-Muller, both values used).
    fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        // Marsaglia's polar method: no trigonometry, both values used.
        loop {
            let u = 2.0 * self.uniform() - 1.0;
            let v = 2.0 * self.uniform() - 1.0;
            let s = u * u + v * v;
            if s > 0.0 && s < 1.0 {
                let f = (-2.0 * s.ln() / s).sqrt();
                self.spare = Some(v * f);
                return u * f;
            }
        }
    }
}

/// Heavy-tailed unit-variance noise: a Gaussian scale mixture (90 % at
/// sigma 0.85, 10 % at sigma 2.0; kurtosis about 5.6) with 0.1 % outliers
/// at +-6..12 (in units of the tensor/channel std).
#[inline]
fn heavy(rng: &mut Rng) -> f64 {
    const NORM: f64 = 0.975_765; // 1 / sqrt(0.9 * 0.85^2 + 0.1 * 2.0^2)
    let d = rng.next_u64();
    // 0.001 * 2^20 = 1048.6
    if (d & 0xF_FFFF) < 1049 {
        let mag = 6.0 + 6.0 * rng.uniform();
        return if d & (1 << 20) != 0 { mag } else { -mag };
    }
    // 0.1 * 2^10 = 102.4
    let sigma = if ((d >> 21) & 0x3FF) < 102 { 2.0 } else { 0.85 };
    rng.normal() * sigma * NORM
}

/// Values of one parameter tensor, as f32. Matrices (rank >= 2): per-tensor
/// std in [0.02, 0.05], per-output-channel log-normal scale (sigma 0.25),
/// heavy-tailed noise. Rank 1: norm weights around 1, norm and layer
/// biases around 0.
fn generate(seed: u64, name: &str, shape: &[usize], is_norm_weight: bool) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let mut out = vec![0u8; n * 4];
    generate_into(seed, name, shape, is_norm_weight, DType::Fp32, &mut out);
    out.chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// The blob payload of one parameter tensor (little-endian fp16 or fp32).
fn generate_bytes(
    seed: u64,
    name: &str,
    shape: &[usize],
    norm_weight: bool,
    dtype: DType,
) -> Vec<u8> {
    let n: usize = shape.iter().product();
    let mut out = vec![0u8; n * (dtype.bits() / 8) as usize];
    generate_into(seed, name, shape, norm_weight, dtype, &mut out);
    out
}

/// Fills `out` (storage bytes of `dtype`) with the values of one tensor.
/// Rows (output channels) are generated in parallel, each from its own
/// stream, so the result does not depend on the number of threads.
fn generate_into(
    seed: u64,
    name: &str,
    shape: &[usize],
    is_norm_weight: bool,
    dtype: DType,
    out: &mut [u8],
) {
    let tseed = seed ^ fnv1a(name);
    let mut trng = Rng::derive(tseed, u64::MAX);
    let put = |o: &mut [u8], x: f64| {
        if dtype == DType::Fp16 {
            o.copy_from_slice(&f16::from_f64(x).to_le_bytes());
        } else {
            o.copy_from_slice(&(x as f32).to_le_bytes());
        }
    };
    let esz = (dtype.bits() / 8) as usize;
    if shape.len() <= 1 {
        let (center, std) = if is_norm_weight {
            (1.0, 0.02 + 0.08 * trng.uniform())
        } else {
            (0.0, 0.01 + 0.04 * trng.uniform())
        };
        for o in out.chunks_exact_mut(esz) {
            put(o, center + std * heavy(&mut trng));
        }
        return;
    }
    let std = 0.02 + 0.03 * trng.uniform();
    let row = out.len() / shape[0];
    out.par_chunks_mut(row).enumerate().for_each(|(r, chunk)| {
        let mut rng = Rng::derive(tseed, r as u64);
        let scale = std * (0.25 * rng.normal()).exp();
        for o in chunk.chunks_exact_mut(esz) {
            put(o, scale * heavy(&mut rng));
        }
    });
}

// ------------------------------------------------------------------------------------------
// Program construction
// ------------------------------------------------------------------------------------------

fn bind(name: &str) -> Argument {
    Argument {
        arguments: vec![argument::Binding {
            binding: Some(argument::binding::Binding::Name(name.to_string())),
        }],
    }
}

fn i32_tensor(v: &[i32]) -> Tensor {
    Tensor {
        dtype: DType::Int32,
        shape: vec![v.len()],
        data: Data::I32(v.to_vec()),
    }
}

fn i32_scalar(v: i32) -> Tensor {
    Tensor {
        dtype: DType::Int32,
        shape: vec![],
        data: Data::I32(vec![v]),
    }
}

fn bool_scalar(v: bool) -> Tensor {
    Tensor {
        dtype: DType::Bool,
        shape: vec![],
        data: Data::U8(vec![u8::from(v)]),
    }
}

fn str_scalar(s: &str) -> Tensor {
    Tensor {
        dtype: DType::Str,
        shape: vec![],
        data: Data::Str(vec![s.as_bytes().to_vec()]),
    }
}

fn float_scalar(v: f32, dtype: DType) -> Tensor {
    Tensor {
        dtype,
        shape: vec![],
        data: match dtype {
            DType::Fp16 => Data::F16(vec![f16::from_f32(v)]),
            _ => Data::F32(vec![v]),
        },
    }
}

/// A `const` op holding `val`, typed `dtype`/`shape`.
fn const_with(name: &str, dtype: DType, shape: &[usize], val: mil::Value) -> Operation {
    let mut attributes = BTreeMap::new();
    attributes.insert("name".to_string(), string_value(name));
    attributes.insert("val".to_string(), val);
    Operation {
        r#type: "const".into(),
        inputs: BTreeMap::new(),
        outputs: vec![NamedValueType {
            name: name.to_string(),
            r#type: Some(tensor_value_type(dtype, shape)),
        }],
        blocks: vec![],
        attributes,
    }
}

fn const_imm(name: &str, t: &Tensor) -> Operation {
    let val = immediate_value(t).expect("small immediates always encode");
    const_with(name, t.dtype, &t.shape, val)
}

/// A weight to generate and where its blob reference lives.
struct Job {
    name: String,
    shape: Vec<usize>,
    norm_weight: bool,
    /// (op index, ) of the const whose `val` receives the blob offset.
    op: usize,
}

struct Builder {
    dtype: DType,
    spec: i32,
    ops: Vec<Operation>,
    inputs: Vec<NamedValueType>,
    input_names: BTreeMap<Vec<usize>, String>,
    reduced: Vec<String>,
    jobs: Vec<Job>,
    count: BTreeMap<&'static str, usize>,
    zero_bias_elems: u64,
    zero_biases: usize,
}

impl Builder {
    fn suffix(&self) -> &'static str {
        if self.dtype == DType::Fp16 {
            "_cast_fp16"
        } else {
            ""
        }
    }

    fn const_suffix(&self) -> &'static str {
        if self.dtype == DType::Fp16 {
            "_to_fp16"
        } else {
            ""
        }
    }

    /// Next `{kind}_{n}` op base name.
    fn fresh(&mut self, kind: &'static str) -> String {
        let c = self.count.entry(kind).or_insert(0);
        let s = format!("{kind}_{c}");
        *c += 1;
        s
    }

    /// The function input of this shape (created on first use).
    fn input(&mut self, prefix: &str, shape: &[usize]) -> String {
        if let Some(n) = self.input_names.get(shape) {
            return n.clone();
        }
        let name = format!(
            "{prefix}_{}",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("x")
        );
        self.inputs.push(NamedValueType {
            name: name.clone(),
            r#type: Some(tensor_value_type(self.dtype, shape)),
        });
        self.input_names.insert(shape.to_vec(), name.clone());
        name
    }

    /// A parameter const: blob reference to be filled in later when it
    /// goes to the weight file, otherwise an immediate value generated now.
    fn param(
        &mut self,
        seed: u64,
        layer: &str,
        pname: &str,
        shape: &[usize],
        norm: bool,
    ) -> String {
        let torch = format!("{layer}.{pname}");
        let name = format!("unet_{}{}", torch.replace('.', "_"), self.const_suffix());
        let n: usize = shape.iter().product();
        let norm_weight = norm && pname == "weight";
        if goes_to_blob(self.dtype, n, self.spec) {
            // Offset 0 is a placeholder; patched after the blob is written.
            let val = blob_value(self.dtype, shape, WEIGHT_FILE, 0);
            self.ops.push(const_with(&name, self.dtype, shape, val));
            self.jobs.push(Job {
                name: torch,
                shape: shape.to_vec(),
                norm_weight,
                op: self.ops.len() - 1,
            });
        } else {
            let v = generate(seed, &torch, shape, norm_weight);
            let data = match self.dtype {
                DType::Fp16 => Data::F16(v.iter().map(|&x| f16::from_f32(x)).collect()),
                _ => Data::F32(v),
            };
            let t = Tensor {
                dtype: self.dtype,
                shape: shape.to_vec(),
                data,
            };
            self.ops.push(const_imm(&name, &t));
        }
        name
    }

    /// `{op}_bias_0_to_fp16`: the zero bias coremltools writes for linears
    /// without one (not a model parameter; counted separately).
    fn zero_bias(&mut self, base: &str, n: usize) -> String {
        let name = format!("{base}_bias_0{}", self.const_suffix());
        let shape = [n];
        if goes_to_blob(self.dtype, n, self.spec) {
            let val = blob_value(self.dtype, &shape, WEIGHT_FILE, 0);
            self.ops.push(const_with(&name, self.dtype, &shape, val));
            self.jobs.push(Job {
                name: String::new(),
                shape: shape.to_vec(),
                norm_weight: false,
                op: self.ops.len() - 1,
            });
        } else {
            let data = match self.dtype {
                DType::Fp16 => Data::F16(vec![f16::ZERO; n]),
                _ => Data::F32(vec![0.0; n]),
            };
            let t = Tensor {
                dtype: self.dtype,
                shape: shape.to_vec(),
                data,
            };
            self.ops.push(const_imm(&name, &t));
        }
        self.zero_bias_elems += n as u64;
        self.zero_biases += 1;
        name
    }

    fn op(
        &mut self,
        ty: &str,
        out: &str,
        inputs: &[(&str, &str)],
        out_shape: &[usize],
        dtype: DType,
    ) {
        let mut attributes = BTreeMap::new();
        attributes.insert("name".to_string(), string_value(out));
        self.ops.push(Operation {
            r#type: ty.to_string(),
            inputs: inputs
                .iter()
                .map(|(k, v)| (k.to_string(), bind(v)))
                .collect(),
            outputs: vec![NamedValueType {
                name: out.to_string(),
                r#type: Some(tensor_value_type(dtype, out_shape)),
            }],
            blocks: vec![],
            attributes,
        });
    }

    /// `reduce_mean(x, axes=1..rank, keep_dims=False)` → `[1]`.
    fn reduce(&mut self, x: &str, rank: usize) {
        let base = self.fresh("reduce_mean");
        let axes = format!("{base}_axes_0");
        let keep = format!("{base}_keep_dims_0");
        let axes_v: Vec<i32> = (1..rank as i32).collect();
        self.ops.push(const_imm(&axes, &i32_tensor(&axes_v)));
        self.ops.push(const_imm(&keep, &bool_scalar(false)));
        let out = format!("{base}{}", self.suffix());
        let d = self.dtype;
        self.op(
            "reduce_mean",
            &out,
            &[("x", x), ("axes", &axes), ("keep_dims", &keep)],
            &[1],
            d,
        );
        self.reduced.push(out);
    }

    fn layer(&mut self, seed: u64, l: &Layer) {
        let d = self.dtype;
        let sfx = self.suffix();
        match l {
            Layer::Conv {
                name,
                cin,
                cout,
                k,
                stride,
            } => {
                let x = self.input("x_conv", &[1, *cin, 8, 8]);
                let w = self.param(seed, name, "weight", &[*cout, *cin, *k, *k], false);
                let b = self.param(seed, name, "bias", &[*cout], false);
                let base = self.fresh("conv");
                let p = (*k / 2) as i32;
                let s = *stride as i32;
                let names: Vec<String> = ["strides", "pad", "pad_type", "groups", "dilations"]
                    .iter()
                    .map(|k| format!("{base}_{k}_0"))
                    .collect();
                self.ops.push(const_imm(&names[0], &i32_tensor(&[s, s])));
                self.ops
                    .push(const_imm(&names[1], &i32_tensor(&[p, p, p, p])));
                self.ops.push(const_imm(&names[2], &str_scalar("custom")));
                self.ops.push(const_imm(&names[3], &i32_scalar(1)));
                self.ops.push(const_imm(&names[4], &i32_tensor(&[1, 1])));
                let hw = (8 + 2 * (*k / 2) - *k) / *stride + 1;
                let out = format!("{base}{sfx}");
                self.op(
                    "conv",
                    &out,
                    &[
                        ("x", &x),
                        ("weight", &w),
                        ("strides", &names[0]),
                        ("pad", &names[1]),
                        ("pad_type", &names[2]),
                        ("groups", &names[3]),
                        ("dilations", &names[4]),
                        ("bias", &b),
                    ],
                    &[1, *cout, hw, hw],
                    d,
                );
                self.reduce(&out, 4);
            }
            Layer::Linear {
                name,
                fin,
                fout,
                bias,
            } => {
                let x = self.input("x_linear", &[1, *fin]);
                let base = self.fresh("linear");
                let w = self.param(seed, name, "weight", &[*fout, *fin], false);
                let b = if *bias {
                    self.param(seed, name, "bias", &[*fout], false)
                } else {
                    // coremltools materialises the default zero bias of a
                    // bias-free nn.Linear as its own const in weight.bin.
                    self.zero_bias(&base, *fout)
                };
                let out = format!("{base}{sfx}");
                let ins = [
                    ("x", x.as_str()),
                    ("weight", w.as_str()),
                    ("bias", b.as_str()),
                ];
                self.op("linear", &out, &ins, &[1, *fout], d);
                self.reduce(&out, 2);
            }
            Layer::Norm { name, c } => {
                let x = self.input("x_linear", &[1, *c]);
                let g = self.param(seed, name, "weight", &[*c], true);
                let b = self.param(seed, name, "bias", &[*c], true);
                let base = self.fresh("layer_norm");
                let axes = format!("{base}_axes_0");
                let eps = format!("{base}_epsilon_0{}", self.const_suffix());
                self.ops.push(const_imm(&axes, &i32_tensor(&[-1])));
                self.ops.push(const_imm(&eps, &float_scalar(1e-5, d)));
                let out = format!("{base}{sfx}");
                self.op(
                    "layer_norm",
                    &out,
                    &[
                        ("x", &x),
                        ("axes", &axes),
                        ("gamma", &g),
                        ("beta", &b),
                        ("epsilon", &eps),
                    ],
                    &[1, *c],
                    d,
                );
                self.reduce(&out, 2);
            }
        }
    }

    /// Sums the reduced values into `out`.
    fn finish(&mut self) {
        let d = self.dtype;
        let reduced = std::mem::take(&mut self.reduced);
        let n = reduced.len();
        if n == 1 {
            self.op("identity", "out", &[("x", &reduced[0])], &[1], d);
            return;
        }
        let mut acc = reduced[0].clone();
        for (i, r) in reduced.iter().enumerate().skip(1) {
            let out = if i + 1 == n {
                "out".to_string()
            } else {
                format!("{}{}", self.fresh("add"), self.suffix())
            };
            self.op("add", &out, &[("x", &acc), ("y", r)], &[1], d);
            acc = out;
        }
    }
}

fn feature(name: &str, shape: &[usize], dtype: DType) -> spec::FeatureDescription {
    let dt = if dtype == DType::Fp16 {
        ArrayDataType::Float16
    } else {
        ArrayDataType::Float32
    };
    spec::FeatureDescription {
        name: name.to_string(),
        short_description: String::new(),
        r#type: Some(spec::FeatureType {
            is_optional: false,
            r#type: Some(feature_type::Type::MultiArrayType(spec::ArrayFeatureType {
                shape: shape.iter().map(|&s| s as i64).collect(),
                data_type: dt as i32,
                shape_flexibility: None,
                default_optional_value: None,
            })),
        }),
    }
}

fn shape_of(nv: &NamedValueType) -> Vec<usize> {
    match nv.r#type.as_ref().and_then(|t| t.r#type.as_ref()) {
        Some(mil::value_type::Type::TensorType(tt)) => tt
            .dimensions
            .iter()
            .map(|d| match &d.dimension {
                Some(mil::dimension::Dimension::Constant(c)) => c.size as usize,
                _ => 0,
            })
            .collect(),
        _ => vec![],
    }
}

const MANIFEST: &str = r#"{
    "fileFormatVersion": "1.0.0",
    "itemInfoEntries": {
        "5d3c2f4e-1b7a-4c7e-9f60-2a8d1e0b7c11": {
            "author": "com.apple.CoreML",
            "description": "CoreML Model Specification",
            "name": "model.mlmodel",
            "path": "com.apple.CoreML/model.mlmodel"
        },
        "8e1f0a9b-6c2d-4b3a-8e57-4f9c0d2a6b22": {
            "author": "com.apple.CoreML",
            "description": "CoreML Model Weights",
            "name": "weights",
            "path": "com.apple.CoreML/weights"
        }
    },
    "rootModelIdentifier": "5d3c2f4e-1b7a-4c7e-9f60-2a8d1e0b7c11"
}
"#;

fn human(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let t0 = Instant::now();
    let cfg = config(cli.arch);
    let subset_n = cli.subset.unwrap_or(1) as usize;
    let layers = subset(unet_layers(&cfg), subset_n);
    let dtype = match cli.dtype {
        WDtype::Fp16 => DType::Fp16,
        WDtype::Fp32 => DType::Fp32,
    };
    let (spec_version, opset) = match cli.target {
        OsTarget::Ios17 => (8, "CoreML7"),
        OsTarget::Ios18 => (9, "CoreML8"),
    };

    // Inventory and the check against the real model.
    let mut total = 0u64;
    let (mut n_tensors, mut n_rank1, mut p_rank1, mut max_t) = (0usize, 0usize, 0u64, 0u64);
    for l in &layers {
        for (_, shape) in l.params() {
            let n: u64 = shape.iter().map(|&d| d as u64).product();
            total += n;
            n_tensors += 1;
            max_t = max_t.max(n);
            if shape.len() == 1 {
                n_rank1 += 1;
                p_rank1 += n;
            }
        }
    }
    let bytes_per = if dtype == DType::Fp16 { 2 } else { 4 };
    eprintln!(
        "{:?}: {} layers, {} parameter tensors ({} rank-1 with {} params), largest {} elements",
        cli.arch,
        layers.len(),
        n_tensors,
        n_rank1,
        human(p_rank1),
        human(max_t)
    );
    println!("total parameters: {}", human(total));
    if subset_n > 1 {
        println!("subset: every {subset_n}th conv/linear and norm layer of the full model");
    }
    if let Some(r) = cfg.reference_total.filter(|_| subset_n == 1) {
        let rel = (total as f64 - r as f64) / r as f64;
        println!(
            "reference total:  {} (diffusers UNet2DConditionModel), difference {:+} ({:+.4} %)",
            human(r),
            total as i64 - r as i64,
            100.0 * rel
        );
        if rel.abs() > 1e-3 {
            bail!("parameter count is off by more than 0.1 %");
        }
    }
    println!(
        "weight data: {:.3} GB ({})",
        (total * bytes_per) as f64 / 1e9,
        if dtype == DType::Fp16 { "fp16" } else { "fp32" }
    );
    if cli.count_only {
        for l in &layers {
            for (p, s) in l.params() {
                println!("  {}.{p} {s:?}", l.name());
            }
        }
        return Ok(());
    }
    let out = cli.out.context("--out is required (unless --count-only)")?;
    if out.extension().and_then(|e| e.to_str()) != Some("mlpackage") {
        bail!("{}: output must end in .mlpackage", out.display());
    }
    if out.exists() {
        if !cli.force {
            bail!("{}: exists (use --force to replace it)", out.display());
        }
        std::fs::remove_dir_all(&out).with_context(|| format!("removing {}", out.display()))?;
    }

    // The program (weights' blob offsets are patched in below).
    let mut b = Builder {
        dtype,
        spec: spec_version,
        ops: vec![],
        inputs: vec![],
        input_names: BTreeMap::new(),
        reduced: vec![],
        jobs: vec![],
        count: BTreeMap::new(),
        zero_bias_elems: 0,
        zero_biases: 0,
    };
    for l in &layers {
        b.layer(cli.seed, l);
    }
    b.finish();

    // Weights: generated on a producer thread (rows in parallel), written
    // in order by this thread; at most a few tensors in flight.
    let model_dir = out.join("Data").join("com.apple.CoreML");
    let wdir = model_dir.join("weights");
    std::fs::create_dir_all(&wdir).with_context(|| format!("creating {}", wdir.display()))?;
    let bdt = if dtype == DType::Fp16 {
        BlobDtype::Float16
    } else {
        BlobDtype::Float32
    };
    let mut writer = BlobWriter::create(&wdir.join("weight.bin"))?;
    let seed = cli.seed;
    let jobs = &b.jobs;
    let mut offsets = Vec::with_capacity(jobs.len());
    let (tx, rx) = sync_channel::<Vec<u8>>(1);
    let written = std::thread::scope(|s| -> Result<u64> {
        s.spawn(move || {
            for j in jobs {
                let bytes = if j.name.is_empty() {
                    let n: usize = j.shape.iter().product();
                    vec![0u8; n * bytes_per as usize]
                } else {
                    generate_bytes(seed, &j.name, &j.shape, j.norm_weight, dtype)
                };
                if tx.send(bytes).is_err() {
                    return;
                }
            }
        });
        let mut last = Instant::now();
        let mut done = 0u64;
        for (k, bytes) in rx.iter().enumerate() {
            offsets.push(writer.append(bdt, &bytes, 0)?);
            done += (bytes.len() / bytes_per as usize) as u64;
            if last.elapsed().as_secs_f64() > 5.0 {
                eprintln!(
                    "  {}/{} tensors, {:.1} % of parameters, {:.0}s",
                    k + 1,
                    jobs.len(),
                    100.0 * done as f64 / total as f64,
                    t0.elapsed().as_secs_f64()
                );
                last = Instant::now();
            }
        }
        Ok(writer.finish()?)
    })?;
    if offsets.len() != b.jobs.len() {
        bail!("weight generation stopped early");
    }
    for (j, off) in b.jobs.iter().zip(&offsets) {
        let val = b.ops[j.op]
            .attributes
            .get_mut("val")
            .and_then(|v| v.value.as_mut());
        match val {
            Some(mil::value::Value::BlobFileValue(bv)) => bv.offset = *off,
            _ => unreachable!("jobs point at blob consts"),
        }
    }

    let block = mil::Block {
        inputs: vec![],
        outputs: vec!["out".into()],
        operations: std::mem::take(&mut b.ops),
        attributes: BTreeMap::new(),
    };
    let func = mil::Function {
        inputs: b.inputs.clone(),
        opset: opset.into(),
        block_specializations: [(opset.to_string(), block)].into_iter().collect(),
        attributes: BTreeMap::new(),
    };
    let program = mil::Program {
        version: 1,
        functions: [("main".to_string(), func)].into_iter().collect(),
        doc_string: String::new(),
        attributes: BTreeMap::new(),
    };
    let mut user = BTreeMap::new();
    user.insert(
        "com.github.apple.coremltools.source".to_string(),
        "sdcompress examples/synth_unet.rs".to_string(),
    );
    user.insert(
        "sdcompress.synth_unet".to_string(),
        format!(
            "arch={:?} seed={} dtype={:?} target={:?} subset={} params={}",
            cli.arch, cli.seed, cli.dtype, cli.target, subset_n, total
        )
        .to_lowercase(),
    );
    let model = spec::Model {
        specification_version: spec_version,
        description: Some(spec::ModelDescription {
            input: b
                .inputs
                .iter()
                .map(|nv| feature(&nv.name, &shape_of(nv), dtype))
                .collect(),
            output: vec![feature("out", &[1], dtype)],
            metadata: Some(spec::Metadata {
                user_defined: user,
                ..Default::default()
            }),
            ..Default::default()
        }),
        is_updatable: false,
        r#type: Some(spec::model::Type::MlProgram(program)),
    };
    let bytes = sdcompress::model::encode(&model);
    write(&model_dir.join("model.mlmodel"), &bytes)?;
    write(&out.join("Manifest.json"), MANIFEST.as_bytes())?;
    println!(
        "plus {} elements of zero biases for the {} bias-free linears (coremltools writes them too)",
        human(b.zero_bias_elems),
        b.zero_biases
    );
    println!(
        "wrote {}: {} consts in weight.bin, {} function inputs, model.mlmodel {} bytes, weight.bin {} bytes ({:.3} GB), {:.1}s",
        out.display(),
        b.jobs.len(),
        b.inputs.len(),
        bytes.len(),
        written,
        written as f64 / 1e9,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn write(p: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(p, bytes).with_context(|| format!("writing {}", p.display()))
}
