//! `Manifest.json`: the package's table of contents.

use super::PackageError;
use serde_json::Value;
use std::path::{Component, Path, PathBuf};

/// One entry of `itemInfoEntries`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The entry's identifier (a UUID string; opaque to us).
    pub id: String,
    /// Path relative to `<package>/Data/`.
    pub path: PathBuf,
    /// `name`.
    pub name: String,
    /// `author`.
    pub author: String,
    /// `description`.
    pub description: String,
}

/// A parsed, validated manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// `fileFormatVersion`.
    pub version: String,
    /// Items in file order.
    pub items: Vec<Item>,
    /// `rootModelIdentifier`.
    pub root_id: String,
}

impl Manifest {
    /// Parses manifest bytes; `file` is used in error messages.
    pub fn parse(file: &Path, bytes: &[u8]) -> Result<Self, PackageError> {
        let bad = |reason: String| PackageError::BadManifest {
            path: file.to_path_buf(),
            reason,
        };
        let v: Value =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| bad("top level is not an object".into()))?;
        let version = obj
            .get("fileFormatVersion")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("missing string 'fileFormatVersion'".into()))?
            .to_string();
        check_version(&version).map_err(bad)?;
        let root_id = obj
            .get("rootModelIdentifier")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("missing string 'rootModelIdentifier'".into()))?
            .to_string();
        let entries = obj
            .get("itemInfoEntries")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("missing object 'itemInfoEntries'".into()))?;
        let mut items = Vec::new();
        for (id, e) in entries {
            let field = |k: &str| -> Result<String, PackageError> {
                e.get(k)
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| bad(format!("item '{id}' has no string '{k}'")))
            };
            let path = field("path")?;
            let rel = safe_relative(&path).ok_or_else(|| PackageError::PathEscapes {
                path: file.to_path_buf(),
                item: path.clone(),
            })?;
            items.push(Item {
                id: id.clone(),
                path: rel,
                name: field("name")?,
                author: field("author")?,
                description: field("description")?,
            });
        }
        if !items.iter().any(|i| i.id == root_id) {
            return Err(bad(format!(
                "rootModelIdentifier '{root_id}' names no item"
            )));
        }
        Ok(Self {
            version,
            items,
            root_id,
        })
    }

    /// The root model's item.
    pub fn root(&self) -> &Item {
        // Checked in `parse`.
        self.items
            .iter()
            .find(|i| i.id == self.root_id)
            .expect("root item checked at parse time")
    }
}

/// Accepts `major.minor.patch` no newer than 1.0.0, as Core ML does.
fn check_version(v: &str) -> Result<(), String> {
    let parts: Vec<&str> = v.split('.').collect();
    let nums: Option<Vec<u64>> = parts.iter().map(|p| p.parse::<u64>().ok()).collect();
    match nums {
        Some(n) if n.len() == 3 => {
            if (n[0], n[1], n[2]) > (1, 0, 0) {
                Err(format!(
                    "fileFormatVersion {v} is newer than the supported 1.0.0"
                ))
            } else {
                Ok(())
            }
        }
        _ => Err(format!(
            "fileFormatVersion '{v}' is not of the form major.minor.patch"
        )),
    }
}

/// A relative path with only normal components, or `None` if it is
/// absolute, empty, or climbs out with `..`.
pub fn safe_relative(p: &str) -> Option<PathBuf> {
    if p.is_empty() || p.contains('\0') {
        return None;
    }
    let path = Path::new(p);
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::CurDir => {}
            _ => return None,
        }
    }
    if out.as_os_str().is_empty() {
        None
    } else {
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert!(check_version("1.0.0").is_ok());
        assert!(check_version("0.9.1").is_ok());
        assert!(check_version("1.0.1").is_err());
        assert!(check_version("2.0.0").is_err());
        assert!(check_version("1.0").is_err());
        assert!(check_version("-1.0.0").is_err());
    }

    #[test]
    fn escaping_paths() {
        assert_eq!(
            safe_relative("com.apple.CoreML/model.mlmodel"),
            Some(PathBuf::from("com.apple.CoreML/model.mlmodel"))
        );
        assert_eq!(safe_relative("../x"), None);
        assert_eq!(safe_relative("a/../../x"), None);
        assert_eq!(safe_relative("/etc/passwd"), None);
        assert_eq!(safe_relative(""), None);
        assert_eq!(safe_relative("."), None);
    }
}
