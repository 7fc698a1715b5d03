//! Unit tests of `plan.rs`, kept apart so that the module reads in one go.

use super::*;
use proptest::prelude::*;

use crate::haproxy::answers::is_safe_command;

fn caps26() -> Capabilities {
    Capabilities::for_version(2, 6)
}

fn desired(text: &str) -> Desired {
    Desired {
        config: ConfigModel::parse(text),
        dynamic_servers: true,
    }
}

const HEAD: &str = "global\n    maxconn 10\ndefaults\n    mode http\nfrontend web\n    bind :80\n";

fn cfg(backend_lines: &str, servers: &[&str]) -> String {
    let mut t = format!("{HEAD}backend web\n    {backend_lines}\n");
    for s in servers {
        t.push_str(&format!("    server {s}\n"));
    }
    t
}

fn texts(plan: &Plan) -> Vec<String> {
    plan.commands.iter().map(ToString::to_string).collect()
}

#[test]
fn the_periodic_check_goes_through_every_backend_in_bounded_chunks() {
    let mut text = HEAD.to_owned();
    for (b, n) in [("a", 3), ("b", 0), ("c", 1), ("d", 4), ("e", 2)] {
        text.push_str(&format!("backend {b}\n    balance roundrobin\n"));
        for s in 0..n {
            text.push_str(&format!("    server s{s} 10.0.0.{s}:80\n"));
        }
    }
    let desired = desired(&text);
    let mut after: Option<String> = None;
    let mut chunks = Vec::new();
    loop {
        let (chunk, more) = next_chunk(&desired, after.as_deref(), 4);
        after = chunk.last().cloned();
        chunks.push(chunk);
        if !more {
            break;
        }
    }
    // Whole backends, each once, a chunk ending once it holds 4 servers.
    assert_eq!(chunks, [vec!["a", "b"], vec!["c", "d"], vec!["e"]]);
    // Each slice's share of the round (of 11: "b" counts as one): the slices are
    // spread over the interval by it, and a round adds up to one interval.
    let shares: Vec<f64> = chunks
        .iter()
        .map(|c| {
            chunk_share(
                &desired,
                &c.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
        })
        .collect();
    assert_eq!(shares, [4.0 / 11.0, 5.0 / 11.0, 2.0 / 11.0]);
    assert!((shares.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    assert_eq!(chunk_share(&desired, &["nope".to_owned()]), 0.0);
    assert_eq!(servers_to_check(&desired), 11);
    assert_eq!(
        next_chunk(&desired, None, 1_000),
        (
            vec!["a".into(), "b".into(), "c".into(), "d".into(), "e".into()],
            false
        )
    );
}

#[test]
fn adds_removes_reweights_and_toggles_at_runtime() {
    let before = cfg(
        "balance roundrobin",
        &[
            "a_10.0.0.1:80 10.0.0.1:80 id 1 check",
            "b_10.0.0.2:80 10.0.0.2:80 id 2 check",
        ],
    );
    let after = cfg(
        "balance roundrobin",
        &[
            "a_10.0.0.1:80 10.0.0.1:80 id 1 check weight 5 disabled",
            "c_10.0.0.3:80 10.0.0.3:80 id 3 cookie c check inter 1s",
        ],
    );
    let running = running_from(&ConfigModel::parse(&before), caps26());
    let p = plan(&running, &desired(&after));
    assert_eq!(p.reload, None);
    assert_eq!(
        texts(&p),
        [
            "set server web/a_10.0.0.1:80 state maint",
            "set server web/a_10.0.0.1:80 weight 5",
            "add server web/c_10.0.0.3:80 10.0.0.3:80 check inter 1s id 3 weight 1",
            "enable health web/c_10.0.0.3:80",
            "set server web/c_10.0.0.3:80 state ready",
            "set server web/b_10.0.0.2:80 state maint",
            "del server web/b_10.0.0.2:80",
        ]
    );
}

#[test]
fn a_freed_id_is_deleted_before_it_is_reused() {
    let running = running_from(
        &ConfigModel::parse(&cfg(
            "balance leastconn",
            &["a_10.0.0.1:80 10.0.0.1:80 id 1"],
        )),
        caps26(),
    );
    let p = plan(
        &running,
        &desired(&cfg(
            "balance leastconn",
            &["b_10.0.0.2:80 10.0.0.2:80 id 1"],
        )),
    );
    assert_eq!(
        texts(&p),
        [
            "set server web/a_10.0.0.1:80 state maint",
            "del server web/a_10.0.0.1:80",
            "add server web/b_10.0.0.2:80 10.0.0.2:80 id 1 weight 1",
            "set server web/b_10.0.0.2:80 state ready",
        ]
    );
}

#[test]
fn default_server_settings_go_with_added_servers() {
    let text = |servers: &[&str]| {
        format!(
            "{}backend web\n    default-server rise 3\n{}",
            HEAD.replace(
                "    mode http\n",
                "    mode http\n    default-server inter 2s init-addr last,libc,none\n"
            ),
            servers
                .iter()
                .map(|s| format!("    server {s}\n"))
                .collect::<String>()
        )
    };
    let running = running_from(&ConfigModel::parse(&text(&[])), caps26());
    let p = plan(&running, &desired(&text(&["a_::1:80 [::1]:80 id 4"])));
    assert_eq!(p.reload, None, "{p:?}");
    assert_eq!(
        texts(&p)[0],
        "add server web/a_::1:80 [::1]:80 inter 2s rise 3 id 4 weight 1"
    );
}

#[test]
fn what_the_runtime_api_cannot_do_needs_a_reload() {
    let base = cfg("balance source", &["a_10.0.0.1:80 10.0.0.1:80 id 1"]);
    let running = running_from(&ConfigModel::parse(&base), caps26());
    // A static algorithm: no adds, no weights; a removal is put in maintenance now.
    let p = plan(
        &running,
        &desired(&cfg("balance source", &["b_10.0.0.2:80 10.0.0.2:80 id 2"])),
    );
    assert!(
        matches!(
            p.reload,
            Some(ReloadReason::CannotAdd { .. } | ReloadReason::CannotRemove { .. })
        ),
        "{p:?}"
    );
    assert_eq!(texts(&p), ["set server web/a_10.0.0.1:80 state maint"]);
    let p = plan(
        &running,
        &desired(&cfg(
            "balance source",
            &["a_10.0.0.1:80 10.0.0.1:80 id 1 weight 3"],
        )),
    );
    assert!(matches!(p.reload, Some(ReloadReason::CannotChange { .. })));
    // Structure.
    let p = plan(
        &running,
        &desired(&base.replace("maxconn 10", "maxconn 11")),
    );
    assert_eq!(p.reload, Some(ReloadReason::Structure));
    let p = plan(
        &running,
        &desired(&base.replace("balance source", "balance first")),
    );
    assert_eq!(p.reload, Some(ReloadReason::BackendChanged("web".into())));
    let p = plan(&running, &desired(&format!("{base}backend api\n")));
    assert_eq!(p.reload, Some(ReloadReason::BackendAdded("api".into())));
    // Changed options of a server.
    let p = plan(
        &running,
        &desired(&cfg(
            "balance source",
            &["a_10.0.0.1:80 10.0.0.1:80 id 1 maxconn 3"],
        )),
    );
    assert!(matches!(p.reload, Some(ReloadReason::ServerChanged { .. })));
    // 2.4: no dynamic servers.
    let rr = cfg("balance roundrobin", &[]);
    let old = running_from(&ConfigModel::parse(&rr), Capabilities::for_version(2, 4));
    let p = plan(
        &old,
        &desired(&cfg(
            "balance roundrobin",
            &["b_10.0.0.2:80 10.0.0.2:80 id 2"],
        )),
    );
    assert!(matches!(p.reload, Some(ReloadReason::CannotAdd { .. })));
    // A backend the running HAProxy lacks.
    let mut gone = running_from(&ConfigModel::parse(&rr), caps26());
    gone.backends.clear();
    assert_eq!(
        plan(&gone, &desired(&rr)).reload,
        Some(ReloadReason::BackendNotRunning("web".into()))
    );
}

#[test]
fn cookies_need_28_only_when_a_cookie_directive_uses_them() {
    let text = |line: &str, servers: &[&str]| cfg(line, servers);
    let s = ["a_10.0.0.1:80 10.0.0.1:80 id 1 cookie a_10.0.0.1:80"];
    let running = running_from(
        &ConfigModel::parse(&text("balance roundrobin", &[])),
        caps26(),
    );
    let p = plan(&running, &desired(&text("balance roundrobin", &s)));
    assert_eq!(p.reload, None);
    assert!(!texts(&p)[0].contains("cookie"));
    let with = "cookie SRV insert";
    let running = running_from(&ConfigModel::parse(&text(with, &[])), caps26());
    let p = plan(&running, &desired(&text(with, &s)));
    assert!(matches!(p.reload, Some(ReloadReason::CannotAdd { .. })));
    let running = running_from(
        &ConfigModel::parse(&text(with, &[])),
        Capabilities::for_version(2, 8),
    );
    let p = plan(&running, &desired(&text(with, &s)));
    assert_eq!(p.reload, None);
    assert!(texts(&p)[0].ends_with("cookie a_10.0.0.1:80"));
}

// === property tests ===

/// Applies `cmd` to a model of HAProxy, as HAProxy does (or refuses it).
fn apply(running: &mut RunningState, desired: &Desired, cmd: &RuntimeCommand) {
    let b = cmd.backend().to_string();
    let s = cmd.server().to_string();
    let servers = running.servers.entry(b.clone()).or_default();
    match cmd {
        RuntimeCommand::Add {
            addr, port, args, ..
        } => {
            let words: Vec<&str> = args.iter().map(Word::as_str).collect();
            let arg = |kw: &str| -> Option<u32> {
                words
                    .iter()
                    .rposition(|w| *w == kw)
                    .and_then(|i| words.get(i + 1))
                    .and_then(|v| v.parse().ok())
            };
            let id = arg("id").expect("ids are always given");
            assert!(
                servers.values().all(|l| l.id != id),
                "id {id} in use: {cmd}"
            );
            assert!(servers
                .insert(
                    s.clone(),
                    LiveServer {
                        id,
                        addr: Some(*addr),
                        port: port.get(),
                        admin: Admin::Maint,
                        weight: arg("weight").map_or(1, |w| w as u16),
                    },
                )
                .is_none());
            let model = desired.config.backends[&b].servers[&s].clone();
            running
                .loaded
                .backends
                .get_mut(&b)
                .expect("backend")
                .servers
                .insert(s, model);
        }
        RuntimeCommand::EnableHealth { .. } => assert!(servers.contains_key(&s)),
        RuntimeCommand::SetState { state, .. } => {
            servers.get_mut(&s).expect("server").admin = match state {
                State::Ready => Admin::Ready,
                State::Maint => Admin::Maint,
            };
        }
        RuntimeCommand::SetWeight { weight, .. } => {
            servers.get_mut(&s).expect("server").weight = weight.get();
        }
        RuntimeCommand::SetAddr { addr, port, .. } => {
            let l = servers.get_mut(&s).expect("server");
            l.addr = Some(*addr);
            l.port = port.get();
        }
        RuntimeCommand::Del { .. } => {
            let l = servers.remove(&s).expect("server");
            assert_eq!(l.admin, Admin::Maint, "deleting a live server: {cmd}");
            if let Some(m) = running.loaded.backends.get_mut(&b) {
                m.servers.remove(&s);
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Srv {
    name: u8,
    ip: u8,
    port: u16,
    weight: Option<u16>,
    disabled: bool,
    check: bool,
    maxconn: Option<u8>,
}

fn srv() -> impl Strategy<Value = Srv> {
    (
        0u8..12,
        1u8..4,
        1u16..4,
        proptest::option::of(0u16..=256),
        any::<bool>(),
        any::<bool>(),
        proptest::option::of(1u8..3),
    )
        .prop_map(|(name, ip, port, weight, disabled, check, maxconn)| Srv {
            name,
            ip,
            port,
            weight,
            disabled,
            check,
            maxconn,
        })
}

/// A config with backends `web` (roundrobin) and `api` (leastconn); server ids are
/// assigned as the renderer does (stable, lowest free), from `prev` ids.
fn render(servers: &[(bool, Srv)], ids: &mut BTreeMap<(bool, String), u32>) -> String {
    let mut by_backend: BTreeMap<bool, BTreeMap<String, &Srv>> = BTreeMap::new();
    for (web, s) in servers {
        let name = format!("s{}_10.0.0.{}:{}", s.name, s.ip, s.port);
        by_backend.entry(*web).or_default().insert(name, s);
    }
    ids.retain(|(web, name), _| by_backend.get(web).is_some_and(|m| m.contains_key(name)));
    let mut text = String::from(HEAD);
    for web in [true, false] {
        let (b, algo) = if web {
            ("web", "roundrobin")
        } else {
            ("api", "leastconn")
        };
        text.push_str(&format!("backend {b}\n    balance {algo}\n"));
        for (name, s) in by_backend.get(&web).into_iter().flatten() {
            let id = match ids.get(&(web, name.clone())) {
                Some(id) => *id,
                None => {
                    let used: BTreeSet<u32> = ids
                        .iter()
                        .filter(|((w, _), _)| *w == web)
                        .map(|(_, id)| *id)
                        .collect();
                    let id = (1..).find(|i| !used.contains(i)).expect("free id");
                    ids.insert((web, name.clone()), id);
                    id
                }
            };
            text.push_str(&format!(
                "    server {name} 10.0.0.{}:{} id {id}",
                s.ip, s.port
            ));
            if s.check {
                text.push_str(" check");
            }
            if let Some(m) = s.maxconn {
                text.push_str(&format!(" maxconn {m}"));
            }
            if let Some(w) = s.weight {
                text.push_str(&format!(" weight {w}"));
            }
            if s.disabled {
                text.push_str(" disabled");
            }
            text.push('\n');
        }
    }
    text
}

fn live_view(r: &RunningState) -> LiveServers {
    r.servers
        .iter()
        .filter(|(_, s)| !s.is_empty())
        .map(|(b, s)| (b.clone(), s.clone()))
        .collect()
}

proptest! {
    #[test]
    fn plan_of_the_same_state_is_empty(servers in proptest::collection::vec((any::<bool>(), srv()), 0..10)) {
        let text = render(&servers, &mut BTreeMap::new());
        let model = ConfigModel::parse(&text);
        let running = running_from(&model, caps26());
        let p = plan(&running, &Desired { config: model, dynamic_servers: true });
        prop_assert!(p.is_empty(), "{:?}", p);
    }

    #[test]
    fn planning_each_backend_alone_gives_the_whole_plans_commands(
        before in proptest::collection::vec((any::<bool>(), srv()), 0..10),
        after in proptest::collection::vec((any::<bool>(), srv()), 0..10),
    ) {
        let mut ids = BTreeMap::new();
        let old = ConfigModel::parse(&render(&before, &mut ids));
        let new = ConfigModel::parse(&render(&after, &mut ids));
        let running = running_from(&old, caps26());
        let desired = Desired { config: new, dynamic_servers: true };
        let whole = plan(&running, &desired);
        let mut apart = Plan::default();
        for name in ["api".to_owned(), "web".to_owned()] {
            let p = plan_backends(&running.view(), &desired, [&name]);
            apart.commands.extend(p.commands);
            if let Some(why) = p.reload {
                apart.need_reload(why);
            }
        }
        prop_assert_eq!(whole, apart);
    }

    #[test]
    fn applying_the_plan_yields_the_desired_state(
        before in proptest::collection::vec((any::<bool>(), srv()), 0..10),
        after in proptest::collection::vec((any::<bool>(), srv()), 0..10),
    ) {
        let mut ids = BTreeMap::new();
        let old = ConfigModel::parse(&render(&before, &mut ids));
        let new = ConfigModel::parse(&render(&after, &mut ids));
        let mut running = running_from(&old, caps26());
        let desired = Desired { config: new.clone(), dynamic_servers: true };
        let p = plan(&running, &desired);
        for cmd in &p.commands {
            let text = cmd.to_string();
            prop_assert!(is_safe_command(&text), "{}", text);
            apply(&mut running, &desired, cmd);
        }
        if p.reload.is_none() {
            let want = running_from(&new, caps26());
            prop_assert_eq!(live_view(&running), live_view(&want));
            let again = plan(&running, &desired);
            prop_assert!(again.is_empty(), "{:?}", again);
        } else {
            // Only a changed server (options) may force a reload here.
            prop_assert!(matches!(p.reload, Some(ReloadReason::ServerChanged { .. })), "{:?}", p.reload);
        }
    }
}
