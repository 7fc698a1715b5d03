//! reliability §4.3: bad registrations through real etcd into a real synapse and HAProxy
//! (B01–B21 of docs/reliability.md).

use integration_tests::{eventually, free_port, Backend, InProcessSynapse as Synapse};
use synapse::counters::Counters;

use crate::world::{haproxy_check, routes_to, World};
use crate::TIMEOUT;

/// reliability.md §4.3: each bad registration is skipped with its reason counted, the
/// good ones are still routed, `haproxy -c` passes, and no byte of a bad field reaches
/// haproxy.cfg.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_registrations_are_skipped_and_never_rendered() {
    let mut w = World::start("bad").await;
    let (port, small_port) = (free_port(), free_port());
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    w.register("web", "good-a", &a).await;
    let dir = w.path("web").dir();
    let v = |host: &str, port: &str, name: &str, extra: &str| {
        format!(r#"{{"host":{host},"port":{port},"name":{name}{extra}}}"#).into_bytes()
    };
    let mut bad: Vec<(&str, &str, Vec<u8>, &str)> = vec![
        (
            "B01",
            "b01",
            v(
                r#""10.0.0.1\n    server evil 6.6.6.6:80""#,
                "80",
                r#""x""#,
                "",
            ),
            "invalid_host",
        ),
        (
            "B02",
            "b02",
            v(
                r#""10.0.0.1\r\nprogram x\n command /bin/sh -c id""#,
                "80",
                r#""x""#,
                "",
            ),
            "invalid_host",
        ),
        (
            "B03",
            "b03a",
            v(r#""10.0.0.1""#, "80", r#""web#1""#, ""),
            "invalid_name",
        ),
        (
            "B03",
            "b03b",
            v(r#""10.0.0.1""#, "80", r#""a;b""#, ""),
            "invalid_name",
        ),
        (
            "B03",
            "b03c",
            v(r#""10.0.0.1""#, "80", r#""a\"b""#, ""),
            "invalid_name",
        ),
        (
            "B04",
            "b04",
            v(r#""10.0.0.1""#, "80", r#""${HOME}""#, ""),
            "invalid_name",
        ),
        (
            "B05",
            "b05",
            v(r#""10.0.0.1""#, "80", r#"".if 1""#, ""),
            "invalid_name",
        ),
        (
            "B06",
            "b06a",
            v(
                r#""10.0.0.1""#,
                "80",
                r#""x""#,
                r#","haproxy_server_options":"check port 22""#,
            ),
            "invalid_option",
        ),
        (
            "B06",
            "b06b",
            v(
                r#""10.0.0.1""#,
                "80",
                r#""x""#,
                r#","haproxy_server_options":"backup\nglobal""#,
            ),
            "invalid_option",
        ),
        (
            "B07",
            "b07",
            v(r#""evil.example.com""#, "80", r#""x""#, ""),
            "invalid_host",
        ),
        (
            "B08",
            "b08a",
            v(r#""169.254.169.254""#, "80", r#""x""#, ""),
            "disallowed_address",
        ),
        (
            "B08",
            "b08b",
            v(r#""0.0.0.0""#, "80", r#""x""#, ""),
            "disallowed_address",
        ),
        (
            "B08",
            "b08c",
            v(r#""fe80::1""#, "80", r#""x""#, ""),
            "disallowed_address",
        ),
        (
            "B09",
            "b09a",
            v(r#""10.0.0.1""#, "65536", r#""x""#, ""),
            "invalid_port",
        ),
        (
            "B09",
            "b09b",
            v(r#""10.0.0.1""#, r#""80""#, r#""x""#, ""),
            "invalid_port",
        ),
        (
            "B10",
            "b10",
            v(r#""10.0.0.1""#, "80", r#""x""#, r#","weight":257"#),
            "invalid_weight",
        ),
        (
            "B12",
            "b12",
            format!(
                r#"{{"host":"10.0.0.1","port":80,"name":"x","labels":{}{}}}"#,
                "[".repeat(1000),
                "]".repeat(1000)
            )
            .into_bytes(),
            "parse_error",
        ),
        (
            "B13",
            "b13",
            br#"{"host":"10.0.0.1","port":80,"port":22,"name":"x"}"#.to_vec(),
            "parse_error",
        ),
        ("B16", "b16a", b"[]".to_vec(), "parse_error"),
        ("B16", "b16b", b"".to_vec(), "parse_error"),
        (
            "B16",
            "b16c",
            br#"{"host":"10.0.0.1","#.to_vec(),
            "parse_error",
        ),
    ];
    // B11: 1 MiB, under etcd's 1.5 MiB limit.
    bad.push(("B11", "b11", vec![b'x'; 1 << 20], "too_large"));
    // B15: invalid UTF-8 in the value.
    let mut utf8 = br#"{"host":"10.0.0.1","port":80,"name":"x"#.to_vec();
    utf8.extend_from_slice(&[0xff, 0xfe, b'"', b'}']);
    bad.push(("B15", "b15", utf8, "invalid_utf8"));
    for (_, key, value, _) in &bad {
        w.put_raw(&format!("{dir}{key}"), value).await;
    }
    // B15 in the key.
    let mut bad_key = dir.as_bytes().to_vec();
    bad_key.extend_from_slice(&[0xff, b'k']);
    w.client
        .kv_client()
        .put(
            bad_key,
            br#"{"host":"10.0.0.9","port":80,"name":"k"}"#.to_vec(),
            None,
        )
        .await
        .expect("put");
    // B18: a nerve-shaped key whose value names another instance.
    w.put_raw(
        &w.key("web", "host-a"),
        br#"{"host":"10.0.0.9","port":80,"name":"host-z"}"#,
    )
    .await;
    // B14 + B21: unknown fields and hostile labels are accepted, never rendered; B05's
    // charset-valid keywords only ever appear inside a server name.
    let on_b = |name: &str, extra: &str| {
        format!(
            r#"{{"host":"127.0.0.1","port":{},"name":"{name}"{extra}}}"#,
            b.port()
        )
    };
    w.put_raw(
        &format!("{dir}b14"),
        on_b("program", r#","evil":"\nprogram x\n command id""#).as_bytes(),
    )
    .await;
    w.put_raw(
        &format!("{dir}b21"),
        on_b(
            "lua-load",
            r#","labels":{"note":"x\n${HOME} lua-load /tmp/evil.lua"}"#,
        )
        .as_bytes(),
    )
    .await;
    // B20: two keys with one server identity: one server line.
    w.put_raw(&format!("{dir}b20a"), on_b("dup", "").as_bytes())
        .await;
    w.put_raw(
        &format!("{dir}b20b"),
        on_b("dup", r#","weight":3"#).as_bytes(),
    )
    .await;
    // B17: a key outside the prefix (`web2` beside `web`).
    w.put_raw(
        &format!("{}/web2/x", w.prefix),
        br#"{"host":"10.0.0.77","port":80,"name":"outside"}"#,
    )
    .await;
    // B19: a service with max_servers 2 gets 3: it keeps its last known set.
    w.register("small", "s1", &a).await;

    let synapse = Synapse::start(&w.config(&[
        ("web", port, ""),
        ("small", small_port, r#", "max_servers": 2"#),
    ]));
    w.start_haproxy().await;
    routes_to(port, &["a", "b"]).await;
    routes_to(small_port, &["a"]).await;
    w.register("small", "s2", &b).await;
    routes_to(small_port, &["a", "b"]).await;
    let c = Backend::start("c").await;
    w.register("small", "s3", &c).await;
    eventually(TIMEOUT, || async {
        Counters::get(&synapse.counters.over_limit) >= 1
    })
    .await;
    routes_to(small_port, &["a", "b"]).await;

    let rejected = synapse.counters.rejected();
    let mut want: std::collections::BTreeMap<&str, u64> = Default::default();
    for (_, _, _, reason) in &bad {
        *want.entry(reason).or_default() += 1;
    }
    *want.entry("invalid_utf8").or_default() += 1; // the key
    *want.entry("identity_mismatch").or_default() += 1;
    *want.entry("over_limit").or_default() += 1;
    // B20: one server name claimed twice, counted once (issue #18).
    *want.entry("identity_conflict").or_default() += 1;
    assert_eq!(rejected, want);

    let cfg = std::fs::read_to_string(w.cfg_path()).expect("cfg");
    haproxy_check(&w.cfg_path());
    for needle in [
        "6.6.6.6",
        "evil",
        "program x",
        "/bin/sh",
        "web#1",
        "a;b",
        "${HOME}",
        ".if",
        "port 22",
        "example.com",
        "169.254",
        "0.0.0.0",
        "fe80",
        "65536",
        // B10 (a weight of 257), as rendered: a bare "257" can be part of a random port.
        "weight 257",
        "10.0.0.9",
        "10.0.0.77",
        "outside",
        "/tmp/evil.lua",
        "host-z",
        "command",
    ] {
        assert!(
            !cfg.contains(needle),
            "{needle:?} reached haproxy.cfg:\n{cfg}"
        );
    }
    for line in cfg.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        assert!(
            !["program", "lua-load", ".if"].contains(&first),
            "registry word at the start of a line: {line}"
        );
    }
    let dup_lines = cfg
        .lines()
        .filter(|l| l.contains(" dup_127.0.0.1:"))
        .count();
    assert_eq!(dup_lines, 1, "B20: {cfg}");
    let web_servers = w.server_lines().len();
    // good-a, program, lua-load, dup (web) + s1, s2 (small).
    assert_eq!(web_servers, 6, "{cfg}");
    assert!(synapse.is_running());
    synapse.stop().await;
}
