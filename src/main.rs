//! The `shop-auth-agent` binary: logging, then the command line.

use std::io::Write;

fn main() {
    init_logging();
    // Not env::args(): it panics on an argument that is not UTF-8.
    let mut args = std::env::args_os();
    let program = args
        .next()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| "shop-auth-agent".to_owned());
    let code = shop_auth_agent::cli::main(&program, args);
    std::process::exit(code);
}

/// Logs to stderr, info by default, `RUST_LOG` respected. Under systemd
/// (`$JOURNAL_STREAM`) each line carries a syslog priority prefix instead of
/// a timestamp, so journald files it at the right level.
fn init_logging() {
    let mut builder = env_logger::Builder::from_env(
        env_logger::Env::default()
            // sled=off: the store's own error lines carry sled's error, and
            // sled would repeat it on every retry (RUST_LOG=sled=warn shows it).
            .default_filter_or("info,sled=off,ureq=warn,ureq_proto=warn,rustls=warn"),
    );
    // The HTTP client's own debug and trace lines describe requests; its
    // authors redact headers, but we take no chances with bodies: whatever
    // RUST_LOG says, it logs at info at most.
    builder
        .filter_module("ureq", log::LevelFilter::Info)
        .filter_module("ureq_proto", log::LevelFilter::Info);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.format(|f, record| {
            let prio = match record.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                log::Level::Debug | log::Level::Trace => 7,
            };
            writeln!(f, "<{prio}>{}", record.args())
        });
    } else {
        builder.format(|f, record| {
            writeln!(
                f,
                "{} {:<5} {}",
                f.timestamp_seconds(),
                record.level(),
                record.args()
            )
        });
    }
    builder.target(env_logger::Target::Stderr).init();
}
