//! The binary: `--check-config` exit codes and messages (reliability B23), and a clean
//! exit on SIGTERM.

use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_synapse");

fn check(config: &str) -> std::process::Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("synapse.json");
    std::fs::write(&path, config).expect("write");
    Command::new(BIN)
        .arg("--check-config")
        .arg("-c")
        .arg(&path)
        .output()
        .expect("run synapse")
}

#[test]
fn check_config_accepts_the_examples() {
    for example in [
        "synapse.json",
        "synapse-clay.json",
        "synapse-etcd-clay.json",
        "synapse-managed.json",
    ] {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../examples")
                .join(example),
        )
        .expect("example");
        let out = check(&text);
        assert!(
            out.status.success(),
            "{example}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn check_config_reports_every_error_with_its_path_and_exits_64() {
    let out = check(
        r#"{"services": {"web": {"discovery": {"method": "etcd", "hots": ["a:1"],
              "etcd": {"username": "u", "password": "hunter2-secret", "dial_timeout": "x"}},
            "haproxy": {"port": 99999}}},
            "haproxy": {"config_file_path": "/tmp/x.cfg", "reload_command": "true", "bogus": 1}}"#,
    );
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for path in [
        "services.web.discovery.hots",
        "services.web.discovery.etcd.dial_timeout",
        "services.web.haproxy.port",
        "haproxy.bogus",
    ] {
        assert!(err.contains(path), "{path} missing from:\n{err}");
    }
    assert!(!err.contains("hunter2"), "secret echoed:\n{err}");
}

#[test]
fn passwords_over_plain_http_and_credentials_in_endpoints_exit_64() {
    let out = check(
        r#"{"services": {
            "web": {"discovery": {"method": "etcd", "hosts": ["10.0.0.1:2379"],
                "etcd": {"username": "u", "password": "hunter2-secret"}}},
            "api": {"discovery": {"method": "etcd",
                "hosts": ["http://root:hunter3-secret@10.0.0.1:2379"]}}},
            "file_output": {"output_directory": "/tmp/x"}}"#,
    );
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for path in [
        "services.web.discovery.etcd.allow_insecure_auth",
        "services.api.discovery.hosts.0",
    ] {
        assert!(err.contains(path), "{path} missing from:\n{err}");
    }
    assert!(!err.contains("hunter"), "secret echoed:\n{err}");
    // The explicit opt-in is accepted.
    let out = check(
        r#"{"services": {"web": {"discovery": {"method": "etcd", "hosts": ["10.0.0.1:2379"],
                "etcd": {"username": "u", "password": "p", "allow_insecure_auth": true}}}},
            "file_output": {"output_directory": "/tmp/x"}}"#,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_plain_http_ec2_endpoint_is_refused_unless_loopback() {
    let config = |endpoint: &str| {
        format!(
            r#"{{"services": {{"web": {{"discovery": {{"method": "ec2tag", "tag_name": "a",
                "tag_value": "b", "aws_region": "us-east-1", "endpoint": "{endpoint}"}},
                "backend_port_override": 8080}}}},
                "file_output": {{"output_directory": "/tmp/x"}}}}"#
        )
    };
    let out = check(&config("http://ec2.example.com"));
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("services.web.discovery.endpoint"), "{err}");
    for ok in ["https://ec2.example.com", "http://127.0.0.1:5000"] {
        let out = check(&config(ok));
        assert!(
            out.status.success(),
            "{ok}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn check_config_warns_when_a_reload_cannot_be_hitless_naming_the_line() {
    let config = |extra: &str| {
        format!(
            r#"{{"services": {{"web": {{"discovery": {{"method": "base"}}}}}},
                "haproxy": {{"config_file_path": "/tmp/x.cfg", "master_socket_path": "/tmp/m.sock",
                             "defaults": ["mode http"]{extra}}}}}"#
        )
    };
    // As written: synapse adds the line, nothing to warn about.
    let out = check(&config(""));
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"));
    // Opted out: still valid, but the missing line is named.
    let out = check(&config(r#", "seamless_reload_lines": false"#));
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning") && err.contains("option idle-close-on-response"),
        "{err}"
    );
}

#[test]
fn missing_config_is_a_usage_error() {
    let out = Command::new(BIN)
        .arg("--check-config")
        .env_remove("SYNAPSE_CONFIG")
        .output()
        .expect("run synapse");
    assert_eq!(out.status.code(), Some(64));
    let out = Command::new(BIN)
        .args(["-c", "/nonexistent/synapse.json", "--check-config"])
        .output()
        .expect("run synapse");
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn sigterm_stops_synapse_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = dir.path().join("out");
    let path = dir.path().join("synapse.json");
    std::fs::write(
        &path,
        format!(
            r#"{{"services": {{"web": {{"discovery": {{"method": "base"}},
                "default_servers": [{{"name": "a", "host": "127.0.0.1", "port": 8080}}]}}}},
                "file_output": {{"output_directory": "{}"}}}}"#,
            out_dir.display()
        ),
    )
    .expect("write");
    /// Kills and reaps the child if the test fails before it exits.
    struct Guard(std::process::Child);
    impl Drop for Guard {
        fn drop(&mut self) {
            if let Ok(None) = self.0.try_wait() {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }
    let mut child = Guard(
        Command::new(BIN)
            .env("SYNAPSE_CONFIG", &path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn synapse"),
    );
    // Running means the file it writes shows up.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !out_dir.join("web.json").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "web.json never written"
        );
        assert!(
            child.0.try_wait().expect("wait").is_none(),
            "synapse exited early"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.0.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.0.try_wait().expect("wait") {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    let json = std::fs::read_to_string(out_dir.join("web.json")).expect("web.json");
    assert!(json.contains("\"host\": \"127.0.0.1\""), "{json}");
}

/// An upstream key that does nothing here: one warning line naming it and what to use,
/// and the config is valid; a refused upstream method: exactly one error line.
#[test]
fn check_config_warns_once_per_upstream_key_and_refuses_unsupported_methods_in_one_line() {
    let out = check(
        r#"{"services": {"web": {"discovery": {"method": "base", "discovery_jitter": 5},
                                "nginx": {"port": 1}}},
            "statsd": {"host": "localhost", "port": 8125},
            "file_output": {"output_directory": "/tmp/synapse-cli-out"}}"#,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning: ")).collect();
    assert_eq!(warnings.len(), 3, "{err}");
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("warning: statsd: ignored") && w.contains("/metrics")),
        "{err}"
    );
    let out = check(
        r#"{"services": {"a": {"discovery": {"method": "zookeeper_dns", "hosts": ["z:2181"], "path": "/a"}},
                         "b": {"discovery": {"method": "yarn_slider", "yarn_api_url": "x"}}},
            "file_output": {"output_directory": "/tmp/synapse-cli-out"}}"#,
    );
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().skip(1).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains("`zookeeper_dns` discovery")
            && lines[0].contains("`yarn_slider` discovery"),
        "{err}"
    );
}

/// The binary end to end without a registry (`base` discovery, a reload command that
/// does nothing): `synapse diff` exits 2 before the first run (no haproxy.cfg) and 0
/// once a run wrote it; a real SIGHUP adds a service to the running process; a bad
/// file on SIGHUP is refused and the process keeps running on the old config; `diff`
/// with the bad file exits 64.
#[test]
fn diff_exit_codes_and_sighup_through_the_binary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("haproxy.cfg");
    let path = dir.path().join("synapse.json");
    let config = |services: &str| {
        format!(
            r#"{{"services": {{{services}}},
                "haproxy": {{"config_file_path": "{}", "reload_command": "true",
                             "do_socket": false, "bind_address": "127.0.0.1",
                             "defaults": ["mode http", "timeout connect 1s",
                                          "timeout client 1s", "timeout server 1s"]}}}}"#,
            cfg.display()
        )
    };
    let web = r#""web": {"discovery": {"method": "base"}, "haproxy": {"port": 39101},
                         "default_servers": [{"name": "a", "host": "127.0.0.1", "port": 8080}]}"#;
    let api = r#""api": {"discovery": {"method": "base"}, "haproxy": {"port": 39102},
                         "default_servers": [{"name": "b", "host": "127.0.0.1", "port": 8081}]}"#;
    std::fs::write(&path, config(web)).expect("write");
    let diff = |flag: &str| {
        let mut command = Command::new(BIN);
        if flag == "diff" {
            command.arg("diff");
        } else {
            command.arg(flag);
        }
        command
            .arg("-c")
            .arg(&path)
            .output()
            .expect("run synapse diff")
    };
    let out = diff("diff");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(stdout.contains("reload: needed"), "{stdout}");
    assert!(stdout.contains("+backend web"), "{stdout}");
    assert!(!cfg.exists(), "diff wrote haproxy.cfg");

    struct Guard(std::process::Child);
    impl Drop for Guard {
        fn drop(&mut self) {
            if let Ok(None) = self.0.try_wait() {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }
    let mut child = Guard(
        Command::new(BIN)
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn synapse"),
    );
    let wait_for = |what: &str, done: &dyn Fn() -> bool, child: &mut Guard| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: not within 20 s"
            );
            assert!(
                child.0.try_wait().expect("wait").is_none(),
                "synapse exited early"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let cfg_text = || std::fs::read_to_string(&cfg).unwrap_or_default();
    wait_for(
        "haproxy.cfg",
        &|| cfg_text().contains("backend web"),
        &mut child,
    );
    let out = diff("--dry-run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("haproxy.cfg: unchanged"), "{stdout}");

    let signal = |sig: &str, child: &Guard| {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(child.0.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    };
    // SIGHUP handler installed: the process is running (it wrote the file).
    std::fs::write(&path, config(&format!("{web}, {api}"))).expect("write");
    signal("HUP", &child);
    wait_for(
        "backend api",
        &|| cfg_text().contains("backend api"),
        &mut child,
    );

    std::fs::write(
        &path,
        "{\"services\": {\"web\": {\"haproxy\": {\"port\": \"x\"}}}}",
    )
    .expect("write");
    signal("HUP", &child);
    let out = diff("diff");
    assert_eq!(out.status.code(), Some(64));
    // Still running on the last good config: the next good file (api removed) applies.
    std::fs::write(&path, config(web)).expect("write");
    signal("HUP", &child);
    wait_for(
        "api removed",
        &|| !cfg_text().contains("backend api"),
        &mut child,
    );
    assert!(cfg_text().contains("backend web"));

    signal("TERM", &child);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.0.try_wait().expect("wait") {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
}
