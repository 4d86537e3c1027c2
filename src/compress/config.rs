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

use crate::kernels::palettize::Mode;
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
}

impl PalettizeEntry {
    /// Fields of `self`, falling back to `base`.
    pub fn over(&self, base: &PalettizeEntry) -> PalettizeEntry {
        PalettizeEntry {
            mode: self.mode.or(base.mode),
            nbits: self.nbits.or(base.nbits),
            granularity: self.granularity.or(base.granularity),
            group_size: self.group_size.or(base.group_size),
            channel_axis: self.channel_axis.or(base.channel_axis),
            weight_threshold: self.weight_threshold.or(base.weight_threshold),
        }
    }
}

/// The three-level configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizationConfig {
    /// Applies to every weight not matched below.
    #[serde(default)]
    pub global_config: Option<PalettizeEntry>,
    /// By consuming op type (`conv`, `linear`, ...); `null` = skip.
    #[serde(default)]
    pub op_type_configs: BTreeMap<String, Option<PalettizeEntry>>,
    /// By const name or consuming op name; `null` = skip.
    #[serde(default)]
    pub op_name_configs: BTreeMap<String, Option<PalettizeEntry>>,
}

impl OptimizationConfig {
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
    ) -> Result<Option<PalettizeEntry>, String> {
        let global = self.global_config.clone().unwrap_or_default();
        if let Some(e) = self.op_name_configs.get(const_name) {
            return Ok(e.as_ref().map(|e| e.over(&global)));
        }
        let mut chosen: Option<Option<PalettizeEntry>> = None;
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
}
