//! Fuzz harness bodies (reliability §4.4, F1 and F3): plain functions over bytes, called
//! by the `cargo fuzz` targets in `fuzz/` and by the corpus replay test in regular
//! `cargo test`. Each panics when an oracle fails.

use std::collections::{BTreeMap, BTreeSet};

use common::{AddressPolicy, Registration};

use crate::backends::{Backend, BackendSet};
use crate::config::Config;
use crate::haproxy::config::{check_grammar, render, wanted_servers, ServerIds};
use crate::resolution::{resolve, Resolution};

/// Arbitrary bytes as a synapse config file: never panics; an accepted config keeps its
/// invariants (at least one service, `max_servers` ≥ 1, a guard fraction in (0, 1)).
pub fn check_config_synapse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = Config::parse(text, None) {
        assert!(!c.services.is_empty());
        assert!(c.debounce_max_wait >= c.debounce);
        for s in c.services.values() {
            assert!(s.max_servers >= 1);
            let f = s.mass_removal_guard.max_removed_fraction;
            assert!(f > 0.0 && f < 1.0);
        }
    }
}

/// A service config the render harness routes registrations into.
const RENDER_CONFIG: &str = r#"{
  "services": {"web": {"discovery": {"method": "etcd", "path": "/nerve/v1/services/web"},
                       "haproxy": {"port": 8080, "server_options": "check inter 500",
                                   "listen": ["balance roundrobin"]}}},
  "haproxy": {"config_file_path": "/tmp/fuzz-haproxy.cfg", "do_reloads": false,
              "global": ["daemon"], "defaults": ["mode http", "timeout connect 1s"]}
}"#;

/// Values separated by `\n\0\n`, each decoded as a registration; the accepted ones are
/// rendered. Never panics; the output passes the renderer's own line grammar; exactly
/// one `server` line per distinct server name; no registry byte outside the safe
/// charset on a server line; the same set in another order renders the same bytes.
/// Returns the number of servers rendered.
pub fn check_render(data: &[u8]) -> usize {
    let Ok(config) = Config::parse(RENDER_CONFIG, None) else {
        panic!("the render harness config is invalid");
    };
    let Some(h) = config.haproxy.as_ref() else {
        panic!("the render harness config has no haproxy section");
    };
    let policy = AddressPolicy::default();
    let mut accepted: Vec<Backend> = Vec::new();
    for value in split(data).take(256) {
        if let Ok(r) = Registration::decode(value) {
            if policy.check(&r.host).is_ok() {
                accepted.push(Backend::from(r));
            }
        }
    }
    let mut outputs = Vec::new();
    let mut rendered = 0;
    for order in [false, true] {
        let discovered: BackendSet = if order {
            accepted.iter().rev().cloned().collect()
        } else {
            accepted.iter().cloned().collect()
        };
        let mut backends = BTreeMap::new();
        for (name, svc) in &config.services {
            let set = match resolve(svc, &discovered, false) {
                Resolution::Use(set) => set,
                Resolution::KeepPrevious | Resolution::OverLimit { .. } => BackendSet::new(),
            };
            backends.insert(name.clone(), set);
        }
        let mut ids = ServerIds::default();
        ids.assign(&wanted_servers(&config.services, &backends), 65_535);
        let text = render(h, &config.services, &backends, &ids).expect("render");
        check_grammar(&text, h).expect("rendered config breaks the line grammar");
        let servers: Vec<&str> = text
            .lines()
            .filter(|l| l.trim_start().starts_with("server "))
            .collect();
        let want: usize = backends.values().map(BTreeSet::len).sum();
        assert_eq!(servers.len(), want, "server lines vs servers:\n{text}");
        rendered = want;
        for line in &servers {
            assert!(
                !line.bytes().any(|b| b"#$\"'\\;".contains(&b) || b < 0x20),
                "unsafe byte in {line:?}"
            );
        }
        outputs.push(text);
    }
    assert_eq!(outputs[0], outputs[1], "render depends on input order");
    rendered
}

fn split(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        match rest.windows(3).position(|w| w == b"\n\0\n") {
            Some(i) => {
                let (item, tail) = (&rest[..i], &rest[i + 3..]);
                rest = tail;
                Some(item)
            }
            None => Some(std::mem::take(&mut rest)),
        }
    })
}
