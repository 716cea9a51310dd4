//! Files that appear at their final path only when complete: writers stage output in a
//! hidden temporary file beside the target and rename it into place on success.

use std::io::Write;
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use crate::error::{MediaError, Result};

/// A temporary file in the same directory as `path` (so the final rename cannot cross
/// file systems), named `.<file name>.<random>.partial`; it is deleted when dropped unless
/// persisted with `NamedTempFile::persist`.
pub(crate) fn staged_file(path: &Path) -> Result<NamedTempFile> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let prefix = format!(".{name}.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".partial");
    // Temporary files are private (0600) by default; the finished video is an ordinary file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    builder.tempfile_in(&dir).map_err(|e| MediaError::io(&dir, e))
}

/// Writes `bytes` to `path` through a staged temporary file, so readers never see half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = staged_file(path)?;
    file.write_all(bytes).and_then(|()| file.flush()).map_err(|e| MediaError::io(path, e))?;
    file.persist(path).map_err(|e| MediaError::io(path, e.error))?;
    Ok(())
}
