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
    let logger = builder.target(env_logger::Target::Stderr).build();
    let max = logger.filter();
    if log::set_boxed_logger(Box::new(Capped(logger))).is_ok() {
        log::set_max_level(max);
    }
}

/// The most a dependency may log, whatever RUST_LOG says: sled's trace
/// lines print whole stored records (tokens, as lists of byte values);
/// rustls' and the HTTP client's describe TLS sessions and requests, and
/// their authors redact, but we take no chances with bodies.
const CAPS: [(&str, log::Level); 4] = [
    ("sled", log::Level::Debug),
    ("rustls", log::Level::Debug),
    ("ureq", log::Level::Info),
    ("ureq_proto", log::Level::Info),
];

/// env_logger with [`CAPS`] applied on top of RUST_LOG.
struct Capped(env_logger::Logger);

impl Capped {
    fn allowed(metadata: &log::Metadata<'_>) -> bool {
        let target = metadata.target();
        CAPS.iter().all(|(krate, cap)| {
            let ours = target == *krate
                || target
                    .strip_prefix(krate)
                    .is_some_and(|rest| rest.starts_with("::"));
            !ours || metadata.level() <= *cap
        })
    }
}

impl log::Log for Capped {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        Capped::allowed(metadata) && self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if Capped::allowed(record.metadata()) {
            self.0.log(record);
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}
