//! Token files: the TOKEN answer written to a file for POS software that
//! prefers reading a file to speaking the socket protocol. Replaced
//! atomically (write a temporary file, fsync, rename, fsync the directory),
//! so a reader sees the old file or the new one, never half of one.

use crate::durable;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Who may read a token file besides root and the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readers {
    /// Mode 0640, this group (`None`: the agent's own group).
    Group(Option<u32>),
    /// Mode 0600: root and the agent only.
    Nobody,
}

impl Readers {
    fn file_mode(self) -> u32 {
        match self {
            Readers::Group(_) => 0o640,
            Readers::Nobody => 0o600,
        }
    }
    fn gid(self) -> Option<u32> {
        match self {
            Readers::Group(gid) => gid,
            Readers::Nobody => None,
        }
    }
}

/// Replaces `path` with `contents`, readable as `readers` says.
///
/// The file is built under a fresh random name opened with
/// `O_CREAT|O_EXCL|O_NOFOLLOW` (a name planted in the directory, a symlink
/// above all, makes the open fail rather than be followed), its mode and
/// group are set on the descriptor, never by path, and it is then renamed
/// over `path` (rename replaces a symlink at `path`; it never writes
/// through one). Folders the agent creates get 0750 and the readers' group
/// (0700 for `Nobody`). Folders that another user owns or can write are
/// refused ([`check_dir`]) here as at config load: one may have been
/// removed and made again by someone else since (a tmpfs after a reboot).
pub fn write(path: &Path, contents: &[u8], readers: Readers) -> io::Result<()> {
    check_dir(path, &crate::config::trusted_uids())
        .map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e))?;
    create_dirs(durable::parent(path), readers)?;
    replace(path, contents, readers.gid(), readers.file_mode(), true)
}

/// Replaces `path` (its folder must exist) with `contents`, with `mode` and
/// group `gid` set on the descriptor, under a fresh random name renamed
/// over it, as [`write`] describes. `sync`: fsync the file and the
/// folder (token files); without, a power cut may leave the old file or
/// none, never half of one (the metrics file, rewritten every minute).
pub fn replace(
    path: &Path,
    contents: &[u8],
    gid: Option<u32>,
    mode: u32,
    sync: bool,
) -> io::Result<()> {
    let dir = durable::parent(path);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the file has no name"))?
        .to_string_lossy()
        .into_owned();
    remove_leftovers(dir, &name);
    let tmp = dir.join(format!(".{name}.{}.tmp", crate::rand::hex(12)));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&tmp)?;
        set_owner_and_mode(&f, gid, mode)?;
        f.write_all(contents)?;
        if sync {
            f.sync_all()?;
            drop(f);
            durable::rename(&tmp, path)
        } else {
            drop(f);
            fs::rename(&tmp, path)
        }
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The group (when it differs: the unit's system call filter refuses a
/// needless chown) and the exact mode, whatever the umask, on `f` itself.
fn set_owner_and_mode(f: &File, gid: Option<u32>, mode: u32) -> io::Result<()> {
    if let Some(gid) = gid {
        if f.metadata()?.gid() != gid {
            std::os::unix::fs::fchown(f, None, Some(gid))?;
        }
    }
    f.set_permissions(fs::Permissions::from_mode(mode))
}

/// Temporary files of `name` a crash left behind (unlink never follows a
/// link, so a planted name only gets removed).
fn remove_leftovers(dir: &Path, name: &str) {
    let prefix = format!(".{name}.");
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let n = e.file_name();
        let n = n.to_string_lossy();
        if n.starts_with(&prefix) && n.ends_with(".tmp") {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Creates the missing folders down to `dir`, each durable in its parent,
/// 0750 with the readers' group (0700 without one).
fn create_dirs(dir: &Path, readers: Readers) -> io::Result<()> {
    let mut missing: Vec<PathBuf> = Vec::new();
    let mut at = dir;
    while !at.is_dir() {
        missing.push(at.to_path_buf());
        let up = durable::parent(at);
        if up == at {
            break;
        }
        at = up;
    }
    let mode = match readers {
        Readers::Group(_) => 0o750,
        Readers::Nobody => 0o700,
    };
    for d in missing.iter().rev() {
        durable::create_dir_all(d, 0o700)?;
        let handle = File::open(d)?;
        set_owner_and_mode(&handle, readers.gid(), mode)?;
    }
    Ok(())
}

/// Why a token file at `path` would not be safe to write: a folder on the
/// way that a user other than root or the agent (`trusted` uids) owns or can
/// write, where they could plant or swap names. A sticky folder (`/tmp`)
/// above the first existing one is fine: others cannot rename what they do
/// not own in it.
pub fn check_dir(path: &Path, trusted: &[u32]) -> Result<(), String> {
    let mut at = durable::parent(path).to_path_buf();
    while !at.exists() {
        match at.parent() {
            Some(up) if !up.as_os_str().is_empty() => at = up.to_path_buf(),
            _ => return Ok(()),
        }
    }
    let at = at
        .canonicalize()
        .map_err(|e| format!("{}: {e}", at.display()))?;
    let mut first = true;
    for d in at.ancestors() {
        let meta = fs::metadata(d).map_err(|e| format!("{}: {e}", d.display()))?;
        let mode = meta.mode();
        let writable_by_others = mode & 0o022 != 0;
        let sticky = mode & 0o1000 != 0;
        if !trusted.contains(&meta.uid()) {
            return Err(format!(
                "the folder {} is owned by uid {}, not root or the agent's user",
                d.display(),
                meta.uid()
            ));
        }
        if writable_by_others && (first || !sticky) {
            return Err(format!(
                "the folder {} is writable by others (mode {:04o}); they could replace the token file",
                d.display(),
                mode & 0o7777
            ));
        }
        first = false;
    }
    Ok(())
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

    /// A fresh folder of ours (0755) in the sticky temp dir: token files
    /// may be made below it, not in the temp dir itself.
    fn tempdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("saa-tf-{tag}-{}", crate::rand::hex(10)));
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn replaces_atomically_with_the_readers_mode() {
        let dir = tempdir("mode");
        let path = dir.join("tokens/a.json");
        write(&path, b"one\n", Readers::Group(None)).unwrap();
        write(&path, b"two\n", Readers::Group(None)).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two\n");
        assert_eq!(mode(&path), 0o640);
        assert_eq!(mode(&dir.join("tokens")), 0o750);
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.join("tokens")).unwrap().count(), 1);
        let private = dir.join("private/b.json");
        write(&private, b"x\n", Readers::Nobody).unwrap();
        assert_eq!(mode(&private), 0o600);
        assert_eq!(mode(&dir.join("private")), 0o700);
        remove(&path).unwrap();
        remove(&path).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn planted_links_are_never_followed() {
        let dir = tempdir("links");
        fs::create_dir_all(&dir).unwrap();
        let victim = dir.join("victim");
        fs::write(&victim, b"keep").unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).unwrap();
        // The old fixed temporary name, a leftover's name, and the file
        // itself, each a link to the victim.
        std::os::unix::fs::symlink(&victim, dir.join(".open.json.tmp")).unwrap();
        std::os::unix::fs::symlink(&victim, dir.join(".open.json.0123.tmp")).unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("open.json")).unwrap();
        write(&dir.join("open.json"), b"token\n", Readers::Group(None)).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert_eq!(mode(&victim), 0o600);
        assert!(!fs::symlink_metadata(dir.join("open.json"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read(dir.join("open.json")).unwrap(), b"token\n");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn folders_others_can_write_are_refused() {
        let me = crate::sys::current_uid();
        let dir = tempdir("check");
        fs::create_dir_all(dir.join("ok")).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(dir.join("ok"), fs::Permissions::from_mode(0o755)).unwrap();
        // Under the sticky /tmp: fine, for existing and missing folders.
        check_dir(&dir.join("ok/a.json"), &[0, me]).unwrap();
        check_dir(&dir.join("ok/new/deeper/a.json"), &[0, me]).unwrap();
        fs::set_permissions(dir.join("ok"), fs::Permissions::from_mode(0o775)).unwrap();
        let e = check_dir(&dir.join("ok/a.json"), &[0, me]).unwrap_err();
        assert!(e.contains("writable by others"), "{e}");
        // A group-writable folder above is as bad as the folder itself.
        let e = check_dir(&dir.join("ok/new/a.json"), &[0, me]).unwrap_err();
        assert!(e.contains("writable by others"), "{e}");
        fs::set_permissions(dir.join("ok"), fs::Permissions::from_mode(0o755)).unwrap();
        // Owned by someone else.
        let e = check_dir(&dir.join("ok/a.json"), &[]).unwrap_err();
        assert!(e.contains("owned by uid"), "{e}");
        // The sticky /tmp itself as the folder: refused.
        let e = check_dir(Path::new("/tmp/a.json"), &[0, me]).unwrap_err();
        assert!(e.contains("writable by others"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
