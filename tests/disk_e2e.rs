//! Disk trouble: a store that cannot be opened, a full file system and a
//! read-only one. The agent keeps serving from memory, says so in STATUS,
//! logs the failure once (not per attempt), and catches up when the disk
//! comes back. The file-system cases mount a small tmpfs and so run only
//! with CAP_SYS_ADMIN (root outside a container, as in CI); elsewhere they
//! say so and pass.

use crate::util::*;
use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// A tmpfs mounted over a folder of a test's temp dir, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let target = CString::new(at.as_os_str().as_bytes()).unwrap();
        let opts = CString::new(format!("size={size},mode=0700")).unwrap();
        // SAFETY: plain mount(2) with NUL-terminated strings that outlive it.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        if rc != 0 {
            skip(&format!(
                "cannot mount a tmpfs to fill ({}): mounting needs CAP_SYS_ADMIN, \
                 which unprivileged users and most containers lack",
                std::io::Error::last_os_error()
            ));
            return None;
        }
        Some(Tmpfs(at.to_owned()))
    }

    fn remount(&self, read_only: bool) {
        let target = CString::new(self.0.as_os_str().as_bytes()).unwrap();
        let flags = libc::MS_REMOUNT | if read_only { libc::MS_RDONLY } else { 0 };
        // SAFETY: as above.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                flags,
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "remount: {}", std::io::Error::last_os_error());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = CString::new(self.0.as_os_str().as_bytes()).unwrap();
        // SAFETY: umount2(2) on the path we mounted.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

fn store_error(agent: &Agent) -> Option<String> {
    agent.ask("STATUS")["store_error"]
        .as_str()
        .map(str::to_owned)
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

#[test]
fn a_store_that_cannot_be_opened_still_serves_from_memory() {
    let dir = TempDir::new("nostore");
    let partners = standin();
    // The state dir would be inside a regular file: it cannot be created.
    std::fs::write(dir.join("blocker"), b"not a folder").unwrap();
    let text = config_text(&dir, "", &partners.providers_toml()).replace(
        &format!("state_dir = {:?}", dir.join("state").display().to_string()),
        &format!(
            "state_dir = {:?}",
            dir.join("blocker/state").display().to_string()
        ),
    );
    write_config(&dir, &text);
    let agent = Agent::start(&dir);
    let t = agent.wait_token("makeleaps");
    assert_eq!(t["ok"], true);
    let e = store_error(&agent)
        .unwrap_or_else(|| panic!("STATUS names the store problem:\n{}", agent.log_text()));
    assert!(e.contains("blocker/state"), "{e}");
    assert!(agent
        .log_text()
        .contains("running with tokens in memory only"));
}

#[test]
fn a_full_or_read_only_disk_keeps_tokens_in_memory_and_catches_up() {
    let dir = TempDir::new("diskfull");
    let Some(fs) = Tmpfs::mount(&dir.join("state"), "4m") else {
        return;
    };
    let partners = standin();
    let providers = format!("{NO_COOLDOWN}\n{}", partners.providers_toml());
    write_config(&dir, &config_text(&dir, "", &providers));
    let mut agent = Agent::start(&dir);
    agent.wait_token("makeleaps");
    assert_eq!(store_error(&agent), None);

    // Fill the file system to the last byte.
    let mut filler = std::fs::File::create(dir.join("state/filler")).unwrap();
    let block = vec![0x55u8; 64 * 1024];
    while filler.write_all(&block).is_ok() {}
    let mut byte = [0u8; 1];
    while filler.write_all(&byte).is_ok() {
        byte[0] ^= 1;
    }
    drop(filler);

    // Renewals go on in memory; the first write that needs a new page of
    // disk fails (sled may still have room in a page it holds).
    let mut last = String::new();
    let mut renewals = 0;
    let e = loop {
        let a = agent.ask("REFRESH makeleaps");
        assert_eq!(a["ok"], true, "renewals go on in memory: {a}");
        assert_ne!(a["access_token"], last.as_str());
        last = a["access_token"].as_str().unwrap().to_owned();
        assert_eq!(agent.ask("TOKEN makeleaps")["access_token"], last.as_str());
        renewals += 1;
        if let Some(e) = store_error(&agent) {
            break e;
        }
        assert!(renewals < 500, "no write failed on a full disk");
    };
    assert!(e.contains("No space left"), "{e}");
    for _ in 0..5 {
        assert_eq!(agent.ask("REFRESH makeleaps")["ok"], true);
    }
    let log = agent.log_text();
    assert_eq!(
        count(&log, "tokens are kept in memory only"),
        1,
        "logged once, not per write:\n{log}"
    );

    // Space again: the next write lands, and says so.
    std::fs::remove_file(dir.join("state/filler")).unwrap();
    let a = agent.ask("REFRESH makeleaps");
    assert_eq!(a["ok"], true);
    assert_eq!(store_error(&agent), None);
    assert!(agent.log_text().contains("store: writing works again"));

    // Read-only (an SD card the kernel gave up on, remounted read-only):
    // the agent starts all the same, logs in, and says why nothing is kept.
    agent.signal(libc::SIGTERM);
    agent.wait_exit();
    fs.remount(true);
    let mut agent = Agent::start(&dir);
    let a = agent.wait_token("makeleaps");
    let e = store_error(&agent).expect("STATUS shows the read-only store");
    assert!(e.contains("Read-only"), "{e}");
    // Logged in before the disk comes back (so no stored token is taken in
    // for it while its login is still on the way).
    let carrental = agent.wait_token("carrental")["access_token"].clone();
    // Writable again: the next change reaches the disk, every provider's
    // record with it.
    fs.remount(false);
    let b = agent.ask("REFRESH makeleaps");
    assert_eq!(b["ok"], true, "{b}");
    assert_ne!(b["access_token"], a["access_token"]);
    let saved = b["access_token"].as_str().unwrap().to_owned();
    assert_eq!(store_error(&agent), None);

    // What reached the disk survives a crash.
    agent.kill9();
    for kind in standins::Kind::ALL {
        partners.set_mode(kind, standins::Mode::Close);
    }
    let agent = Agent::start(&dir);
    let t = agent.ask("TOKEN makeleaps");
    assert_eq!(t["ok"], true, "{t}");
    assert_eq!(t["access_token"], saved.as_str());
    assert_eq!(agent.ask("TOKEN carrental")["access_token"], carrental);
    drop(agent);
}

#[test]
fn a_store_that_opens_late_keeps_the_tokens_it_held() {
    use standins::{Kind, Mode};
    let dir = TempDir::new("latestore");
    let Some(fs) = Tmpfs::mount(&dir.join("state"), "4m") else {
        return;
    };
    let partners = standin();
    write_config(&dir, &config_text(&dir, "", &partners.providers_toml()));
    let mut agent = Agent::start(&dir);
    let kept = agent.wait_token("makeleaps");
    agent.signal(libc::SIGTERM);
    agent.wait_exit();

    // Booted with the state dir read-only and MakeLeaps unreachable: its
    // stored token cannot be read, and its logins fail.
    fs.remount(true);
    partners.set_mode(Kind::MakeLeaps, Mode::Close);
    let mut agent = Agent::start(&dir);
    assert!(store_error(&agent).is_some());
    // The disk comes back; the next write opens the store, which must take
    // in MakeLeaps' token rather than write "no token" over it.
    fs.remount(false);
    assert_eq!(agent.ask("REFRESH carrental")["ok"], true);
    let t = agent.wait_token("makeleaps");
    assert_eq!(t["access_token"], kept["access_token"]);
    assert!(agent.log_text().contains("the store opened late"));

    agent.kill9();
    for kind in Kind::ALL {
        partners.set_mode(kind, Mode::Close);
    }
    let agent = Agent::start(&dir);
    assert_eq!(
        agent.ask("TOKEN makeleaps")["access_token"],
        kept["access_token"]
    );
}
