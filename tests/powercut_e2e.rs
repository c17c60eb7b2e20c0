//! Power cuts: the agent's state directory lives on `tests/support/cutfs.py`,
//! a FUSE file system that keeps in memory whatever was not made durable
//! (file data without an fsync of the file, names without an fsync of their
//! directory) and, at a cut, drops it, keeps a random prefix of it torn at a
//! 512-byte sector, or keeps each 4 KiB page old, new or torn. `kill -9`
//! keeps the page cache; this does not.
//!
//! Clients renew tokens, the power goes at a random moment, the agent comes
//! back with the partners down, and then: every provider serves the last
//! token served before the cut or a newer one the partner issued; the agent
//! starts (no crash loop); the token file is whole or absent.
//!
//! Needs CAP_SYS_ADMIN (root outside a container), `/dev/fuse` and Python 3 with `mfusepy` (PyPI) on libfuse3;
//! skipped with the reason otherwise. `SHOP_AUTH_AGENT_POWERCUT_SEED=N`
//! replays the random choices of a run (the moments are wall-clock, so a
//! replay comes close rather than exact); `SHOP_AUTH_AGENT_POWERCUT_CUTS=N`
//! makes a longer soak.

use crate::util::*;
use serde_json::Value;
use standins::{Kind, Mode};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CUTFS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/cutfs.py");
const MODES: [&str; 4] = ["drop", "prefix", "torn", "mixed"];
/// Besides what was never synced, one file's last fsynced write may be torn
/// too (a card that acknowledged a flush it had not finished): sled's data
/// file or either mirror file — the single torn write the store survives.
const TEARS: [Option<&str>; 4] = [
    None,
    Some("state/db/db"),
    Some("state/mirror-a"),
    Some("state/mirror-b"),
];
/// Per `cargo test`: 7 rounds of the four modes under each journal model.
const CUTS: usize = 56;
/// Under qemu-user the agent is ~20 times slower; fewer cuts, same modes.
const CUTS_EMULATED: usize = 8;

/// A mounted cutfs over a backing folder (the card as it is at power-on).
struct CutFs {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    mount: PathBuf,
}

impl CutFs {
    /// Mounts `backing` at `mount`; `Err` with the reason when this machine
    /// cannot (the caller skips).
    fn mount(backing: &Path, mount: &Path, ext4: bool) -> Result<CutFs, String> {
        if !has_cap(CAP_SYS_ADMIN) {
            return Err("mounting a FUSE file system needs CAP_SYS_ADMIN, which \
                 unprivileged users and most containers lack"
                .into());
        }
        if !Path::new("/dev/fuse").exists() {
            return Err("no /dev/fuse".into());
        }
        std::fs::create_dir_all(mount).unwrap();
        let mut child = Command::new("python3")
            .arg(CUTFS)
            .arg(backing)
            .arg(mount)
            .args(ext4.then_some("--ext4"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot run python3: {e}"))?;
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let _ = stdout.read_line(&mut line);
        if line.trim() != "ready" {
            let status = child.wait().unwrap();
            return Err(match status.code() {
                Some(3) => "python3 lacks mfusepy (pip install mfusepy; needs libfuse3)".into(),
                _ => format!("cutfs did not mount ({status}); see its stderr above"),
            });
        }
        Ok(CutFs {
            child,
            stdin,
            stdout,
            mount: mount.to_owned(),
        })
    }

    fn command(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
        let mut answer = String::new();
        self.stdout.read_line(&mut answer).unwrap();
        answer.trim().to_owned()
    }

    /// The power goes: from now on every operation on the mount hangs, and
    /// the backing folder holds what survived. Returns cutfs's summary.
    fn cut(&mut self, mode: &str, seed: u64, tear: Option<&str>) -> String {
        let answer = self.command(&format!("cut {mode} {seed} {}", tear.unwrap_or("")));
        assert!(answer.starts_with("cut ok"), "cutfs: {answer}");
        answer["cut ok".len()..].trim().to_owned()
    }

    /// Unmounts; processes hanging on the mount are released with errors.
    fn exit(mut self) {
        let _ = writeln!(self.stdin, "exit");
        let _ = self.stdin.flush();
        let _ = self.child.wait();
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let mount = self.mount.display().to_string();
        assert!(
            !mounts
                .lines()
                .any(|l| l.split(' ').nth(1) == Some(mount.as_str())),
            "cutfs left {mount} mounted"
        );
    }
}

impl Drop for CutFs {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = writeln!(self.stdin, "exit");
            let _ = self.stdin.flush();
            let _ = self.child.wait();
        }
    }
}

/// Skips with the reason, unless `SHOP_AUTH_AGENT_REQUIRE_POWERCUT` is set
/// (CI sets it after installing what the test needs, so it cannot skip
/// there unnoticed).
fn skip_or_fail(why: &str) {
    assert!(
        std::env::var_os("SHOP_AUTH_AGENT_REQUIRE_POWERCUT").is_none(),
        "{why} (and SHOP_AUTH_AGENT_REQUIRE_POWERCUT is set)"
    );
    skip(why);
}

/// A small random generator for the test's own choices (the agent's
/// randomness is its own).
fn next(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *seed >> 33
}

fn master_seed() -> u64 {
    match std::env::var("SHOP_AUTH_AGENT_POWERCUT_SEED") {
        Ok(s) => s
            .parse()
            .expect("SHOP_AUTH_AGENT_POWERCUT_SEED is a number"),
        Err(_) => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            u64::from(t.subsec_nanos()) ^ (u64::from(std::process::id()) << 32)
        }
    }
}

/// Whether the layer has teeth: what was fsynced (file and directory)
/// survives every mode, and what was not does not survive a drop.
#[test]
fn cutfs_keeps_what_was_synced_and_drops_what_was_not() {
    let dir = TempDir::new("cutfs");
    let backing = dir.join("card");
    std::fs::create_dir_all(&backing).unwrap();
    let mnt = dir.join("mnt");
    let mut before: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, mode) in MODES.iter().enumerate() {
        let mut fs = match CutFs::mount(&backing, &mnt, false) {
            Ok(fs) => fs,
            Err(why) => {
                skip_or_fail(&format!("cutfs self-check: {why}"));
                return;
            }
        };
        let sync = |p: &Path| std::fs::File::open(p).unwrap().sync_all().unwrap();
        let durable = mnt.join(format!("durable-{i}"));
        let content = vec![b'a' + i as u8; 10_000];
        std::fs::write(&durable, &content).unwrap();
        sync(&durable);
        sync(&mnt);
        // Overwritten and grown, never synced.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&durable)
            .unwrap();
        f.write_all(&vec![b'X'; 20_000]).unwrap();
        drop(f);
        std::fs::write(mnt.join(format!("unsynced-{i}")), b"never synced").unwrap();
        let summary = fs.cut(mode, 1000 + i as u64, None);
        fs.exit();
        let kept = std::fs::read(backing.join(format!("durable-{i}"))).unwrap();
        if *mode == "drop" {
            assert_eq!(
                kept, content,
                "{mode}: unsynced writes survived ({summary})"
            );
        } else {
            // Torn or not, the file holds the synced bytes and some of the
            // unsynced ones, nothing else.
            assert!(
                (10_000..=20_000).contains(&kept.len()),
                "{mode}: {} bytes",
                kept.len()
            );
            // (Past the synced size, a page kept "old" reads as zeros.)
            assert!(
                kept.iter()
                    .enumerate()
                    .all(|(at, &b)| b == content[0] || b == b'X' || (at >= 10_000 && b == 0)),
                "{mode}: foreign bytes"
            );
        }
        // What earlier cuts left is untouched by later ones.
        for (name, bytes) in &before {
            assert_eq!(
                &std::fs::read(backing.join(name)).unwrap(),
                bytes,
                "{mode}: {name} changed"
            );
        }
        before.push((format!("durable-{i}"), kept));
        if *mode == "drop" {
            assert!(
                !backing.join(format!("unsynced-{i}")).exists(),
                "drop: a file whose name was never synced survived"
            );
        }
    }
}

/// Every other round of the four modes, file fsyncs also commit the
/// metadata journal (ext4's single journal); otherwise only directory
/// fsyncs do (what POSIX promises).
fn ext4_for(cut: usize) -> bool {
    (cut / MODES.len()) % 2 == 1
}

#[test]
fn power_cut_during_renewals_never_loses_a_served_token() {
    power_cuts(false);
}

/// The same with a store key (what the package sets up): sealed records,
/// with refresh tokens kept in them (a rotation the cut lost costs a login,
/// which the check allows; a served access token lost it does not).
#[test]
fn power_cut_during_renewals_never_loses_a_served_token_of_a_sealed_store() {
    power_cuts(true);
}

fn power_cuts(sealed: bool) {
    let cuts = std::env::var("SHOP_AUTH_AGENT_POWERCUT_CUTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if emulated() { CUTS_EMULATED } else { CUTS });
    let seed0 = master_seed();
    let dir = TempDir::new(if sealed {
        "powercut-sealed"
    } else {
        "powercut"
    });
    let backing = dir.join("card");
    std::fs::create_dir_all(&backing).unwrap();
    let mnt = dir.join("mnt");
    let mut fs = match CutFs::mount(&backing, &mnt, false) {
        Ok(fs) => fs,
        Err(why) => {
            skip_or_fail(&format!("power cut test: {why}"));
            return;
        }
    };
    let label = if sealed {
        "power cut (sealed)"
    } else {
        "power cut"
    };
    println!(
        "{label}: seed {seed0} (SHOP_AUTH_AGENT_POWERCUT_SEED={seed0} replays it), {cuts} cuts"
    );
    let partners = standin();
    let file = mnt.join("tokens/makeleaps.json");
    let providers = partners.providers_toml().replace(
        "[providers.makeleaps]\n",
        &format!(
            "[providers.makeleaps]\nfile = {:?}\n",
            file.display().to_string()
        ),
    );
    // The socket and the key stay off the card; the state and the token
    // file are on it.
    let key = if sealed {
        store_key_config(&dir, 3)
    } else {
        String::new()
    };
    let text = format!(
        "[agent]\nsocket = {:?}\nstate_dir = {:?}\n{key}\n\n[defaults]\ntimeout = \"2s\"\nmax_backoff = \"2s\"\nrefresh_cooldown = \"0s\"\n\n{providers}",
        dir.join("agent.sock").display().to_string(),
        mnt.join("state").display().to_string(),
    );
    write_config(&dir, &text);
    let mut agent = Agent::start(&dir);
    let served = Arc::new(Mutex::new(HashMap::new()));
    let mut seed = seed0;
    // mode -> (passed, failed)
    let mut tally: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut newer = 0;
    for i in 0..cuts {
        let mode = MODES[i % MODES.len()];
        let ext4 = ext4_for(i);
        let cut_seed = next(&mut seed);
        // Partners up: every provider holds a token, and that is served.
        for name in PROVIDERS {
            let t = agent.wait_token(name)["access_token"]
                .as_str()
                .unwrap()
                .to_owned();
            served.lock().unwrap().insert(name.to_owned(), t);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let worker = {
            let (socket, served, stop) =
                (agent.socket.clone(), Arc::clone(&served), Arc::clone(&stop));
            std::thread::spawn(move || refresh_until_dead(socket, served, stop))
        };
        // The moment of the cut (the one place a sleep belongs: it is the
        // thing under test).
        std::thread::sleep(Duration::from_millis(5 + next(&mut seed) % 200));
        let tear = TEARS[next(&mut seed) as usize % TEARS.len()];
        let summary = fs.cut(mode, cut_seed, tear);
        // Nothing the agent does from here reaches the card; what it had
        // served is what the clients saw before it hung.
        let _ = agent.child.kill();
        fs.exit();
        agent.child.wait().unwrap();
        stop.store(true, Ordering::SeqCst);
        worker.join().unwrap();

        // Power back, network not.
        for kind in Kind::ALL {
            partners.set_mode(kind, Mode::Close);
        }
        // The card as it was, under the model of the next cut.
        fs = CutFs::mount(&backing, &mnt, ext4_for(i + 1)).expect("cutfs mounted before");
        agent = Agent::spawn(&dir, &[]);
        let problems = check_after_cut(&agent, &partners, &served, &file, &mut newer);
        let model = if ext4 { "ext4" } else { "posix" };
        let torn = format!("tear {}", tear.unwrap_or("nothing synced"));
        for key in [format!("{mode}/{model}"), torn] {
            let entry = tally.entry(key).or_default();
            if problems.is_empty() {
                entry.0 += 1;
            } else {
                entry.1 += 1;
            }
        }
        if !problems.is_empty() {
            failures.push(format!(
                "cut {i} ({mode}/{model}, cutfs seed {cut_seed}: {summary}): {}",
                problems.join("; ")
            ));
        }
        for kind in Kind::ALL {
            partners.set_mode(kind, Mode::Normal);
        }
    }
    let _ = agent.child.kill();
    fs.exit();
    let _ = agent.child.wait();
    for (mode, (ok, bad)) in &tally {
        println!("{label}: {mode:>30}: {ok} passed, {bad} failed");
    }
    println!("{label}: {newer} times a renewal had reached the card but not the client");
    let log = agent.log_text();
    println!(
        "{label}: the store restored records from its mirror {} times, moved a damaged database aside {} times",
        log.matches(" provider record").count(),
        log.matches("moved it to").count()
    );
    assert!(
        failures.is_empty(),
        "seed {seed0}: {} of {cuts} cuts lost something:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// What went wrong after one cut (empty: nothing).
fn check_after_cut(
    agent: &Agent,
    partners: &standins::Standin,
    served: &Mutex<HashMap<String, String>>,
    file: &Path,
    newer: &mut usize,
) -> Vec<String> {
    let mut problems = Vec::new();
    let start = std::time::Instant::now();
    while std::os::unix::net::UnixStream::connect(&agent.socket).is_err() {
        if start.elapsed() > DEADLINE {
            return vec!["the agent did not start".into()];
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let issued = partners.issued();
    let position = |t: &str| issued.iter().position(|x| x == t);
    let last: HashMap<String, String> = served.lock().unwrap().clone();
    // Written before the token it holds was served: the last served for
    // makeleaps, or a newer one.
    match std::fs::read_to_string(file) {
        Ok(text) => match serde_json::from_str::<Value>(text.trim_end()) {
            Ok(v) => match (
                v["access_token"].as_str().and_then(position),
                position(&last["makeleaps"]),
            ) {
                (Some(f), Some(l)) if f >= l => {}
                (Some(_), Some(_)) => problems.push("the token file went back in time".into()),
                _ => problems.push("the token file holds a token never issued".into()),
            },
            Err(e) => problems.push(format!("torn token file ({e})")),
        },
        Err(e) => problems.push(format!("token file: {e}")),
    }
    for name in PROVIDERS {
        let a = agent.ask(&format!("TOKEN {name}"));
        let Some(now) = a["access_token"].as_str() else {
            problems.push(format!("{name}: no token ({})", a["error"]));
            continue;
        };
        match (position(now), position(&last[name])) {
            (Some(n), Some(l)) if n >= l => *newer += usize::from(n > l),
            (Some(_), Some(_)) => problems.push(format!("{name}: an older token came back")),
            _ => problems.push(format!("{name}: a token the partner never issued")),
        }
        served
            .lock()
            .unwrap()
            .insert(name.to_owned(), now.to_owned());
    }
    problems
}
