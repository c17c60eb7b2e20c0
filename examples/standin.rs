//! Runs the loopback partner stand-ins alone, for trying a real install (the
//! systemd proof in packaging/systemd-proof uses it): prints the
//! `[providers.*]` config sections that point at it, then serves until killed.
//!
//!     cargo run --example standin [-- LIFETIME_SECS]

use standins::{Standin, StandinOptions};
use std::time::Duration;

fn main() {
    let lifetime = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3600);
    let standin = Standin::start(StandinOptions {
        lifetime: Duration::from_secs(lifetime),
        ..StandinOptions::default()
    })
    .expect("starting the stand-ins");
    print!("{}", standin.providers_toml());
    println!("# end");
    use std::io::Write;
    std::io::stdout().flush().expect("stdout");
    loop {
        std::thread::park();
    }
}
