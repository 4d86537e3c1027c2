//! `.mlpackage` directories: open (manifest, root model, weight files),
//! and save through a temporary sibling directory that is renamed into
//! place only when everything was written.

mod manifest;
mod output;
mod sink;

pub use manifest::{safe_relative, Item, Manifest};
pub use output::Staging;
pub use sink::{copy_package_files, WeightSink, DEFAULT_WEIGHT_FILE};

use crate::blob::{BlobError, BlobFile};
use crate::mil::BlobFiles;
use crate::model::{self, ModelError};
use crate::proto::mil::{self as milp, value};
use crate::proto::spec::{model::Type, Model};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What is wrong with a package or an output location.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The input is not a directory.
    #[error("{path}: not a .mlpackage directory")]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// No `Manifest.json`.
    #[error("{path}: missing Manifest.json")]
    MissingManifest {
        /// The package.
        path: PathBuf,
    },
    /// `Manifest.json` is malformed.
    #[error("{path}: invalid manifest: {reason}")]
    BadManifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A manifest item or weight reference points outside the package.
    #[error("{path}: path '{item}' points outside the package")]
    PathEscapes {
        /// The file holding the reference.
        path: PathBuf,
        /// The offending path.
        item: String,
    },
    /// A manifest item or referenced file does not exist.
    #[error("{path}: {what} does not exist")]
    Missing {
        /// The missing path.
        path: PathBuf,
        /// What it is.
        what: String,
    },
    /// The output exists and `--force` was not given.
    #[error("{path}: output already exists (use --force to overwrite)")]
    OutputExists {
        /// The output path.
        path: PathBuf,
    },
    /// The output would overwrite or live inside the input.
    #[error("{path}: {reason}")]
    BadOutput {
        /// The output path.
        path: PathBuf,
        /// Why it is refused.
        reason: String,
    },
    /// The root model file is bad.
    #[error("{path}: {source}")]
    Model {
        /// `model.mlmodel`.
        path: PathBuf,
        /// What is wrong.
        source: ModelError,
    },
    /// A weight file is bad.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// A value in the program references a blob that does not match it.
    #[error("{path}: {reason}")]
    BadReference {
        /// The model file.
        path: PathBuf,
        /// What does not match.
        reason: String,
    },
}

/// An opened package. Weight files stay memory-mapped.
#[derive(Debug)]
pub struct Package {
    /// The package directory.
    pub root: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// Root model path relative to `root` (normally
    /// `Data/com.apple.CoreML/model.mlmodel`).
    pub model_rel: PathBuf,
    /// The decoded model.
    pub model: Model,
    /// Size of the model file in bytes.
    pub model_len: u64,
    /// Weight files referenced by the program, keyed by `fileName`.
    pub blobs: BlobFiles,
    /// Where each weight file lives, relative to `root`.
    pub blob_rel: BTreeMap<String, PathBuf>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PackageError + '_ {
    move |source| PackageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Package {
    /// Opens and validates a package: manifest, root model (must be an ML
    /// Program), and every weight file the program references.
    pub fn open(root: &Path) -> Result<Self, PackageError> {
        let meta = std::fs::metadata(root).map_err(io(root))?;
        if !meta.is_dir() {
            return Err(PackageError::NotADirectory {
                path: root.to_path_buf(),
            });
        }
        let canon_root = root.canonicalize().map_err(io(root))?;
        let mpath = root.join("Manifest.json");
        if !mpath.is_file() {
            return Err(PackageError::MissingManifest {
                path: root.to_path_buf(),
            });
        }
        let mbytes = std::fs::read(&mpath).map_err(io(&mpath))?;
        let manifest = Manifest::parse(&mpath, &mbytes)?;
        for item in &manifest.items {
            let p = root.join("Data").join(&item.path);
            if !p.exists() {
                return Err(PackageError::Missing {
                    path: p,
                    what: format!("manifest item '{}' ({})", item.id, item.name),
                });
            }
            inside(&canon_root, &p, &mpath, &item.path.to_string_lossy())?;
        }
        let model_rel = Path::new("Data").join(&manifest.root().path);
        let model_path = root.join(&model_rel);
        if !model_path.is_file() {
            return Err(PackageError::Missing {
                path: model_path,
                what: "root model file".into(),
            });
        }
        let bytes = std::fs::read(&model_path).map_err(io(&model_path))?;
        let model = model::decode(&bytes).map_err(|source| PackageError::Model {
            path: model_path.clone(),
            source,
        })?;
        let model_dir = model_rel.parent().unwrap_or(Path::new("")).to_path_buf();
        let mut names = Vec::new();
        if let Some(Type::MlProgram(p)) = &model.r#type {
            for_each_blob_ref(p, &mut |bv| names.push(bv.file_name.clone()));
        }
        names.sort();
        names.dedup();
        let mut blobs = BTreeMap::new();
        let mut blob_rel = BTreeMap::new();
        for name in names {
            let rel = resolve_weight_path(&name, &model_dir).ok_or_else(|| {
                PackageError::PathEscapes {
                    path: model_path.clone(),
                    item: name.clone(),
                }
            })?;
            let full = root.join(&rel);
            if !full.is_file() {
                return Err(PackageError::Missing {
                    path: full,
                    what: format!("weight file '{name}' referenced by the program"),
                });
            }
            inside(&canon_root, &full, &model_path, &name)?;
            blobs.insert(name.clone(), BlobFile::open(&full)?);
            blob_rel.insert(name, rel);
        }
        if let Some(Type::MlProgram(p)) = &model.r#type {
            check_blob_refs(p, &blobs, &model_path)?;
        }
        Ok(Self {
            root: root.to_path_buf(),
            manifest,
            model_rel,
            model,
            model_len: bytes.len() as u64,
            blobs,
            blob_rel,
        })
    }

    /// The ML Program (always present: `open` refuses other model types).
    pub fn program(&self) -> &milp::Program {
        match &self.model.r#type {
            Some(Type::MlProgram(p)) => p,
            _ => unreachable!("Package::open accepts only mlProgram models"),
        }
    }

    /// Path of the root model file.
    pub fn model_path(&self) -> PathBuf {
        self.root.join(&self.model_rel)
    }
}

/// Checks every blob reference of the program against its declared type:
/// a record must start at the offset, with the declared dtype and exactly
/// the size the declared shape needs. Done once at open, so no later
/// reader or copier can trip over an inconsistent reference.
fn check_blob_refs(
    p: &milp::Program,
    blobs: &BlobFiles,
    model_path: &Path,
) -> Result<(), PackageError> {
    let mut copy = p.clone();
    sink::visit_values_mut(&mut copy, &mut |v: &mut milp::Value| {
        let Some(value::Value::BlobFileValue(bv)) = &v.value else {
            return Ok(());
        };
        let bad = |e: crate::mil::MilError| match e {
            crate::mil::MilError::Blob(b) => PackageError::Blob(b),
            e => PackageError::BadReference {
                path: model_path.to_path_buf(),
                reason: e.to_string(),
            },
        };
        let ctx = format!(
            "value referencing offset {} of '{}'",
            bv.offset, bv.file_name
        );
        let (dtype, shape) =
            crate::mil::value::tensor_type_of(v.r#type.as_ref(), &ctx).map_err(bad)?;
        crate::mil::value::blob_record(blobs, bv, dtype, &shape, &ctx).map_err(bad)?;
        Ok(())
    })
}

/// Checks (after resolving symlinks) that `p` lies inside `canon_root`.
fn inside(canon_root: &Path, p: &Path, referrer: &Path, item: &str) -> Result<(), PackageError> {
    let c = p.canonicalize().map_err(io(p))?;
    if c.starts_with(canon_root) {
        Ok(())
    } else {
        Err(PackageError::PathEscapes {
            path: referrer.to_path_buf(),
            item: item.to_string(),
        })
    }
}

/// `@model_path/weights/weight.bin` → `<model dir>/weights/weight.bin`.
pub fn resolve_weight_path(file_name: &str, model_dir: &Path) -> Option<PathBuf> {
    let rest = file_name.strip_prefix("@model_path/")?;
    Some(model_dir.join(safe_relative(rest)?))
}

/// Calls `f` on every blob reference anywhere in the program.
pub fn for_each_blob_ref(p: &milp::Program, f: &mut dyn FnMut(&milp::value::BlobFileValue)) {
    let mut p = p.clone();
    // A read-only walk via the mutable visitor keeps one traversal to maintain.
    let _ = sink::visit_values_mut(&mut p, &mut |v: &mut milp::Value| {
        if let Some(value::Value::BlobFileValue(bv)) = &v.value {
            f(bv);
        }
        Ok::<(), std::convert::Infallible>(())
    });
}
