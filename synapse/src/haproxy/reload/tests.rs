//! Unit tests of `reload.rs`, kept apart so that the module reads in one go.

use super::reloader::{read_pid, shell};
use super::*;
use crate::config::Config;

fn config(dir: &Path, extra: &str) -> HaproxyConfig {
    let text = format!(
        r#"{{"services": {{"web": {{"discovery": {{"method": "base"}}}}}},
                "haproxy": {{"config_file_path": "{}/haproxy.cfg",
                             "reload_command": "echo reloaded >> {}/reloads"{extra}}}}}"#,
        dir.display(),
        dir.display()
    );
    let c = Config::parse(&text, None).unwrap();
    c.haproxy.unwrap()
}

fn writer(dir: &Path, extra: &str) -> Writer {
    Writer::new(&config(dir, extra))
}

#[tokio::test]
async fn the_candidate_never_follows_a_symlink() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    // The default candidate name of earlier versions, planted as a symlink.
    std::os::unix::fs::symlink(&victim, dir.path().join("haproxy.cfg.tmp")).unwrap();
    let check = r#", "do_checks": true, "check_command": "grep -q good $SYNAPSE_CANDIDATE_CONFIG""#;
    writer(dir.path(), check)
        .write("good\n", true)
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    let cfg = dir.path().join("haproxy.cfg");
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), "good\n");
    let mode = std::fs::metadata(&cfg).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o640, "the default mode");
    if let Some(gid) = group_id("haproxy") {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(&cfg).unwrap().gid(),
            gid,
            "the haproxy group"
        );
    }
    // A configured candidate path that is a symlink is replaced, not written through.
    let fixed = dir.path().join("candidate.cfg");
    std::os::unix::fs::symlink(&victim, &fixed).unwrap();
    let extra = format!(
        r#"{check}, "candidate_config_file_path": "{}""#,
        fixed.display()
    );
    writer(dir.path(), &extra)
        .write("good 2\n", true)
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), "good 2\n");
    // A refused candidate leaves no temp file behind.
    assert!(writer(dir.path(), check)
        .write("bad\n", true)
        .await
        .is_err());
    let temps: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(TEMP_PREFIX))
        .collect();
    assert!(temps.is_empty(), "{temps:?}");
}

#[tokio::test]
async fn config_file_mode_is_configurable_and_never_world_writable() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    writer(dir.path(), r#", "config_file_mode": "0600""#)
        .write("global\n", false)
        .await
        .unwrap();
    let mode = std::fs::metadata(dir.path().join("haproxy.cfg"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    for bad in ["0666", "0777", "rw", "01000", "0044"] {
        let text = format!(
            r#"{{"services": {{"web": {{"discovery": {{"method": "base"}}}}}},
                    "haproxy": {{"config_file_path": "/tmp/x.cfg", "reload_command": "true",
                                 "config_file_mode": "{bad}"}}}}"#
        );
        let err = Config::parse(&text, None).unwrap_err().to_string();
        assert!(err.contains("haproxy.config_file_mode"), "{bad}: {err}");
    }
}

#[test]
fn pid_files_naming_anything_but_haproxy_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("haproxy.pid");
    let me = std::process::id().to_string();
    for (pid, says) in [
        ("0", "not HAProxy's"),
        ("1", "not HAProxy's"),
        (me.as_str(), "not a haproxy process"),
        ("x", "not a PID"),
    ] {
        std::fs::write(&file, pid).unwrap();
        let err = read_pid(&file).unwrap_err();
        let text = common::error::error_chain(&err);
        assert!(text.contains(says), "{pid}: {text}");
    }
}

#[tokio::test]
async fn commands_get_an_allow_listed_environment() {
    // cargo runs tests with CARGO_* set (not allow-listed, like AWS_*).
    assert!(
        std::env::var_os("CARGO_MANIFEST_DIR").is_some(),
        "run under cargo"
    );
    let out = run(
        shell(r#"test -z "$CARGO_MANIFEST_DIR" && test -n "$PATH""#),
        "env",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert!(out.is_ok(), "the command saw the secret");
}

#[tokio::test]
async fn writes_atomically_and_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let w = writer(dir.path(), "");
    let r = Reloader::new(&config(dir.path(), ""));
    w.write("global\n", true).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("haproxy.cfg")).unwrap(),
        "global\n"
    );
    r.reload(None).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("reloads")).unwrap(),
        "reloaded\n"
    );
    // No temp files left behind.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[tokio::test]
async fn a_failed_check_keeps_the_old_file() {
    let dir = tempfile::tempdir().unwrap();
    let w = writer(
        dir.path(),
        r#", "do_checks": true, "check_command": "grep -q good $SYNAPSE_CANDIDATE_CONFIG""#,
    );
    w.write("good\n", true).await.unwrap();
    let err = w.write("bad\n", true).await.unwrap_err();
    assert!(matches!(err, ReloadError::CheckFailed { .. }), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("haproxy.cfg")).unwrap(),
        "good\n"
    );
    assert!(!dir.path().join("haproxy.cfg.tmp").exists());
}

#[tokio::test]
async fn real_haproxy_check_refuses_a_broken_config() {
    let dir = tempfile::tempdir().unwrap();
    let w = writer(dir.path(), r#", "do_checks": true"#);
    let good = "defaults\n    mode http\n    timeout connect 1s\n    timeout client 1s\n    \
                    timeout server 1s\n\nlisten x\n    bind 127.0.0.1:1\n";
    w.write(good, true).await.unwrap();
    // Valid but without a listener (haproxy -c exits 2): still written.
    w.write("global\n    maxconn 10\n", true).await.unwrap();
    w.write(good, true).await.unwrap();
    let err = w
        .write("global\n    no-such-keyword 1\n", true)
        .await
        .unwrap_err();
    assert!(matches!(err, ReloadError::CheckFailed { .. }), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("haproxy.cfg")).unwrap(),
        good
    );
}

#[tokio::test]
async fn reload_failure_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = config(dir.path(), "");
    h.reload_method = Some(ReloadMethod::Command("echo boom >&2; exit 3".into()));
    let err = Reloader::new(&h)
        .reload(None)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("boom"), "{err}");
}

/// The deferred write's check (`write_checking`) with the real `haproxy -c`: it reads
/// every section and the servers of the services named as changed, not the others'
/// servers (those are the accepted file's); a reduced file refused falls back to the
/// whole file, so a refusal is always the whole file's.
#[tokio::test]
async fn the_reduced_check_reads_what_changed_and_falls_back_to_the_whole_file() {
    use crate::haproxy::config::RenderedParts;
    use common::ServiceName;
    use std::collections::BTreeSet;
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let w = writer(dir.path(), r#", "do_checks": true"#).deferred();
    let (a, b) = (
        ServiceName::new("a").unwrap(),
        ServiceName::new("b").unwrap(),
    );
    let parts = |a_servers: &str, b_servers: &str| RenderedParts {
        head: "defaults\n    mode http\n    timeout connect 1s\n    timeout client 1s\n    \
               timeout server 1s\n"
            .into(),
        services: [
            (
                a.clone(),
                Arc::from(format!("\nbackend a\n    balance roundrobin\n{a_servers}")),
            ),
            (b.clone(), Arc::from(format!("\nbackend b\n{b_servers}"))),
        ]
        .into(),
        tail: "\nfrontend f\n    bind 127.0.0.1:1\n    use_backend a if { path /a }\n    \
               default_backend b\n"
            .into(),
    };
    let only_a = BTreeSet::from([a.clone()]);
    let on_disk = || std::fs::read_to_string(dir.path().join("haproxy.cfg")).unwrap();
    let b1 = "    server b1 127.0.0.1:2\n";

    let first = parts("    server a1 127.0.0.1:3\n", b1);
    w.write(&first.text(), true).await.unwrap();

    // `a` changed: the check reads `a`'s servers and every section, not `b`'s servers.
    let next = parts("    server a1 127.0.0.1:3\n    server a2 127.0.0.1:4\n", b1);
    let reduced = next.text_checking_only(&only_a).unwrap();
    assert!(reduced.contains("server a2") && reduced.contains("backend b"));
    assert!(!reduced.contains("server b1"), "{reduced}");
    w.write_checking(&Arc::from(next.text()), true, Some(&reduced))
        .await
        .unwrap();
    assert_eq!(on_disk(), next.text());

    // A bad server line in `a` is refused: the reduced file and then the whole one.
    let bad = parts("    server a3 127.0.0.1:5 no-such-option\n", b1);
    let reduced = bad.text_checking_only(&only_a).unwrap();
    let err = w
        .write_checking(&Arc::from(bad.text()), true, Some(&reduced))
        .await
        .unwrap_err();
    assert!(matches!(err, ReloadError::CheckFailed { .. }), "{err}");
    assert_eq!(on_disk(), next.text());

    // The reduced check does not read the servers left out: a line of `b` it would
    // refuse passes when `b` is (wrongly) said to be unchanged.
    let b_bad = parts(
        "    server a1 127.0.0.1:3\n",
        "    server b1 127.0.0.1:2 no-such-option\n",
    );
    let reduced = b_bad.text_checking_only(&only_a).unwrap();
    w.write_checking(&Arc::from(b_bad.text()), true, Some(&reduced))
        .await
        .unwrap();
    assert_eq!(on_disk(), b_bad.text());
    w.write(&next.text(), true).await.unwrap();

    // `a`'s new server tracks `b1`, which the reduced file lacks: refused there,
    // accepted whole, written.
    let tracking = parts(
        "    server a1 127.0.0.1:3 track b/b1\n",
        "    server b1 127.0.0.1:2 check\n",
    );
    let reduced = tracking.text_checking_only(&only_a).unwrap();
    w.write_checking(&Arc::from(tracking.text()), true, Some(&reduced))
        .await
        .unwrap();
    assert_eq!(on_disk(), tracking.text());

    // A server left out that tracks another: no reduced file (the whole is checked).
    let tracked_by_b = parts(
        "    server a1 127.0.0.1:3 check\n",
        "    server b1 127.0.0.1:2 track a/a1\n",
    );
    assert_eq!(tracked_by_b.text_checking_only(&only_a), None);
    assert!(tracked_by_b
        .text_checking_only(&BTreeSet::from([a, b]))
        .is_some());
}

/// The deferred write's CPU work runs at nice 19, on a thread of its own: the caller's
/// threads (tokio's pools among them) keep their priority.
#[tokio::test]
async fn lowered_work_runs_at_the_lowest_priority_on_its_own_thread() {
    let priority = || rustix::process::getpriority_process(Some(rustix::thread::gettid()));
    let before = priority().unwrap();
    let (inside, name) = lowered(move || {
        (
            priority().unwrap(),
            std::thread::current().name().map(str::to_owned),
        )
    })
    .await
    .unwrap();
    assert_eq!(inside, 19);
    assert_eq!(name.as_deref(), Some("synapse-write"));
    assert_eq!(priority().unwrap(), before);
    assert_eq!(
        tokio::task::spawn_blocking(priority)
            .await
            .unwrap()
            .unwrap(),
        before
    );
}

/// The deferred write's paced form (pieces, each flushed, with pauses) puts the same
/// bytes in place as the one-go write, mode included, and leaves no temp file.
#[test]
fn a_paced_write_puts_the_same_file_in_place() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("haproxy.cfg");
    let text: String = (0..40_000)
        .map(|i| format!("    server s{i} 127.0.0.1:{i}\n"))
        .collect();
    let mode = FileMode {
        mode: 0o640,
        group: None,
    };
    write_atomically_paced(dir.path(), &path, &text, mode, Some(100_000)).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "{names:?}");
}
