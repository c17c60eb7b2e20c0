//! `shop-auth-agent dev`: the whole agent on an embedded default, for POS
//! developers without partner credentials and for a first look. Loopback
//! stand-ins play every partner kind, tokens live 30 s so renewals show,
//! and state and socket live in a temporary folder removed at exit.

use crate::agent::Agent;
use crate::config::{self, ConfigError, Settings};
use crate::paths;
use standins::{Standin, StandinOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the stand-ins' tokens live in dev mode.
pub const DEV_LIFETIME: Duration = Duration::from_secs(30);

/// The embedded config: agent paths in `dir`, providers for every stand-in.
pub fn dev_config(dir: &Path, standin: &Standin) -> String {
    format!(
        "# shop-auth-agent dev: embedded config\n\
         [agent]\n\
         socket = {socket:?}\n\
         state_dir = {state:?}\n\
         socket_mode = \"0600\"\n\
         \n\
         [defaults]\n\
         refresh_before = \"10s\"\n\
         timeout = \"5s\"\n\
         max_backoff = \"10s\"\n\
         \n\
         {providers}",
        socket = dir.join("agent.sock").display().to_string(),
        state = dir.join("state").display().to_string(),
        providers = standin.providers_toml(),
    )
}

fn parse(text: &str) -> Result<Settings, ConfigError> {
    config::parse(
        text,
        "embedded dev config",
        None,
        false,
        &paths::process_env,
    )
}

/// Runs dev mode until Ctrl-C; returns the process exit code.
pub fn run(program: &str) -> i32 {
    let dir = match make_temp_dir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("shop-auth-agent dev: cannot create a temporary folder: {e}");
            return crate::cli::exit::CANTCREAT;
        }
    };
    let code = run_in(&dir, program);
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        log::warn!("removing {}: {e}", dir.display());
    }
    code
}

fn run_in(dir: &Path, program: &str) -> i32 {
    let standin = match Standin::start(StandinOptions {
        lifetime: DEV_LIFETIME,
        ..StandinOptions::default()
    }) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("shop-auth-agent dev: cannot start the stand-in partners: {e}");
            return crate::cli::exit::OSERR;
        }
    };
    let text = dev_config(dir, &standin);
    let settings = match parse(&text) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("shop-auth-agent dev: the embedded config is broken: {e}");
            return crate::cli::exit::SOFTWARE;
        }
    };
    let socket = settings.agent.socket.clone();
    let names: Vec<String> = settings.providers.iter().map(|p| p.name.clone()).collect();
    let agent = match Agent::start(settings) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("shop-auth-agent dev: {e}");
            return crate::cli::exit::OSERR;
        }
    };
    let s = socket.display();
    println!(
        "shop-auth-agent dev: stand-in partners on {}, tokens live {}s.",
        standin.base_url(),
        DEV_LIFETIME.as_secs()
    );
    println!("{}={s}", paths::SOCKET_ENV);
    println!();
    println!("Try, in another terminal:");
    println!("  export {}={s}", paths::SOCKET_ENV);
    println!("  {program} status");
    println!(
        "  {program} token {}",
        names.first().map(String::as_str).unwrap_or("autoleap")
    );
    println!("  printf 'TOKEN makeleaps\\n' | socat - UNIX-CONNECT:{s}    # the protocol itself (apt install socat)");
    println!("  python3 -c 'import socket; s=socket.socket(socket.AF_UNIX); s.connect(\"{s}\"); s.sendall(b\"STATUS\\n\"); print(s.recv(65536).decode())'");
    println!(
        "Providers: {}. Ctrl-C stops the agent and removes {}.",
        names.join(", "),
        dir.display()
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let reload_text = text.clone();
    match agent.run_until_signal(move || parse(&reload_text)) {
        Ok(()) => {
            standin.stop();
            0
        }
        Err(e) => {
            eprintln!("shop-auth-agent dev: {e}");
            crate::cli::exit::OSERR
        }
    }
}

fn make_temp_dir() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::temp_dir().join(format!("shop-auth-agent-dev-{}", crate::rand::hex(8)));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}
