//! What it takes for a change on disk to survive a power cut on Linux: the
//! file's data is durable only after an `fsync`/`fdatasync` of that file, and
//! a created, renamed or removed name only after an `fsync` of the directory
//! that holds it. (`sync_file_range`, which sled uses, is neither: it commits
//! no file size and flushes no device cache.) Every write of the agent that
//! must outlive the power goes through here.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

/// Makes the entries of directory `dir` durable (names created, renamed or
/// removed in it).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io::Error::new(e.kind(), format!("syncing {}: {e}", dir.display())))
}

/// The directory holding `path` (`.` for a bare name).
pub fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Creates `dir` and any missing parents with `mode` (narrowed by the
/// umask), and makes each new name durable in its parent. An existing
/// directory is left as it is.
pub fn create_dir_all(dir: &Path, mode: u32) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let up = parent(dir);
    if up != dir {
        create_dir_all(up, mode)?;
    }
    match fs::DirBuilder::new().mode(mode).create(dir) {
        // Another thread or process made it meanwhile: theirs to sync.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("creating {}: {e}", dir.display()),
        )),
        Ok(()) => sync_dir(up),
    }
}

/// Renames `from` to `to` (same directory or not) and makes both names
/// durable.
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("renaming {} to {}: {e}", from.display(), to.display()),
        )
    })?;
    sync_dir(parent(to))?;
    if parent(from) != parent(to) {
        sync_dir(parent(from))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_nested_directories_and_renames() {
        let base = std::env::temp_dir().join(format!("saa-durable-{}", crate::rand::hex(10)));
        let deep = base.join("a/b/c");
        create_dir_all(&deep, 0o700).unwrap();
        assert!(deep.is_dir());
        create_dir_all(&deep, 0o700).unwrap();
        fs::write(deep.join("x"), b"1").unwrap();
        rename(&deep.join("x"), &base.join("y")).unwrap();
        assert_eq!(fs::read(base.join("y")).unwrap(), b"1");
        assert!(sync_dir(&base.join("missing")).is_err());
        fs::remove_dir_all(&base).unwrap();
    }
}
