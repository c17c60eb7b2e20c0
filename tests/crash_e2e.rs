//! Crash safety: the agent killed with SIGKILL at random moments while it
//! renews tokens, again and again. After each restart (with the partners
//! unreachable) the store opens, every provider's token is served at once,
//! and it is the last one served before the kill or a newer one the partner
//! issued — never lost, never corrupt. The token file is whole or absent.

use crate::util::*;
use serde_json::Value;
use standins::{Kind, Mode};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `SHOP_AUTH_AGENT_CRASH_ITERATIONS` overrides it (a longer soak).
const ITERATIONS: usize = 100;

#[test]
fn kill_9_during_renewals_never_loses_or_corrupts_a_token() {
    let iterations = std::env::var("SHOP_AUTH_AGENT_CRASH_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(ITERATIONS);
    let dir = TempDir::new("crash");
    let partners = standin();
    let file = dir.join("tokens/makeleaps.json");
    let providers = partners.providers_toml().replace(
        "[providers.makeleaps]\n",
        &format!(
            "[providers.makeleaps]\nfile = {:?}\n",
            file.display().to_string()
        ),
    );
    let text = format!(
        "[defaults]\ntimeout = \"2s\"\nmax_backoff = \"2s\"\nrefresh_cooldown = \"0s\"\n\n{providers}"
    );
    write_config(&dir, &config_text(&dir, "", &text));
    let mut agent = Agent::start(&dir);
    let served = Arc::new(Mutex::new(HashMap::new()));
    for name in PROVIDERS {
        let t = agent.wait_token(name)["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        served.lock().unwrap().insert(name.to_owned(), t);
    }
    let mut seed: u64 = 0x5eed_c0de ^ u64::from(std::process::id());
    let mut renewals_seen = 0;
    for i in 0..iterations {
        let stop = Arc::new(AtomicBool::new(false));
        let worker = {
            let (socket, served, stop) =
                (agent.socket.clone(), Arc::clone(&served), Arc::clone(&stop));
            std::thread::spawn(move || refresh_until_dead(socket, served, stop))
        };
        // The moment of the crash, at random within the renewals (the
        // one place a sleep belongs: it is the thing under test).
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(5 + (seed >> 33) % 150));
        agent.kill9();
        stop.store(true, Ordering::SeqCst);
        worker.join().unwrap();

        // Power back, network not: every token from disk, at once.
        for kind in Kind::ALL {
            partners.set_mode(kind, Mode::Close);
        }
        agent = Agent::start(&dir);
        let issued = partners.issued();
        let position = |t: &str| issued.iter().position(|x| x == t);
        for name in PROVIDERS {
            let a = agent.ask(&format!("TOKEN {name}"));
            assert_eq!(a["ok"], true, "iteration {i}, {name}: {a}");
            let now = a["access_token"].as_str().unwrap();
            let last = served.lock().unwrap()[name].clone();
            let (Some(now_at), Some(last_at)) = (position(now), position(&last)) else {
                panic!("iteration {i}, {name}: a token the partner never issued");
            };
            assert!(
                now_at >= last_at,
                "iteration {i}, {name}: an older token came back"
            );
            if now_at > last_at {
                renewals_seen += 1;
            }
        }
        if let Ok(text) = std::fs::read_to_string(&file) {
            let v: Value = serde_json::from_str(text.trim_end())
                .unwrap_or_else(|e| panic!("iteration {i}: torn token file ({e}): {text:?}"));
            assert!(position(v["access_token"].as_str().unwrap()).is_some());
        }
        for kind in Kind::ALL {
            partners.set_mode(kind, Mode::Normal);
        }
    }
    println!(
        "crash: {iterations} kill -9 survived; {renewals_seen} times a renewal had reached the disk but not the client"
    );
    // The store holds only what it should: no stray temp files beside the token file.
    let strays: Vec<_> = std::fs::read_dir(file.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "makeleaps.json")
        .collect();
    assert!(strays.len() <= 1, "temp files pile up: {strays:?}");
}
