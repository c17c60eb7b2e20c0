//! The command line as scripts and integrators use it: exit codes, output,
//! config checking, dev mode, and access control by uid.

use crate::util::*;
use std::io::{BufRead, BufReader};
use std::process::Stdio;

#[test]
fn check_config_lists_every_problem_and_exits_78() {
    let dir = TempDir::new("badcfg");
    let path = write_config(
        &dir,
        r#"
[agent]
socket_mode = "999"
colour = "blue"

[defaults]
timeout = "soon"

[providers.invoices]
kind = "makeleaps"
client_secret = { file = "/nonexistent/secret" }

[providers.cars]
kind = "carrental"
url = "http://partner.example/authtoken"
username = "u"
password = "p"
allow_groups = ["no-such-group-xq"]
"#,
    );
    let out = bin()
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(exit_code(&out), 78);
    let err = stderr(&out);
    for expected in [
        "agent.socket_mode",
        "agent.colour: unknown key",
        "defaults.timeout",
        "providers.invoices.client_id: is required",
        "providers.invoices.client_secret: file /nonexistent/secret not readable",
        "providers.cars.url",
        "providers.cars.allow_groups[0]: no group",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    // `run` refuses the same config with the same code.
    let out = bin()
        .arg("run")
        .arg(format!("--config={}", path.display()))
        .output()
        .unwrap();
    assert_eq!(exit_code(&out), 78);
    assert!(stderr(&out).contains("providers.invoices.client_id"));
}

#[test]
fn world_readable_config_with_inline_secret_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("readable");
    let partners = standin();
    let path = write_config(&dir, &config_text(&dir, "", &partners.providers_toml()));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = bin()
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(exit_code(&out), 78);
    let err = stderr(&out);
    assert!(
        err.contains("providers.makeleaps.client_secret: an inline secret"),
        "{err}"
    );
    // The secret itself is never printed.
    assert!(!err.contains(standins::creds::MAKELEAPS_CLIENT_SECRET));
    // 0640 is fine (root:shop-auth-agent in the .deb).
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = bin()
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(exit_code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("6 providers"));
}

#[test]
fn client_commands_and_their_exit_codes() {
    let dir = TempDir::new("cli");
    let partners = standin();
    let providers = format!("{NO_COOLDOWN}\n{}", partners.providers_toml());
    write_config(&dir, &config_text(&dir, "", &providers));
    let agent = Agent::start(&dir);
    let expected = agent.wait_token("makeleaps")["access_token"].clone();

    let out = agent.cli(&["token", "makeleaps"]);
    assert_eq!(exit_code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out).trim_end(), expected.as_str().unwrap());

    // Options after the subcommand, and --socket instead of the environment.
    let out = bin()
        .args(["token", "makeleaps", "--json", "--socket"])
        .arg(&agent.socket)
        .env_remove("SHOP_AUTH_AGENT_SOCKET")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["access_token"], expected);

    // The socket from the config, when no flag or variable says otherwise.
    let out = bin()
        .args(["token", "makeleaps", "--config"])
        .arg(&agent.config)
        .env_remove("SHOP_AUTH_AGENT_SOCKET")
        .output()
        .unwrap();
    assert_eq!(exit_code(&out), 0, "{}", stderr(&out));

    let out = agent.cli(&["token", "nosuch"]);
    assert_eq!(exit_code(&out), 64);
    assert!(stderr(&out).contains("unknown_provider"));

    let out = agent.cli(&["status"]);
    assert_eq!(exit_code(&out), 0);
    let table = stdout(&out);
    assert!(table.starts_with("PROVIDER"), "{table}");
    assert!(table.contains("makeleaps"));
    assert!(!table.contains(expected.as_str().unwrap()));

    let out = agent.cli(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["providers"].as_array().unwrap().len(), 6);

    let out = agent.cli(&["refresh", "--all"]);
    assert_eq!(exit_code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 6);

    let out = agent.cli(&["refresh", "makeleaps"]);
    assert_eq!(exit_code(&out), 0);
    assert!(stdout(&out).contains("renewed"));

    // A partner that fails makes `refresh --all` exit 75.
    partners.set_mode(
        standins::Kind::Carrental,
        standins::Mode::Status {
            status: 503,
            body: String::new(),
            retry_after: None,
        },
    );
    let out = agent.cli(&["refresh", "--all"]);
    assert_eq!(exit_code(&out), 75, "{}", stdout(&out));
    assert!(stdout(&out).contains("carrental: failed"));

    // No token now, try later: 75. Logged out (a person must act): 77; the
    // whole answer on stdout with --json, saying so.
    let out = agent.cli(&["token", "carrental", "--json"]);
    let (code, answer) = (exit_code(&out), stdout(&out));
    if answer.contains("\"ok\":false") {
        assert_eq!(code, 75, "{answer}");
        assert!(answer.contains("\"state\":\"none\""), "{answer}");
    }
    let out = agent.cli(&["logout", "makeleaps"]);
    assert_eq!(exit_code(&out), 0);
    let out = agent.cli(&["token", "makeleaps", "--json"]);
    assert_eq!(exit_code(&out), 77, "logged out: an administrator must act");
    assert!(
        stdout(&out).contains("\"state\":\"logged_out\""),
        "{}",
        stdout(&out)
    );

    let out = agent.cli(&["frobnicate"]);
    assert_eq!(exit_code(&out), 64);
    let out = agent.cli(&["--version"]);
    assert_eq!(exit_code(&out), 0);
    assert!(stdout(&out).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn unreachable_agent_exits_69() {
    let dir = TempDir::new("noagent");
    let out = bin()
        .args(["token", "x", "--socket"])
        .arg(dir.join("nothing.sock"))
        .output()
        .unwrap();
    assert_eq!(exit_code(&out), 69);
    assert!(stderr(&out).contains("not reachable"));
    // A script asking for JSON reads the failure on stdout.
    let out = bin()
        .args(["token", "x", "--json", "--socket"])
        .arg(dir.join("nothing.sock"))
        .output()
        .unwrap();
    assert_eq!(exit_code(&out), 69);
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["error"], "unreachable", "{v}");
    // A missing name: one line that says so, not the whole usage.
    let out = bin().arg("token").output().unwrap();
    assert_eq!(exit_code(&out), 64);
    let err = stderr(&out);
    assert!(err.contains("token needs a provider NAME"), "{err}");
    assert!(!err.contains("Usage:") && err.lines().count() <= 2, "{err}");
}

#[test]
fn invalidate_from_the_command_line_gives_the_next_token() {
    let dir = TempDir::new("cliinv");
    let partners = standin();
    let providers = format!("{NO_COOLDOWN}\n{}", partners.providers_toml());
    write_config(&dir, &config_text(&dir, "", &providers));
    let agent = Agent::start(&dir);
    let first = agent.wait_token("makeleaps")["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let invalidate = |token: &str, json: bool| {
        use std::io::Write;
        let mut cmd = bin();
        cmd.args(["invalidate", "makeleaps", "-"])
            .env("SHOP_AUTH_AGENT_SOCKET", &agent.socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if json {
            cmd.arg("--json");
        }
        let mut child = cmd.spawn().unwrap();
        writeln!(child.stdin.take().unwrap(), "{token}").unwrap();
        child.wait_with_output().unwrap()
    };
    // Never in the arguments, which every local user can read.
    let out = agent.cli(&["invalidate", "makeleaps", &first]);
    assert_eq!(exit_code(&out), 64);
    let out = invalidate(&first, false);
    assert_eq!(exit_code(&out), 0, "{}", stderr(&out));
    let next = stdout(&out).trim().to_owned();
    assert!(!next.is_empty() && next != first);
    assert!(partners.is_live(&next));
    // Naming a token already replaced: the current one, no new request.
    let before = partners.count(standins::Kind::MakeLeaps);
    let out = invalidate(&first, true);
    assert_eq!(exit_code(&out), 0);
    assert!(stdout(&out).contains(&next));
    assert_eq!(partners.count(standins::Kind::MakeLeaps), before);
}

#[test]
fn check_config_outside_the_service_defers_systemd_credentials() {
    let dir = TempDir::new("credcheck");
    let partners = standin();
    let providers = partners.providers_toml().replace(
        &format!(
            "client_secret = {:?}\npersist = true",
            standins::creds::MAKELEAPS_CLIENT_SECRET
        ),
        "client_secret = { credential = \"makeleaps-secret\" }\npersist = true",
    );
    assert!(providers.contains("makeleaps-secret"));
    write_config(&dir, &config_text(&dir, "", &providers));
    let out = bin()
        .args(["check-config", "--config"])
        .arg(dir.join("config.toml"))
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    assert_eq!(exit_code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("credential makeleaps-secret: resolved by systemd at start"),
        "{}",
        stdout(&out)
    );
    // `run` needs it for real.
    let out = bin()
        .args(["run", "--config"])
        .arg(dir.join("config.toml"))
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    assert_eq!(exit_code(&out), 78);
}

#[test]
fn allow_lists_answer_forbidden_to_other_uids() {
    if let Err(why) = can_switch_users() {
        skip(&why);
        return;
    }
    use std::os::unix::process::CommandExt;
    let dir = TempDir::new("allow");
    let partners = standin();
    let providers = partners.providers_toml().replace(
        "[providers.makeleaps]\n",
        "[providers.makeleaps]\nallow_uids = [4242]\n",
    );
    write_config(
        &dir,
        &config_text(&dir, "socket_mode = \"0666\"", &providers),
    );
    let agent = Agent::start(&dir);
    agent.wait_token("makeleaps");
    let as_uid = |uid: u32, name: &str| {
        bin()
            .args(["token", name, "--socket"])
            .arg(&agent.socket)
            .uid(uid)
            .gid(uid)
            .output()
            .unwrap()
    };
    let out = as_uid(4243, "makeleaps");
    assert_eq!(exit_code(&out), 77, "{}", stderr(&out));
    assert!(stderr(&out).contains("forbidden"));
    let out = as_uid(4242, "makeleaps");
    assert_eq!(exit_code(&out), 0, "{}", stderr(&out));
    // A provider without allow_* is open to whoever can open the socket.
    let out = as_uid(4243, "carrental");
    assert_eq!(exit_code(&out), 0, "{}", stderr(&out));
}

#[test]
fn dev_mode_serves_every_kind_and_cleans_up() {
    let mut child = bin()
        .arg("dev")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let socket = wait_for("the socket line", || {
        let line = lines.next()?.ok()?;
        line.strip_prefix("SHOP_AUTH_AGENT_SOCKET=")
            .map(std::path::PathBuf::from)
    });
    let folder = socket.parent().unwrap().to_owned();
    assert!(folder.exists());
    wait_for("the dev socket", || {
        std::os::unix::net::UnixStream::connect(&socket).ok()
    });
    let mut c = Client::connect(&socket);
    for name in PROVIDERS {
        let a = c.ask(&format!("TOKEN {name}"));
        assert_eq!(a["ok"], true, "{name}: {a}");
        // Dev tokens are short-lived so that renewals show.
        assert!(a["expires_in"].as_i64().unwrap() <= 30);
    }
    drop(c);
    let rc = unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert_eq!(rc, 0);
    let status = wait_for("dev to exit", || child.try_wait().unwrap());
    assert_eq!(status.code(), Some(0));
    assert!(!folder.exists(), "dev left {} behind", folder.display());
}
