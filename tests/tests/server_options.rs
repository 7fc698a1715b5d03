//! `haproxy_server_options` against the real HAProxy: whatever the allow-list accepts,
//! `haproxy -c` and the runtime `add server` accept too (issue 17). The option strings
//! are generated (keywords with edge and random arguments, some out of range on purpose);
//! the accepted ones are rendered as synapse renders them and checked in batches of a
//! few hundred servers per `haproxy -c` run.

use std::time::Duration;

use common::ServerOptions;
use integration_tests::haproxy::{check_config, preamble};
use integration_tests::{eventually, Haproxy, HaproxyOptions, Workdir};
use proptest::prelude::*;
use std::cell::Cell;

use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};

/// Strings per `haproxy -c` run.
const BATCH: usize = 300;
/// `haproxy -c` runs.
const BATCHES: u32 = 12;

/// One `keyword argument` pair (or a bare flag), arguments drawn from each keyword's
/// edges, just past them, and at random, with and without a time unit.
fn option_words() -> impl Strategy<Value = String> {
    let number = prop_oneof![
        Just("0".to_owned()),
        Just("1".to_owned()),
        Just("-1".to_owned()),
        Just("256".to_owned()),
        Just("257".to_owned()),
        Just("1000".to_owned()),
        Just("1001".to_owned()),
        Just("65535".to_owned()),
        Just("2147483647".to_owned()),
        Just("2147483648".to_owned()),
        Just("4294967295".to_owned()),
        Just("86400000".to_owned()),
        Just("86400001".to_owned()),
        any::<u32>().prop_map(|n| n.to_string()),
        (0u32..3000).prop_map(|n| n.to_string()),
    ];
    let unit = prop_oneof![
        Just(""),
        Just("ms"),
        Just("s"),
        Just("m"),
        Just("h"),
        Just("us"),
        Just("d")
    ];
    let time = (number.clone(), unit).prop_map(|(n, u)| format!("{n}{u}"));
    prop_oneof![
        Just("backup".to_owned()),
        Just("check".to_owned()),
        Just("disabled".to_owned()),
        number.clone().prop_map(|n| format!("weight {n}")),
        number.clone().prop_map(|n| format!("maxconn {n}")),
        number.clone().prop_map(|n| format!("rise {n}")),
        number.prop_map(|n| format!("fall {n}")),
        time.clone().prop_map(|t| format!("inter {t}")),
        time.prop_map(|t| format!("slowstart {t}")),
    ]
}

fn option_string() -> impl Strategy<Value = String> {
    proptest::collection::vec(option_words(), 1..5).prop_map(|w| w.join(" "))
}

/// A backend of one server per option string, as synapse renders a registration's
/// options (`ServerOptions`' display form).
fn config(socket: &std::path::Path, options: &[ServerOptions]) -> String {
    let mut text = preamble(socket);
    text.push_str("backend be\n    balance roundrobin\n");
    for (i, o) in options.iter().enumerate() {
        text.push_str(&format!("    server s{i} 127.0.0.1:{} {o}\n", 1000 + i));
    }
    text
}

#[test]
fn every_accepted_option_string_passes_haproxy_check() {
    let dir = Workdir::new();
    let socket = dir.join("stats.sock");
    let path = dir.join("haproxy.cfg");
    // The check can fail: an out-of-range value written as HAProxy takes it is refused.
    std::fs::write(
        &path,
        format!(
            "{}backend be\n    server s 127.0.0.1:1 inter 0\n",
            preamble(&socket)
        ),
    )
    .expect("write");
    assert!(check_config(&path).is_err(), "haproxy -c accepted inter 0");

    let mut runner = TestRunner::new(Config {
        cases: BATCHES,
        failure_persistence: None,
        ..Config::default()
    });
    let (accepted, refused) = (Cell::new(0usize), Cell::new(0usize));
    runner
        .run(
            &proptest::collection::vec(option_string(), BATCH),
            |strings| {
                let ok: Vec<(String, ServerOptions)> = strings
                    .into_iter()
                    .filter_map(|s| ServerOptions::parse(&s).ok().map(|o| (s, o)))
                    .collect();
                accepted.set(accepted.get() + ok.len());
                refused.set(refused.get() + BATCH - ok.len());
                let options: Vec<ServerOptions> = ok.iter().map(|(_, o)| o.clone()).collect();
                std::fs::write(&path, config(&socket, &options)).expect("write");
                if let Err(out) = check_config(&path) {
                    let listed: Vec<String> = ok
                        .iter()
                        .enumerate()
                        .map(|(i, (s, o))| format!("s{i}: {s:?} -> {o}"))
                        .collect();
                    return Err(TestCaseError::fail(format!(
                        "haproxy -c refused options we accept:\n{out}\n{}",
                        listed.join("\n")
                    )));
                }
                Ok(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
    // The generator reaches both sides of the ranges.
    let (accepted, refused) = (accepted.get(), refused.get());
    println!(
        "{BATCHES} haproxy -c runs: {accepted} accepted option strings passed, {refused} refused by the parser"
    );
    assert!(
        accepted > 500 && refused > 500,
        "accepted {accepted}, refused {refused}"
    );
}

/// The runtime API is the other place HAProxy reads the options: every accepted string
/// is also accepted by `add server` (synapse's runtime path).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_option_string_is_accepted_by_add_server() {
    let dir = Workdir::new();
    let socket = dir.join("stats.sock");
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config(&socket, &[])).expect("write");
    let haproxy = Haproxy::start(HaproxyOptions::new(&path).stats_socket(&socket)).await;
    let mut runner = TestRunner::new(Config {
        cases: 1,
        failure_persistence: None,
        ..Config::default()
    });
    let strings = proptest::collection::vec(option_string(), BATCH)
        .new_tree(&mut runner)
        .expect("generate")
        .current();
    let mut added = 0;
    for (i, s) in strings.iter().enumerate() {
        let Ok(o) = ServerOptions::parse(s) else {
            continue;
        };
        let cmd = format!("add server be/s{i} 127.0.0.1:{} {o}", 1000 + i);
        let answer = haproxy.command(&cmd).await.expect("runtime API");
        assert_eq!(
            answer.trim(),
            "New server registered.",
            "{cmd} (from {s:?})"
        );
        added += 1;
    }
    println!("add server: {added} accepted option strings, all registered");
    assert!(added > 20, "only {added} accepted");
    // The servers are really there.
    eventually(Duration::from_secs(10), || async {
        haproxy
            .show_servers_state("be")
            .await
            .is_ok_and(|s| s.len() == added)
    })
    .await;
}
