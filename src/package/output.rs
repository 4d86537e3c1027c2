//! Writing an output package safely: refuse to overwrite without `--force`,
//! refuse outputs that overlap the input, write into a temporary sibling
//! directory, rename into place at the end, and clean up on failure.

use super::{io, PackageError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A temporary output directory next to the final path. Dropping it
/// without [`Staging::commit`] removes it.
#[derive(Debug)]
pub struct Staging {
    target: PathBuf,
    tmp: PathBuf,
    done: bool,
}

impl Staging {
    /// Checks `out` against `input` and creates the temporary sibling.
    pub fn new(out: &Path, input: &Path, force: bool) -> Result<Self, PackageError> {
        let bad = |reason: &str| PackageError::BadOutput {
            path: out.to_path_buf(),
            reason: reason.to_string(),
        };
        if out.extension().and_then(|e| e.to_str()) != Some("mlpackage") {
            return Err(bad("output must end in .mlpackage (Core ML requires it)"));
        }
        let name = out
            .file_name()
            .ok_or_else(|| bad("output has no file name"))?;
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let cparent = parent
            .canonicalize()
            .map_err(|_| bad("output directory does not exist"))?;
        let cout = cparent.join(name);
        let cin = input.canonicalize().map_err(io(input))?;
        if cout == cin {
            return Err(bad(
                "output is the input package; sdcompress never modifies its input",
            ));
        }
        if cout.starts_with(&cin) {
            return Err(bad("output is inside the input package"));
        }
        if cin.starts_with(&cout) {
            return Err(bad(
                "output would replace a directory that contains the input",
            ));
        }
        if std::fs::symlink_metadata(&cout).is_ok() && !force {
            return Err(PackageError::OutputExists {
                path: out.to_path_buf(),
            });
        }
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = cparent.join(format!(
            ".{}.sdcompress-tmp-{}-{n}",
            name.to_string_lossy(),
            std::process::id()
        ));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        std::fs::create_dir(&tmp).map_err(io(&tmp))?;
        Ok(Self {
            target: cout,
            tmp,
            done: false,
        })
    }

    /// The temporary directory to write into.
    pub fn dir(&self) -> &Path {
        &self.tmp
    }

    /// Moves the finished package into place (replacing an existing output,
    /// which `new` allowed only with `--force`).
    pub fn commit(mut self) -> Result<PathBuf, PackageError> {
        if std::fs::symlink_metadata(&self.target).is_ok() {
            let old = PathBuf::from(format!("{}.old", self.tmp.display()));
            std::fs::rename(&self.target, &old).map_err(io(&self.target))?;
            if let Err(e) = std::fs::rename(&self.tmp, &self.target) {
                // Put the previous output back; the new one is discarded.
                let _ = std::fs::rename(&old, &self.target);
                return Err(PackageError::Io {
                    path: self.target.clone(),
                    source: e,
                });
            }
            let r = if old.is_dir() {
                std::fs::remove_dir_all(&old)
            } else {
                std::fs::remove_file(&old)
            };
            r.map_err(io(&old))?;
        } else {
            std::fs::rename(&self.tmp, &self.target).map_err(io(&self.target))?;
        }
        self.done = true;
        Ok(self.target.clone())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}
