//! Every default path and the rules that choose between config, systemd's
//! environment and the built-in defaults, in one place (README, "Configuration").

use std::path::PathBuf;

pub const DEFAULT_CONFIG: &str = "/etc/shop-auth-agent/config.toml";
pub const DEFAULT_SOCKET: &str = "/run/shop-auth-agent/agent.sock";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/shop-auth-agent";
pub const DEFAULT_GROUP: &str = "shop-auth-agent";
pub const CONFIG_ENV: &str = "SHOP_AUTH_AGENT_CONFIG";
pub const SOCKET_ENV: &str = "SHOP_AUTH_AGENT_SOCKET";

/// Reads the environment; a function so callers (and tests) can pass another.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The config file: `--config`, then `$SHOP_AUTH_AGENT_CONFIG`, then the default.
pub fn config_path(flag: Option<PathBuf>, env: Env) -> PathBuf {
    flag.or_else(|| env(CONFIG_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG))
}

/// The daemon's socket: `[agent] socket`, then `$RUNTIME_DIRECTORY/agent.sock`, then the default.
pub fn agent_socket(configured: Option<PathBuf>, env: Env) -> PathBuf {
    configured
        .or_else(|| runtime_dir(env).map(|d| d.join("agent.sock")))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// The state directory: `[agent] state_dir`, then `$STATE_DIRECTORY`, then the default.
pub fn state_dir(configured: Option<PathBuf>, env: Env) -> PathBuf {
    configured
        .or_else(|| first_of(env("STATE_DIRECTORY")))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
}

fn runtime_dir(env: Env) -> Option<PathBuf> {
    first_of(env("RUNTIME_DIRECTORY"))
}

// systemd joins several directories with ':'; ours is the first.
fn first_of(value: Option<String>) -> Option<PathBuf> {
    value
        .and_then(|v| v.split(':').next().map(str::to_owned))
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_is_config_then_systemd_then_default() {
        let none = |_: &str| None;
        let sd = |k: &str| match k {
            "RUNTIME_DIRECTORY" => Some("/run/x".to_owned()),
            "STATE_DIRECTORY" => Some("/var/lib/x:/var/lib/y".to_owned()),
            _ => None,
        };
        assert_eq!(agent_socket(None, &none), PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(agent_socket(None, &sd), PathBuf::from("/run/x/agent.sock"));
        assert_eq!(
            agent_socket(Some("/tmp/a.sock".into()), &sd),
            PathBuf::from("/tmp/a.sock")
        );
        assert_eq!(state_dir(None, &sd), PathBuf::from("/var/lib/x"));
        assert_eq!(state_dir(None, &none), PathBuf::from(DEFAULT_STATE_DIR));
        let cfg = |k: &str| (k == CONFIG_ENV).then(|| "/e.toml".to_owned());
        assert_eq!(config_path(None, &cfg), PathBuf::from("/e.toml"));
        assert_eq!(
            config_path(Some("/f.toml".into()), &cfg),
            PathBuf::from("/f.toml")
        );
    }
}
