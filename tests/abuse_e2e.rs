//! Socket abuse by a misbehaving POS: a thousand idle connections, a client
//! that never reads its answers, 1 MiB lines, binary junk, connecting and
//! disconnecting in a tight loop. The agent stays up, its memory stays
//! bounded, and a well-behaved client still gets its token promptly.

use crate::util::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// Lets this process hold `n` descriptors (the idle connections).
fn allow_open_files(n: u64) -> bool {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_max < n as _ {
            return false;
        }
        lim.rlim_cur = lim.rlim_cur.max(n as _);
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// TOKEN on a fresh connection, with how long it took.
fn timed_token(agent: &Agent) -> (serde_json::Value, Duration) {
    let start = Instant::now();
    let a = agent.ask("TOKEN makeleaps");
    (a, start.elapsed())
}

#[test]
fn a_misbehaving_pos_cannot_lock_others_out() {
    let dir = TempDir::new("abuse");
    let partners = standin();
    write_config(&dir, &config_text(&dir, "", &partners.providers_toml()));
    let agent = Agent::start(&dir);
    let good = agent.wait_token("makeleaps");
    let rss_before = rss_kib(agent.child.id());
    let mut worst = Duration::ZERO;
    // The bound natively; under qemu-user the accept thread works
    // through the backlog of a thousand connections many times slower.
    let limit = Duration::from_secs(if emulated() { 15 } else { 1 });
    let mut check = |what: &str| {
        let (a, took) = timed_token(&agent);
        assert_eq!(a["access_token"], good["access_token"], "{what}: {a}");
        worst = worst.max(took);
        assert!(took < limit, "{what}: TOKEN took {took:?}");
    };

    // A thousand connections that never say anything.
    if allow_open_files(2048) {
        let idle: Vec<UnixStream> = (0..1000)
            .map(|_| UnixStream::connect(&agent.socket).unwrap())
            .collect();
        check("1,000 idle connections");
        drop(idle);
    } else {
        skip("the 1,000 idle connections: the descriptor limit is below 2048 and cannot be raised");
    }

    // A client that sends and never reads: its answers pile up until the
    // write timeout drops it; nobody else waits for it.
    let mut deaf = UnixStream::connect(&agent.socket).unwrap();
    deaf.set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let burst = "TOKEN makeleaps\n".repeat(20_000);
    let _ = deaf.write_all(burst.as_bytes());
    check("a client that never reads");

    // A 1 MiB line: bad_request, closed; the rest is never read.
    let mut big = UnixStream::connect(&agent.socket).unwrap();
    big.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = big.write_all(&vec![b'A'; 1 << 20]);
    let mut answer = String::new();
    let _ = big.read_to_string(&mut answer);
    assert!(answer.contains("bad_request"), "{answer:?}");
    check("a 1 MiB line");

    // Binary junk, newlines and all.
    let mut junk = UnixStream::connect(&agent.socket).unwrap();
    junk.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut bytes: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    bytes.extend_from_slice(b"\n\xff\xfe\x00TOKEN\x00makeleaps\n");
    let _ = junk.write_all(&bytes);
    let _ = junk.shutdown(std::net::Shutdown::Write);
    let mut answers = String::new();
    let _ = junk.read_to_string(&mut answers);
    assert!(
        answers.lines().all(|l| l.contains("\"ok\":false")),
        "{answers}"
    );
    check("binary junk");

    // Connect, disconnect, as fast as it goes. Under an emulator each
    // connection costs the agent's emulated accept loop tens of times more
    // (a TOKEN behind 3,000 took 31 s under `qemu-arm -cpu arm1176`): the
    // storm is scaled down there so the bound still measures the agent.
    let storm = if emulated() { 1000 } else { 3000 };
    for _ in 0..storm {
        drop(UnixStream::connect(&agent.socket).unwrap());
    }
    check("connect/disconnect storm");

    drop(deaf);
    let rss_after = rss_kib(agent.child.id());
    println!(
        "abuse: worst TOKEN {} ms; agent RSS {} KiB before, {} KiB after",
        worst.as_millis(),
        rss_before,
        rss_after
    );
    // Bounded: 256 connection threads with small stacks at most. (Under
    // qemu-user the figure is the emulator's, which keeps a large state per
    // guest thread it ever ran: 1.2 GB seen; not the agent's to answer for.)
    if !emulated() {
        assert!(
            rss_after < rss_before + 48 * 1024,
            "{rss_before} -> {rss_after} KiB"
        );
    }
    assert!(agent
        .log_text()
        .contains("closing the connection of the user"));
    let (a, _) = timed_token(&agent);
    assert_eq!(a["ok"], true);
}
