//! Token files: the TOKEN answer written to a file for POS software that
//! prefers reading a file to speaking the socket protocol. Replaced
//! atomically (write a temporary file, fsync, rename, fsync the directory),
//! so a reader sees the old file or the new one, never half of one.

use crate::durable;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Replaces `path` with `contents`, mode 0640, group `gid` when given.
pub fn write(path: &Path, contents: &[u8], gid: Option<u32>) -> io::Result<()> {
    let dir = durable::parent(path);
    // New folders are made durable too: a token file in a folder whose
    // own name a power cut took away would be lost with it.
    durable::create_dir_all(dir, 0o777)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "token file has no name"))?;
    // One fixed name: writes are serialised within the agent, and one
    // left behind by a crash (kill -9, power loss) is reused, not piled up.
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o640)
            .open(&tmp)?;
        // The umask may have narrowed the mode; set it exactly.
        f.set_permissions(fs::Permissions::from_mode(0o640))?;
        if let Some(gid) = gid {
            crate::sys::set_group(&tmp, gid)?;
        }
        f.write_all(contents)?;
        f.sync_all()?;
        drop(f);
        durable::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Removes a token file, durably (a power cut does not bring it back); a
/// missing file is fine.
pub fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => durable::sync_dir(durable::parent(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_atomically_with_mode_0640() {
        let dir = std::env::temp_dir().join(format!("saa-tf-{}", crate::rand::hex(10)));
        let path = dir.join("tokens/a.json");
        write(&path, b"one\n", None).unwrap();
        write(&path, b"two\n", None).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two\n");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.join("tokens")).unwrap().count(), 1);
        remove(&path).unwrap();
        remove(&path).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }
}
