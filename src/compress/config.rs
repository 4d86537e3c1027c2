//! Compression settings at three levels, like coremltools'
//! `OptimizationConfig`: a global config, per-op-type configs and per-op-name
//! configs (a `null` entry means "do not compress").
//!
//! ```json
//! {
//!   "global_config":   {"mode": "kmeans", "nbits": 4, "granularity": "per_grouped_channel", "group_size": 16},
//!   "op_type_configs": {"linear": {"nbits": 6}, "matmul": null},
//!   "op_name_configs": {"unet_conv_out_weight_to_fp16": null}
//! }
//! ```
//!
//! Entries are partial: a field left out of an op-type or op-name entry
//! falls back to the global config, then to the command-line flags.
//!
//! The same structure holds palettize entries ([`PalettizeEntry`]) or prune
//! entries ([`PruneEntry`]).

use crate::kernels::palettize::Mode;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// Palettization granularity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    /// One LUT for the whole tensor.
    PerTensor,
    /// One LUT per group of `group_size` consecutive output channels.
    PerGroupedChannel,
}

/// What to do when a weight's channel count is not a multiple of the
/// group size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupSizeFallback {
    /// Use the largest divisor of the channel count that is at most the
    /// requested group size (the default).
    Divisor,
    /// Leave the weight uncompressed (coremltools' behaviour).
    Skip,
}

/// One (possibly partial) palettizer config.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PalettizeEntry {
    /// kmeans / uniform / unique.
    pub mode: Option<Mode>,
    /// Index bits.
    pub nbits: Option<u32>,
    /// per_tensor / per_grouped_channel.
    pub granularity: Option<Granularity>,
    /// Channels per group.
    pub group_size: Option<usize>,
    /// Override of the output-channel axis.
    pub channel_axis: Option<i64>,
    /// Compress only weights with more elements than this.
    pub weight_threshold: Option<usize>,
    /// divisor (default) / skip.
    pub group_size_fallback: Option<GroupSizeFallback>,
    /// Store LUT entries as int8/uint8 codes with a scale per LUT (iOS18).
    pub lut_dtype: Option<LutDType>,
    /// Normalise by per-channel scales (max |w|) and fold the scales into
    /// the LUT side (iOS18).
    pub per_channel_scale: Option<bool>,
    /// Which positions share a scale: `input` (default, coremltools') or
    /// `output`.
    pub scale_axis: Option<ScaleAxis>,
    /// Vector palettization: LUT entries are vectors of this many
    /// consecutive channels (coremltools' `cluster_dim`; 1 = scalar).
    pub cluster_dim: Option<usize>,
}

/// The layout of per-channel scales (`--scale-axis`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScaleAxis {
    /// One scale per position off the channel axis (max over the output
    /// channels: coremltools' `enable_per_channel_scale`).
    Input,
    /// One scale per output channel (max over the rest of the channel).
    Output,
}

/// Integer types for LUT entries (`--lut-dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LutDType {
    /// Signed 8-bit codes, symmetric (no offset stored).
    Int8,
    /// Unsigned 8-bit codes, symmetric around code 127 (offset stored).
    Uint8,
}

/// A partial entry of some pass's config.
pub trait Entry: Clone + Default + PartialEq + DeserializeOwned {
    /// Fields of `self`, falling back to `base`.
    fn over(&self, base: &Self) -> Self;
}

impl Entry for PalettizeEntry {
    fn over(&self, base: &PalettizeEntry) -> PalettizeEntry {
        PalettizeEntry {
            mode: self.mode.or(base.mode),
            nbits: self.nbits.or(base.nbits),
            granularity: self.granularity.or(base.granularity),
            group_size: self.group_size.or(base.group_size),
            channel_axis: self.channel_axis.or(base.channel_axis),
            weight_threshold: self.weight_threshold.or(base.weight_threshold),
            group_size_fallback: self.group_size_fallback.or(base.group_size_fallback),
            lut_dtype: self.lut_dtype.or(base.lut_dtype),
            per_channel_scale: self.per_channel_scale.or(base.per_channel_scale),
            scale_axis: self.scale_axis.or(base.scale_axis),
            cluster_dim: self.cluster_dim.or(base.cluster_dim),
        }
    }
}

/// One (possibly partial) prune config, with the LUT settings of the joint
/// one-shot form (`nbits` and the rest, as in [`PalettizeEntry`]).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PruneEntry {
    /// Fraction of each weight to zero (coremltools: `target_sparsity`).
    #[serde(alias = "target_sparsity")]
    pub sparsity: Option<f64>,
    /// `[N, M]`: N of every M zeroed (coremltools: `n_m_ratio`).
    #[serde(alias = "n_m_ratio")]
    pub n_m: Option<(usize, usize)>,
    /// Prune blocks of this many consecutive elements along `dim`.
    pub block_size: Option<usize>,
    /// Axis of blocks / n:m runs (default 0 for blocks, 1 for n:m).
    pub dim: Option<usize>,
    /// Compress only weights with more elements than this.
    pub weight_threshold: Option<usize>,
    /// Joint: palettize the kept values with this many bits.
    pub nbits: Option<u32>,
    /// Joint: LUT mode.
    pub mode: Option<Mode>,
    /// Joint: LUT granularity.
    pub granularity: Option<Granularity>,
    /// Joint: channels per LUT group.
    pub group_size: Option<usize>,
    /// Joint: override of the LUT grouping axis.
    pub channel_axis: Option<i64>,
    /// Joint: divisor (default) / skip.
    pub group_size_fallback: Option<GroupSizeFallback>,
}

impl Entry for PruneEntry {
    /// The pattern (sparsity or n:m, with its block size and axis) comes as
    /// a unit from the most specific level that names sparsity or n:m, so
    /// that an op-level `n_m` replaces a global `sparsity`; other fields
    /// fall back one by one.
    fn over(&self, base: &PruneEntry) -> PruneEntry {
        let own_pattern = self.sparsity.is_some() || self.n_m.is_some();
        PruneEntry {
            sparsity: if own_pattern {
                self.sparsity
            } else {
                base.sparsity
            },
            n_m: if own_pattern { self.n_m } else { base.n_m },
            block_size: if own_pattern {
                self.block_size
            } else {
                self.block_size.or(base.block_size)
            },
            dim: if own_pattern {
                self.dim
            } else {
                self.dim.or(base.dim)
            },
            weight_threshold: self.weight_threshold.or(base.weight_threshold),
            nbits: self.nbits.or(base.nbits),
            mode: self.mode.or(base.mode),
            granularity: self.granularity.or(base.granularity),
            group_size: self.group_size.or(base.group_size),
            channel_axis: self.channel_axis.or(base.channel_axis),
            group_size_fallback: self.group_size_fallback.or(base.group_size_fallback),
        }
    }
}

impl PruneEntry {
    /// The LUT part of a joint one-shot entry: `None` when neither `nbits`
    /// nor `mode` is set (plain pruning).
    pub fn lut(&self) -> Result<Option<PalettizeEntry>, String> {
        if self.nbits.is_none() && self.mode.is_none() {
            if self.group_size.is_some()
                || self.granularity.is_some()
                || self.channel_axis.is_some()
            {
                return Err(
                    "group size, granularity and channel axis of a joint LUT need nbits".into(),
                );
            }
            return Ok(None);
        }
        Ok(Some(PalettizeEntry {
            mode: self.mode,
            nbits: self.nbits,
            granularity: self.granularity,
            group_size: self.group_size,
            channel_axis: self.channel_axis,
            weight_threshold: self.weight_threshold,
            group_size_fallback: self.group_size_fallback,
            lut_dtype: None,
            per_channel_scale: None,
            scale_axis: None,
            cluster_dim: None,
        }))
    }
}

/// The three-level configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, bound(deserialize = "E: Entry"))]
pub struct OptimizationConfig<E = PalettizeEntry> {
    /// Applies to every weight not matched below.
    #[serde(default = "none")]
    pub global_config: Option<E>,
    /// By consuming op type (`conv`, `linear`, ...); `null` = skip.
    #[serde(default = "BTreeMap::new")]
    pub op_type_configs: BTreeMap<String, Option<E>>,
    /// By const name or consuming op name; `null` = skip.
    #[serde(default = "BTreeMap::new")]
    pub op_name_configs: BTreeMap<String, Option<E>>,
}

fn none<E>() -> Option<E> {
    None
}

impl<E> Default for OptimizationConfig<E> {
    fn default() -> Self {
        Self {
            global_config: None,
            op_type_configs: BTreeMap::new(),
            op_name_configs: BTreeMap::new(),
        }
    }
}

impl<E: Entry> OptimizationConfig<E> {
    /// Reads a JSON config file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| format!("{}: invalid config: {e}", path.display()))
    }

    /// The entry for a weight: its const name first, then its consumers
    /// (by name, then by type), then global. `Ok(None)` = skip. Consumers
    /// resolving to different entries is an error, as in coremltools.
    pub fn resolve(
        &self,
        const_name: &str,
        consumers: &[(String, String)],
    ) -> Result<Option<E>, String> {
        let global = self.global_config.clone().unwrap_or_default();
        if let Some(e) = self.op_name_configs.get(const_name) {
            return Ok(e.as_ref().map(|e| e.over(&global)));
        }
        let mut chosen: Option<Option<E>> = None;
        for (name, ty) in consumers {
            let e = if let Some(e) = self.op_name_configs.get(name) {
                e.as_ref().map(|e| e.over(&global))
            } else if let Some(e) = self.op_type_configs.get(ty) {
                e.as_ref().map(|e| e.over(&global))
            } else {
                Some(global.clone())
            };
            match &chosen {
                None => chosen = Some(e),
                Some(c) if *c == e => {}
                Some(_) => {
                    return Err(format!(
                        "consumers of '{const_name}' resolve to different configs"
                    ))
                }
            }
        }
        Ok(chosen.unwrap_or(Some(global)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_levels() {
        let c: OptimizationConfig = serde_json::from_str(
            r#"{"global_config": {"nbits": 4, "mode": "kmeans"},
                "op_type_configs": {"linear": {"nbits": 6}, "matmul": null},
                "op_name_configs": {"w_conv": null, "c2": {"granularity": "per_grouped_channel", "group_size": 8}}}"#,
        )
        .unwrap();
        let conv = vec![("c1".to_string(), "conv".to_string())];
        assert_eq!(c.resolve("w", &conv).unwrap().unwrap().nbits, Some(4));
        assert_eq!(c.resolve("w_conv", &conv).unwrap(), None);
        let lin = vec![("l1".to_string(), "linear".to_string())];
        assert_eq!(c.resolve("w", &lin).unwrap().unwrap().nbits, Some(6));
        let mm = vec![("m".to_string(), "matmul".to_string())];
        assert_eq!(c.resolve("w", &mm).unwrap(), None);
        let named = vec![("c2".to_string(), "conv".to_string())];
        let e = c.resolve("w", &named).unwrap().unwrap();
        assert_eq!((e.nbits, e.group_size), (Some(4), Some(8)));
        let both = vec![conv[0].clone(), lin[0].clone()];
        assert!(c.resolve("w", &both).is_err());
        assert!(serde_json::from_str::<OptimizationConfig>(r#"{"global": {}}"#).is_err());
    }

    #[test]
    fn prune_levels_replace_the_pattern_as_a_unit() {
        let c: OptimizationConfig<PruneEntry> = serde_json::from_str(
            r#"{"global_config": {"target_sparsity": 0.4, "block_size": 4, "nbits": 4},
                "op_type_configs": {"linear": {"n_m_ratio": [2, 4]}, "conv": {"block_size": 2}},
                "op_name_configs": {"w_skip": null}}"#,
        )
        .unwrap();
        let lin = vec![("l".to_string(), "linear".to_string())];
        let e = c.resolve("w", &lin).unwrap().unwrap();
        assert_eq!(
            (e.sparsity, e.n_m, e.block_size),
            (None, Some((2, 4)), None)
        );
        assert_eq!(e.nbits, Some(4));
        let conv = vec![("c".to_string(), "conv".to_string())];
        let e = c.resolve("w", &conv).unwrap().unwrap();
        assert_eq!((e.sparsity, e.block_size), (Some(0.4), Some(2)));
        assert_eq!(c.resolve("w_skip", &conv).unwrap(), None);
        assert!(serde_json::from_str::<OptimizationConfig<PruneEntry>>(
            r#"{"global_config": {"sparsity": 0.4, "bits": 4}}"#
        )
        .is_err());
        let bad = PruneEntry {
            group_size: Some(16),
            ..PruneEntry::default()
        };
        assert!(bad.lut().is_err());
    }
}

/// Linear quantization granularity (coremltools' names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QuantGranularity {
    /// One scale for the whole tensor.
    PerTensor,
    /// One scale per output channel.
    PerChannel,
    /// One scale per output channel and block of `block_size` input
    /// channels (iOS18).
    PerBlock,
}

/// Linear quantization mode (coremltools' names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QuantMode {
    /// Range symmetric around 0; zero point fixed (0, or the middle code of
    /// unsigned types).
    LinearSymmetric,
    /// Range [min(0, min), max(0, max)] with a rounded zero point.
    Linear,
}

/// One (possibly partial) linear quantizer config, with coremltools'
/// `OpLinearQuantizerConfig` field names.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantizeEntry {
    /// linear_symmetric (default) / linear.
    pub mode: Option<QuantMode>,
    /// int8 (default) / uint8 / int4 / uint4.
    pub dtype: Option<crate::kernels::quantize::QType>,
    /// per_channel (default) / per_tensor / per_block.
    pub granularity: Option<QuantGranularity>,
    /// Input channels per block (per_block; default 32).
    pub block_size: Option<usize>,
    /// Compress only weights with more elements than this.
    pub weight_threshold: Option<usize>,
}

impl Entry for QuantizeEntry {
    fn over(&self, base: &QuantizeEntry) -> QuantizeEntry {
        QuantizeEntry {
            mode: self.mode.or(base.mode),
            dtype: self.dtype.or(base.dtype),
            granularity: self.granularity.or(base.granularity),
            block_size: self.block_size.or(base.block_size),
            weight_threshold: self.weight_threshold.or(base.weight_threshold),
        }
    }
}
