//! The real `nerve` binary: command line, exit codes, and its behaviour under signals.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::{init_tracing, Backend, Etcd, Workdir};
use nix::sys::signal::Signal;
use serde_json::json;

use crate::support::{
    config, events_since, http_service, keys, revision, wait_keys, NerveProcess, TTL,
};

const SLACK: Duration = Duration::from_secs(3);

fn nerve_command() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nerve"));
    c.env_remove("NERVE_CONFIG")
        .env_remove("NERVE_INSTANCE_ID")
        .env("RUST_LOG", "warn");
    c
}

#[test]
fn check_config_accepts_the_example_and_rejects_bad_configs() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/nerve.json");
    let out = nerve_command()
        .args(["--check-config", "-c"])
        .arg(&example)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));

    let dir = Workdir::new();
    let bad = dir.write(
        "bad.json",
        r#"{
          "instance_id": "host-1",
          "instance_idd": "typo",            // unknown key
          "lease_ttl": "ten",                // wrong type
          "services": {
            "web": {"host": "127.0.0.1", "port": 0},          // port 0
            "api": {"host": "127.0.0.1", "port": 81},
            "api": {"host": "127.0.0.1", "port": 82,          // duplicate service
                    "checks": [{"type": "http"}]},            // check without uri
          },
        }"#,
    );
    let out = nerve_command()
        .args(["-k", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for path in [
        "instance_idd",
        "lease_ttl",
        "services.web.port",
        "services.api:",
        "services.api.checks.0.uri",
    ] {
        assert!(stderr.contains(path), "{path} not named in:\n{stderr}");
    }
    // Without --check-config a bad config is the same exit 64, before anything starts.
    let out = nerve_command().args(["-c"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    // A bad command line too.
    let out = nerve_command().arg("--no-such-flag").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
}

/// Upstream keys that do nothing here: one warning line each; the ZooKeeper reporter
/// (upstream's default, implied by `zk_hosts`) is accepted; reporters this build lacks:
/// exactly one error line.
#[test]
fn check_config_warns_for_upstream_keys_and_refuses_missing_reporters_in_one_line() {
    let dir = Workdir::new();
    let ok = dir.write(
        "ok.json",
        r#"{"instance_id": "h", "statsd": {"port": 8125}, "max_repeated_report_failures": 10,
            "services": {"web": {"host": "127.0.0.1", "port": 80, "check_mocked": false},
                         "zk": {"host": "127.0.0.1", "port": 81, "zk_hosts": ["z:2181"],
                                "zk_path": "/nerve/services/zk/services"}}}"#,
    );
    let out = nerve_command()
        .args(["-k", "-c"])
        .arg(&ok)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .collect();
    assert_eq!(warnings.len(), 3, "{stderr}");
    assert!(
        stderr.contains("warning: services.web.check_mocked: ignored"),
        "{stderr}"
    );
    let zk = dir.write(
        "zk.json",
        r#"{"instance_id": "h", "services": {
            "web": {"host": "127.0.0.1", "port": 80, "reporter_type": "serf",
                    "checks": [{"type": "rabbitmq", "username": "guest"}]},
            "api": {"host": "127.0.0.1", "port": 81, "reporter_type": ["etcd", "serf"]}}}"#,
    );
    let out = nerve_command()
        .args(["-k", "-c"])
        .arg(&zk)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().skip(1).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("the `serf` reporter (2 uses)"),
        "{stderr}"
    );
}

#[test]
fn config_path_and_instance_id_come_from_the_environment() {
    let dir = Workdir::new();
    let file = dir.write(
        "nerve.json",
        r#"{"services": {"web": {"host": "127.0.0.1", "port": 80}}}"#,
    );
    let out = nerve_command()
        .arg("--check-config")
        .env("NERVE_CONFIG", &file)
        .env("NERVE_INSTANCE_ID", "from-env")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("instance from-env"));
    // The flag wins over the environment.
    let out = nerve_command()
        .args(["--check-config", "-i", "from-flag"])
        .env("NERVE_CONFIG", &file)
        .env("NERVE_INSTANCE_ID", "from-env")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("instance from-flag"));
    // Without either, the missing instance_id is a config error.
    let out = nerve_command()
        .arg("-k")
        .arg("-c")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("instance_id"));
}

#[tokio::test]
async fn sigterm_deregisters_within_a_second_then_exits_0() {
    init_tracing();
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let dir = Workdir::new();
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let mut nerve = NerveProcess::start(
        &dir,
        "nerve",
        &config(
            &etcd.endpoints(),
            "host-1",
            json!({
                "a": http_service(a.port(), "/svc/a", 1, 1),
                "b": http_service(b.port(), "/svc/b", 1, 1),
            }),
        ),
    );
    wait_keys(&client, "/svc/", 2, SLACK).await;
    nerve.signal(Signal::SIGTERM);
    wait_keys(&client, "/svc/", 0, Duration::from_secs(1)).await;
    let status = nerve.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "log:\n{}", nerve.log());
    let log = nerve.log();
    assert!(log.contains("lease revoked"), "{log}");
}

#[tokio::test]
async fn sigkill_leaves_the_keys_to_expire_with_the_lease() {
    init_tracing();
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let dir = Workdir::new();
    let backend = Backend::start("a").await;
    let mut nerve = NerveProcess::start(
        &dir,
        "nerve",
        &config(
            &etcd.endpoints(),
            "host-1",
            json!({"a": http_service(backend.port(), "/svc/a", 1, 1)}),
        ),
    );
    wait_keys(&client, "/svc/", 1, SLACK).await;
    nerve.signal(Signal::SIGKILL);
    let killed = Instant::now();
    nerve.wait_exit(Duration::from_secs(5)).await;
    // Crashed: nothing deregistered it, so the key outlives the process...
    assert_eq!(keys(&client, "/svc/").await.unwrap().len(), 1);
    // ...until the lease runs out (TTL, plus etcd's own slack of up to ~1 s).
    wait_keys(&client, "/svc/", 0, Duration::from_secs(TTL) + SLACK).await;
    assert!(killed.elapsed() >= Duration::from_millis(TTL * 1000 / 2));
}

#[tokio::test]
async fn paused_past_the_ttl_it_registers_again_on_sigcont() {
    init_tracing();
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let dir = Workdir::new();
    let backend = Backend::start("a").await;
    let mut nerve = NerveProcess::start(
        &dir,
        "nerve",
        &config(
            &etcd.endpoints(),
            "host-1",
            json!({"a": http_service(backend.port(), "/svc/a", 1, 1)}),
        ),
    );
    let before = wait_keys(&client, "/svc/", 1, SLACK).await;
    nerve.signal(Signal::SIGSTOP);
    // The lease expires while nerve is frozen.
    wait_keys(&client, "/svc/", 0, Duration::from_secs(TTL) + SLACK).await;
    nerve.signal(Signal::SIGCONT);
    let after = wait_keys(&client, "/svc/", 1, SLACK).await;
    assert_ne!(after[0].lease, before[0].lease, "a new lease is granted");
    assert_eq!(after[0].value, before[0].value);
    assert!(nerve.is_running());
    nerve.signal(Signal::SIGTERM);
    assert_eq!(
        nerve.wait_exit(Duration::from_secs(5)).await.code(),
        Some(0)
    );
}

#[tokio::test]
async fn sighup_adds_removes_and_replaces_services() {
    init_tracing();
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let dir = Workdir::new();
    let backends = [
        Backend::start("keep").await,
        Backend::start("drop").await,
        Backend::start("change-old").await,
        Backend::start("change-new").await,
        Backend::start("add").await,
    ];
    let service = |i: usize, path: &str| http_service(backends[i].port(), path, 2, 2);
    let endpoints = etcd.endpoints();
    let first = config(
        &endpoints,
        "host-1",
        json!({
            "keep": service(0, "/svc/keep"),
            "drop": service(1, "/svc/drop"),
            "change": service(2, "/svc/change"),
        }),
    );
    let mut nerve = NerveProcess::start(&dir, "nerve", &first);
    let before = wait_keys(&client, "/svc/", 3, SLACK).await;
    let find = |kvs: &[crate::support::Kv], prefix: &str| {
        kvs.iter()
            .find(|kv| kv.key.starts_with(prefix))
            .cloned()
            .unwrap_or_else(|| panic!("no key under {prefix} in {kvs:?}"))
    };
    let keep_before = find(&before, "/svc/keep/");
    let change_before = find(&before, "/svc/change/");
    let rev = revision(&client).await;

    let second = config(
        &endpoints,
        "host-1",
        json!({
            "keep": service(0, "/svc/keep"),
            "change": service(3, "/svc/change"),
            "add": service(4, "/svc/add"),
        }),
    );
    dir.write("nerve.json", second.to_string());
    nerve.signal(Signal::SIGHUP);

    let new_value = format!(
        r#"{{"host":"127.0.0.1","port":{},"name":"host-1"}}"#,
        backends[3].port()
    );
    let after = integration_tests::eventually(SLACK * 2, || async {
        let kvs = keys(&client, "/svc/").await?;
        let prefixes: Vec<&str> = kvs
            .iter()
            .map(|kv| kv.key.split('/').nth(2).unwrap_or(""))
            .collect();
        let changed = kvs
            .iter()
            .any(|kv| kv.key.starts_with("/svc/change/") && kv.value == new_value);
        if prefixes == ["add", "change", "keep"] && changed {
            Ok(kvs)
        } else {
            Err(format!("{kvs:?}"))
        }
    })
    .await;
    // Unchanged: not touched at all.
    assert_eq!(find(&after, "/svc/keep/"), keep_before);
    // Changed: the same key (same lease, same service) updated in place.
    let change_after = find(&after, "/svc/change/");
    assert_eq!(change_after.key, change_before.key);
    assert_eq!(change_after.create_revision, change_before.create_revision);
    // Make-before-break: the changed service's key was never deleted; the removed one was.
    let events = events_since(&client, "/svc/", rev + 1).await;
    assert!(
        !events.contains(&("DELETE".to_owned(), change_before.key.clone())),
        "{events:?}"
    );
    assert!(events
        .iter()
        .any(|(kind, key)| kind == "DELETE" && key.starts_with("/svc/drop/")));
    assert!(
        events.iter().all(|(_, key)| !key.starts_with("/svc/keep/")),
        "{events:?}"
    );

    // An invalid config on SIGHUP is rejected; nerve keeps running the old one.
    dir.write(
        "nerve.json",
        r#"{"instance_id": "host-1", "services": {"x": {}}}"#,
    );
    let rev = revision(&client).await;
    nerve.signal(Signal::SIGHUP);
    integration_tests::eventually(SLACK, || async {
        nerve.log().contains("config reload rejected")
    })
    .await;
    assert!(nerve.is_running());
    assert_eq!(revision(&client).await, rev);
    nerve.signal(Signal::SIGTERM);
    assert_eq!(
        nerve.wait_exit(Duration::from_secs(5)).await.code(),
        Some(0)
    );
}

/// `nerve drain` / `nerve undrain` against the running binary: what it prints and its
/// exit codes (0 done, 2 not confirmed by the timeout, 1 unreachable, 64 bad usage). The
/// lagging consumer is a status document the test writes (real synapses are in
/// `tests/tests/drain_barrier.rs`).
#[tokio::test]
async fn drain_subcommand_prints_the_outcome_and_sets_the_exit_code() {
    init_tracing();
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let dir = Workdir::new();
    let a = Backend::start("a").await;
    let cfg = config(
        &etcd.endpoints(),
        "host-1",
        json!({"a": http_service(a.port(), "/svc/a", 1, 1)}),
    );
    let _nerve = NerveProcess::start(&dir, "nerve", &cfg);
    let cfg_path = dir.join("nerve.json");
    wait_keys(&client, "/svc/a/", 1, SLACK).await;
    let run = |args: &[&str]| {
        let out = nerve_command()
            .arg("-c")
            .arg(&cfg_path)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, out, err) = run(&["drain", "a", "--wait", "--timeout", "10"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("a: deregistered from /svc/a"), "{out}");
    assert!(out.contains("no live synapse watches /svc/a"), "{out}");
    wait_keys(&client, "/svc/a/", 0, SLACK).await;

    let (code, _, err) = run(&["drain", "nope"]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("no service nope"), "{err}");

    // A consumer that has applied only revision 1 of /svc/a.
    client
        .put(
            "/synapse/applied/lb-x/0000000000000001",
            r#"{"instance_id":"lb-x","applied":{"/svc/a":1}}"#,
            None,
        )
        .await
        .unwrap();
    let (code, out, err) = run(&["undrain", "a"]);
    assert_eq!(code, Some(0), "{out}{err}");
    wait_keys(&client, "/svc/a/", 1, SLACK).await;
    let (code, out, err) = run(&["drain", "a", "--wait", "--timeout", "1"]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(
        out.contains("0 of 1 synapses watching /svc/a confirmed"),
        "{out}"
    );
    assert!(
        out.contains("not confirmed: lb-x (applied revision 1)"),
        "{out}"
    );

    let (code, _, err) = run(&["drain", "a", "--admin", "127.0.0.1:1"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("unreachable"), "{err}");
}
