//! The default story model built into the binary (`assets/models/toy-student`, embedded by
//! build.rs). The loaders read model folders, so the first use unpacks the files into the user's
//! cache folder under a name that carries their content hash; later runs reuse that copy.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/default_model.rs"));
}

/// Whether this binary carries the default model.
pub fn is_embedded() -> bool {
    !embedded::FILES.is_empty()
}

/// Where unpacked copies go: `$STORYREEL_CACHE`, else `$XDG_CACHE_HOME/storyreel`, else
/// `~/.cache/storyreel`, else the temp folder.
fn cache_root() -> PathBuf {
    if let Some(p) = std::env::var_os("STORYREEL_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(p).join("storyreel");
    }
    if let Some(home) = std::env::var_os("HOME") {
        return PathBuf::from(home).join(".cache/storyreel");
    }
    std::env::temp_dir().join("storyreel")
}

/// The folder of the default model, unpacked on first use.
pub fn folder() -> Result<PathBuf> {
    if !is_embedded() {
        bail!(
            "this storyreel was built without the default model (assets/models/{} was missing at build time); \
             pass --model with a story model folder",
            embedded::NAME
        );
    }
    let dir = cache_root().join(format!("{}-{:016x}", embedded::NAME, embedded::HASH));
    if dir.join("storyreel_model.json").is_file() {
        return Ok(dir);
    }
    unpack(embedded::FILES, &dir).with_context(|| format!("unpacking the default model into {}", dir.display()))?;
    Ok(dir)
}

/// Writes `files` under a scratch folder beside `dir`, then renames it into place, so a reader
/// never sees half a model and two runs racing both end with a whole one.
fn unpack(files: &[(&str, &[u8])], dir: &Path) -> Result<()> {
    let parent = dir.parent().context("the cache folder has no parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let scratch = parent.join(format!(".unpacking-{}-{}", embedded::NAME, std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    for (rel, bytes) in files {
        let path = scratch.join(rel);
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
        }
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    match std::fs::rename(&scratch, dir) {
        Ok(()) => Ok(()),
        // Another run got there first: its copy is whole, ours goes.
        Err(_) if dir.join("storyreel_model.json").is_file() => {
            let _ = std::fs::remove_dir_all(&scratch);
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("moving {} to {}", scratch.display(), dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpacking_writes_every_file_and_a_second_unpack_keeps_the_first_copy() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cache/toy-student-0123");
        let files: &[(&str, &[u8])] =
            &[("storyreel_model.json", b"{}"), ("dit/model.safetensors", b"weights"), ("vae/vae_config.json", b"[]")];
        unpack(files, &dir).unwrap();
        assert_eq!(std::fs::read(dir.join("dit/model.safetensors")).unwrap(), b"weights");
        assert_eq!(std::fs::read(dir.join("vae/vae_config.json")).unwrap(), b"[]");
        // A racing second run finds the folder whole and leaves no scratch behind.
        unpack(&[("storyreel_model.json", b"{\"other\": 1}")], &dir).unwrap();
        assert_eq!(std::fs::read(dir.join("storyreel_model.json")).unwrap(), b"{}");
        let left: Vec<_> = std::fs::read_dir(dir.parent().unwrap()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }
}
