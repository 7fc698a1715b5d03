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
