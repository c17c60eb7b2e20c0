//! The few system calls std does not wrap: the socket peer's credentials and
//! groups, user and group lookup by name. The crate's only `unsafe` code.

use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

/// The peer of a Unix stream socket, as the kernel recorded it at connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (SO_PEERGROUPS); empty when the kernel cannot say.
    pub groups: Vec<u32>,
}

// Not in the libc crate; the value is the same on x86, x86_64, arm and aarch64.
const SO_PEERGROUPS: libc::c_int = 59;

pub fn peer(stream: &UnixStream) -> io::Result<Peer> {
    let fd = stream.as_raw_fd();
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a valid ucred and `len` its size, as SO_PEERCRED expects.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Peer {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
        groups: peer_groups(fd),
    })
}

fn peer_groups(fd: libc::c_int) -> Vec<u32> {
    // A process has at most NGROUPS_MAX (65536) groups; start small, grow once.
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    for _ in 0..2 {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: the buffer holds `len` bytes of gid_t.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(n);
            return groups;
        }
        if io::Error::last_os_error().raw_os_error() == Some(libc::ERANGE) && n > groups.len() {
            groups = vec![0; n.min(65536)];
            continue;
        }
        break;
    }
    Vec::new()
}

/// The uid of a user name, `None` when there is no such user.
pub fn user_id(name: &str) -> io::Result<Option<u32>> {
    // SAFETY: getpwnam_r's contract is the one `lookup` fulfils.
    lookup(
        name,
        |n, e, b, l, r| unsafe { libc::getpwnam_r(n, e, b, l, r) },
        |p: &libc::passwd| p.pw_uid,
    )
}

/// The gid of a group name, `None` when there is no such group.
pub fn group_id(name: &str) -> io::Result<Option<u32>> {
    // SAFETY: getgrnam_r's contract is the one `lookup` fulfils.
    lookup(
        name,
        |n, e, b, l, r| unsafe { libc::getgrnam_r(n, e, b, l, r) },
        |g: &libc::group| g.gr_gid,
    )
}

type Getter<T> =
    fn(*const libc::c_char, *mut T, *mut libc::c_char, usize, *mut *mut T) -> libc::c_int;

/// The reentrant name lookups (getpwnam_r, getgrnam_r) share one shape:
/// an entry, a string buffer that may need to grow, and a result pointer.
fn lookup<T>(name: &str, get: Getter<T>, id: fn(&T) -> u32) -> io::Result<Option<u32>> {
    let cname = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut buf = vec![0 as libc::c_char; 4096];
    loop {
        // SAFETY: the C structs are plain data; all-zero is a valid value.
        let mut entry: T = unsafe { std::mem::zeroed() };
        let mut result: *mut T = std::ptr::null_mut();
        let rc = get(
            cname.as_ptr(),
            &mut entry,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        );
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        return Ok((!result.is_null()).then(|| id(&entry)));
    }
}

/// Gives the file at `path` the group `gid` unless it has it already. A new
/// file gets the process's group, which under the systemd unit is the
/// socket group; skipping the needless chown matters there, because the
/// unit's `SystemCallFilter=~@privileged` refuses chown with EPERM.
pub fn set_group(path: &std::path::Path, gid: u32) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    if std::fs::symlink_metadata(path)?.gid() == gid {
        return Ok(());
    }
    std::os::unix::fs::chown(path, None, Some(gid))
}

/// Sets the socket's send buffer (`SO_SNDBUF`; the kernel doubles it and
/// applies its minimum).
pub fn set_send_buffer(stream: &UnixStream, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt on a descriptor we own, with a pointer to a local
    // c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether another open file description holds a `flock` on `file` (as
/// sled does on its data file while a database is open). Probes with a
/// non-blocking exclusive lock, released again when this returns.
pub fn flock_held(file: &std::fs::File) -> io::Result<bool> {
    let fd = file.as_raw_fd();
    // SAFETY: flock on a descriptor we own; no memory is passed.
    if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        // SAFETY: as above.
        unsafe { libc::flock(fd, libc::LOCK_UN) };
        return Ok(false);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EWOULDBLOCK) => Ok(true),
        _ => Err(e),
    }
}

/// What the agent does to itself before it reads a secret: no core dump
/// and no ptrace by users other than root (`PR_SET_DUMPABLE` 0: a core
/// would carry the secrets and tokens in memory; `/proc/PID/mem` and
/// `environ` become root's), and files and folders created private
/// (umask 077), whatever the caller's umask.
pub fn harden_process() -> io::Result<()> {
    // SAFETY: umask cannot fail; prctl with PR_SET_DUMPABLE takes an int.
    unsafe {
        libc::umask(0o077);
        if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether the process may dump core (`PR_GET_DUMPABLE`).
pub fn dumpable() -> bool {
    // SAFETY: PR_GET_DUMPABLE takes no pointer.
    unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) > 0 }
}

pub fn current_uid() -> u32 {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_of_a_socketpair_is_this_process() {
        let (a, _b) = UnixStream::pair().unwrap();
        let p = peer(&a).unwrap();
        assert_eq!(p.pid, std::process::id() as i32);
        assert_eq!(p.uid, current_uid());
    }

    #[test]
    fn set_group_skips_the_chown_when_the_group_is_right() {
        use std::os::unix::fs::MetadataExt;
        let dir = std::env::temp_dir().join(format!("saa-set-group-{}", std::process::id()));
        std::fs::write(&dir, b"x").unwrap();
        let gid = std::fs::metadata(&dir).unwrap().gid();
        set_group(&dir, gid).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().gid(), gid);
        // A group the process is not in (and not root): chown refuses, so
        // the call must have reached chown.
        if current_uid() != 0 {
            assert!(set_group(&dir, gid.wrapping_add(12345)).is_err());
        }
        std::fs::remove_file(&dir).unwrap();
    }

    #[test]
    fn root_user_and_group_exist_and_nonsense_does_not() {
        assert_eq!(user_id("root").unwrap(), Some(0));
        assert_eq!(group_id("root").unwrap(), Some(0));
        assert_eq!(user_id("no-such-user-xq").unwrap(), None);
        assert_eq!(group_id("no-such-group-xq").unwrap(), None);
    }
}
