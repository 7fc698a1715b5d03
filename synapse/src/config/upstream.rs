//! airbnb/Yelp synapse configs as they are written: the rewrite of a parsed config value
//! into our shape, before serde reads it (see `common::upstream`).
//!
//! - Upstream keys that do nothing here are removed with a warning ([`TOP_IGNORED`],
//!   [`SERVICE_IGNORED`], [`DISCOVERY_IGNORED`]).
//! - Shapes upstream accepted are normalised: `services` as a list (the 2012 format, with
//!   `local_port`, `server_options` and `listen` on the service), `server_options` as a
//!   list, `listen`/`frontend`/`backend`/`shared_frontend` as one string, `hosts` as one
//!   (comma-separated) string, the first etcd watcher's `host` + `port`, a
//!   `server_order_seed` wider than 64 bits, and `discovery_multi`.
//! - A service whose discovery method (or a `multi` child's) is an upstream one this
//!   build lacks is taken out, and the file is refused with one line naming the method.
//! - A service that produces no output here (HAProxy and file output both disabled for
//!   it: Yelp's nginx-only listeners) is skipped with a warning.
//! - HAProxy 1.x-era lines in the `haproxy` section that HAProxy 2.x refuses are
//!   rewritten during validation ([`modernize_line`], [`split_section_address`]).

use common::config::join_path;
use common::upstream::{list_to_string, object_mut, string_to_list, Compat, IgnoredKey};
use serde_json::{Map, Value};

/// Discovery methods of upstream synapse (and its published forks and pull requests)
/// that this build does not implement. A method in neither list is a typo: an error.
pub const UPSTREAM_METHODS: &[&str] = &[
    "zookeeper_dns",
    "zookeeper_dns_poll",
    "zookeeper_recursive",
    "docker",
    "marathon",
    "yarn_slider",
    "serverset",
];

pub const TOP_IGNORED: &[IgnoredKey] = &[
    IgnoredKey {
        key: "statsd",
        advice: "upstream's StatsD metrics; synapse serves Prometheus metrics at /metrics on \
                 admin_listen",
    },
    IgnoredKey {
        key: "nginx",
        advice: "upstream's nginx config generator; this synapse drives HAProxy (and \
                 file_output) only",
    },
];

pub const SERVICE_IGNORED: &[IgnoredKey] = &[
    IgnoredKey {
        key: "nginx",
        advice: "upstream's per-service nginx settings; this synapse drives HAProxy (and \
                 file_output) only",
    },
    IgnoredKey {
        key: "load_test_concurrency",
        advice: "upstream's load-test cloning of a service; define the copies as services",
    },
];

pub const DISCOVERY_IGNORED: &[IgnoredKey] = &[
    IgnoredKey {
        key: "discovery_jitter",
        advice: "upstream's random delay before re-reading ZooKeeper; synapse coalesces \
                 changes (debounce, debounce_max_wait)",
    },
    // ZooKeeper discovery (issue 20).
    IgnoredKey {
        key: "retry_policy",
        advice: "upstream's ZooKeeper retry policy (then exit); synapse retries with jittered \
                 backoff and never exits over a registry outage",
    },
    IgnoredKey {
        key: "generator_config_path",
        advice: "upstream read per-service HAProxy settings from a znode; synapse takes them \
                 from its own config only (the registry may not change HAProxy settings)",
    },
    IgnoredKey {
        key: "polling_interval_sec",
        advice: "zookeeper_poll's interval; synapse watches ZooKeeper instead of polling it",
    },
];

/// Upstream's `decode` for ZooKeeper discovery: `nerve` (the default) is what synapse
/// reads; Twitter's `serverset` format is not supported.
fn zookeeper_decode(
    d: &mut serde_json::Map<String, Value>,
    path: &str,
    compat: &mut Compat,
) -> bool {
    let Some(decode) = d.remove("decode") else {
        return true;
    };
    let method = decode
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or("nerve");
    if method == "nerve" {
        compat.warn(
            join_path(path, "decode"),
            "ignored: `nerve` decoding is the only one, and the default",
        );
        true
    } else {
        compat.unsupported(
            join_path(path, "decode.method"),
            format!("`{method}` decoding of ZooKeeper nodes"),
        );
        false
    }
}

/// The etcd port of the first etcd watcher's `host`/`port` form (GoToAssist's fork).
const OLD_ETCD_PORT: u64 = 4001;

/// Rewrites a whole synapse config value.
pub fn normalize_file(value: &mut Value, compat: &mut Compat) {
    let Some(top) = value.as_object_mut() else {
        return;
    };
    compat.take_ignored(top, "", TOP_IGNORED);
    services_list_to_map(top);
    if let Some(h) = object_mut(top, "haproxy") {
        normalize_top_haproxy(h);
    }
    let has_file_output = top.contains_key("file_output");
    if let Some(services) = object_mut(top, "services") {
        let names: Vec<String> = services.keys().cloned().collect();
        for name in names {
            let path = join_path("services", &name);
            let keep = services
                .get_mut(&name)
                .is_none_or(|svc| normalize_service(svc, &path, has_file_output, compat));
            if !keep {
                services.remove(&name);
            }
        }
    }
}

/// Rewrites one service (inline, or a `service_conf_dir` file). `false`: leave it out,
/// for the reason recorded in `compat`.
pub fn normalize_service(
    value: &mut Value,
    path: &str,
    has_file_output: bool,
    compat: &mut Compat,
) -> bool {
    let Some(svc) = value.as_object_mut() else {
        return true;
    };
    discovery_multi(svc);
    let mut supported = true;
    let port_override = svc.contains_key("backend_port_override")
        || svc
            .get("haproxy")
            .is_some_and(|h| h.get("server_port_override").is_some());
    if let Some(d) = svc.get_mut("discovery") {
        let dpath = join_path(path, "discovery");
        supported = normalize_discovery(d, &dpath, compat);
        if supported && !port_override {
            dns_default_ports(d, &dpath, compat);
        }
    }
    if !supported {
        return false;
    }
    let disabled = |key: &str| {
        svc.get(key)
            .and_then(|s| s.get("disabled"))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    };
    if disabled("haproxy") && (disabled("file_output") || !has_file_output) {
        compat.warn(
            path,
            "skipped: HAProxy and file output are both disabled for it, so it has no output \
             here (upstream used such services for its nginx generator)",
        );
        return false;
    }
    compat.take_ignored(svc, path, SERVICE_IGNORED);
    if let Some(h) = object_mut(svc, "haproxy") {
        list_to_string(h, "server_options");
        for key in ["listen", "frontend", "backend", "shared_frontend"] {
            string_to_list(h, key);
        }
    }
    true
}

/// `false` when the method (or a child's) is one this build lacks.
fn normalize_discovery(value: &mut Value, path: &str, compat: &mut Compat) -> bool {
    let Some(d) = value.as_object_mut() else {
        return true;
    };
    let method = d
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if UPSTREAM_METHODS.contains(&method.as_str()) {
        compat.unsupported(join_path(path, "method"), format!("`{method}` discovery"));
        return false;
    }
    if method == "zookeeper_poll" {
        // The same reads as `zookeeper`, polled: synapse watches instead.
        compat.warn(
            join_path(path, "method"),
            "`zookeeper_poll` is read as `zookeeper`: synapse watches ZooKeeper instead of \
             polling it",
        );
        d.insert("method".to_owned(), Value::from("zookeeper"));
    }
    compat.take_ignored(d, path, DISCOVERY_IGNORED);
    if matches!(method.as_str(), "zookeeper" | "zookeeper_poll")
        && !zookeeper_decode(d, path, compat)
    {
        return false;
    }
    if let Some(Value::String(hosts)) = d.get("hosts") {
        let list = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| Value::String(h.to_owned()))
            .collect();
        d.insert("hosts".to_owned(), Value::Array(list));
    }
    if method == "etcd" && !d.contains_key("hosts") {
        old_etcd_host_port(d);
    }
    let mut supported = true;
    if let Some(watchers) = object_mut(d, "watchers") {
        let wpath = join_path(path, "watchers");
        for (name, child) in watchers.iter_mut() {
            supported &= normalize_discovery(child, &join_path(&wpath, name), compat);
        }
    }
    supported
}

/// The port of a `dns` server written as a bare name, with no port anywhere.
pub const DNS_DEFAULT_PORT: u16 = 80;

/// upstream's `dns` servers written as bare names (`"0.www.example.com"`) have no port:
/// upstream rendered `host:` and HAProxy used the port the client connected to. Here a
/// server has a port: such an entry gets port 80, with a warning. (An SRV name, an
/// object entry or a `backend_port_override` needs none of this.)
fn dns_default_ports(d: &mut Value, path: &str, compat: &mut Compat) {
    let Some(d) = d.as_object_mut() else {
        return;
    };
    if let Some(watchers) = object_mut(d, "watchers") {
        let wpath = join_path(path, "watchers");
        for (name, child) in watchers.iter_mut() {
            dns_default_ports(child, &join_path(&wpath, name), compat);
        }
        return;
    }
    if d.get("method").and_then(Value::as_str) != Some("dns") {
        return;
    }
    let Some(Value::Array(servers)) = d.get_mut("servers") else {
        return;
    };
    for (i, server) in servers.iter_mut().enumerate() {
        let Value::String(host) = server else {
            continue;
        };
        let has_port = host.starts_with('[') || host.contains(':') || host.starts_with('_');
        if !has_port {
            compat.warn(
                join_path(path, &format!("servers.{i}")),
                format!(
                    "no port: using {DNS_DEFAULT_PORT} (upstream left it to HAProxy, which used \
                     the port the client connected to); write host:port or set \
                     backend_port_override"
                ),
            );
            *host = format!("{host}:{DNS_DEFAULT_PORT}");
        }
    }
}

/// The first etcd watcher (airbnb PR #58, GoToAssist's fork) took `host` and `port`.
fn old_etcd_host_port(d: &mut Map<String, Value>) {
    let host = match d.get("host") {
        None => None,
        Some(Value::String(h)) => Some(h.clone()),
        Some(_) => return,
    };
    let port = match d.get("port") {
        None => None,
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        Some(_) => return,
    };
    if host.is_none() && port.is_none() {
        return;
    }
    if d.contains_key("port") && port.is_none() {
        return;
    }
    let host = host.unwrap_or_else(|| "127.0.0.1".to_owned());
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host
    };
    let port = port.unwrap_or(OLD_ETCD_PORT);
    d.remove("host");
    d.remove("port");
    d.insert(
        "hosts".to_owned(),
        Value::Array(vec![Value::String(format!("{host}:{port}"))]),
    );
}

/// `discovery_multi: {watchers, resolver}` makes the service's `discovery` the child
/// `primary` of a `multi` discovery with these other children (upstream's
/// `service_watcher.rb`).
fn discovery_multi(svc: &mut Map<String, Value>) {
    let Some(Value::Object(mut multi)) = svc.remove("discovery_multi") else {
        return;
    };
    let primary = svc.remove("discovery").unwrap_or(Value::Null);
    let mut watchers = match multi.remove("watchers") {
        Some(Value::Object(w)) => w,
        Some(other) => {
            // Not an object: keep it where serde reports it.
            multi.insert("watchers".to_owned(), other);
            Map::new()
        }
        None => Map::new(),
    };
    watchers.insert("primary".to_owned(), primary);
    multi.insert("method".to_owned(), Value::String("multi".to_owned()));
    multi.insert("watchers".to_owned(), Value::Object(watchers));
    svc.insert("discovery".to_owned(), Value::Object(multi));
}

/// The 2012 format: `services` is a list of services, each with its `name`, and
/// `local_port`, `server_options` and `listen` on the service itself.
fn services_list_to_map(top: &mut Map<String, Value>) {
    let Some(Value::Array(list)) = top.get("services") else {
        return;
    };
    // Every entry must be an object with a string name; otherwise serde reports the list.
    let named = list
        .iter()
        .all(|s| s.get("name").and_then(Value::as_str).is_some() && s.is_object());
    if !named {
        return;
    }
    let Some(Value::Array(list)) = top.remove("services") else {
        return;
    };
    let mut map = Map::new();
    for entry in list {
        let Value::Object(mut svc) = entry else {
            continue;
        };
        let Some(Value::String(name)) = svc.remove("name") else {
            continue;
        };
        let mut haproxy = match svc.remove("haproxy") {
            Some(Value::Object(h)) => h,
            _ => Map::new(),
        };
        for (old, new) in [
            ("local_port", "port"),
            ("server_options", "server_options"),
            ("listen", "listen"),
        ] {
            if let Some(v) = svc.remove(old) {
                haproxy.entry(new.to_owned()).or_insert(v);
            }
        }
        if !haproxy.is_empty() {
            svc.insert("haproxy".to_owned(), Value::Object(haproxy));
        }
        map.insert(name, Value::Object(svc));
    }
    top.insert("services".to_owned(), Value::Object(map));
}

fn normalize_top_haproxy(h: &mut Map<String, Value>) {
    for key in ["global", "defaults", "shared_frontend"] {
        string_to_list(h, key);
    }
    // Yelp's synapse-tools writes the MD5 of the host name: a 128-bit number, which JSON
    // readers hold as a double. Any such seed is folded into 64 bits, the same way on
    // every run.
    if let Some(Value::Number(n)) = h.get("server_order_seed") {
        if n.as_u64().is_none() {
            if let Some(f) = n.as_f64().filter(|f| f.is_finite() && *f >= 0.0) {
                let wide = f as u128;
                let folded = (wide as u64) ^ ((wide >> 64) as u64);
                h.insert("server_order_seed".to_owned(), Value::from(folded));
            }
        }
    }
}

// === HAProxy 1.x-era lines in `haproxy` sections ===

/// syslog facility names, for recognising HAProxy 1.x-era `log <facility>` lines.
const SYSLOG_FACILITIES: &[&str] = &[
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "auth2",
    "ftp", "ntp", "audit", "alert", "cron2", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
];

/// Rewrites the two legacy forms in SmartStack-era configs (the seed's among them) that
/// HAProxy 2.x refuses: `log <facility> [level]` without an address becomes
/// `log /dev/log <facility> [level]`. Other lines are returned as they are.
pub(super) fn modernize_line(line: String) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["log", facility, rest @ ..] if SYSLOG_FACILITIES.contains(facility) => {
            let mut out = format!("log /dev/log {facility}");
            for w in rest {
                out.push(' ');
                out.push_str(w);
            }
            out
        }
        _ => line,
    }
}

/// `listen stats :1937` (an address on the section line, HAProxy 1.x) becomes the
/// header `listen stats` plus a `bind :1937` line.
pub(super) fn split_section_address(header: &str) -> (String, Option<String>) {
    let words: Vec<&str> = header.split_whitespace().collect();
    match words.as_slice() {
        [kw @ ("listen" | "frontend"), name, addrs @ ..] if !addrs.is_empty() => (
            format!("{kw} {name}"),
            Some(format!("bind {}", addrs.join(" "))),
        ),
        _ => (words.join(" "), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn normalized(mut v: Value) -> (Value, Compat) {
        let mut c = Compat::default();
        normalize_file(&mut v, &mut c);
        (v, c)
    }

    #[test]
    fn discovery_multi_wraps_discovery_as_primary() {
        let (v, c) = normalized(json!({"services": {"s": {
            "discovery": {"method": "etcd", "path": "/a"},
            "discovery_multi": {"resolver": {"method": "sequential", "sequential_order": ["primary", "b"]},
                                "watchers": {"b": {"method": "ec2tag"}}}}}}));
        assert!(c.warnings.is_empty() && c.unsupported.is_empty());
        assert_eq!(
            v["services"]["s"]["discovery"],
            json!({"method": "multi",
                   "resolver": {"method": "sequential", "sequential_order": ["primary", "b"]},
                   "watchers": {"primary": {"method": "etcd", "path": "/a"},
                                "b": {"method": "ec2tag"}}})
        );
    }

    #[test]
    fn old_etcd_host_and_port() {
        let (v, _) = normalized(json!({"services": {
            "a": {"discovery": {"method": "etcd", "host": "10.0.0.1", "port": "4001", "path": "/x"}},
            "b": {"discovery": {"method": "etcd", "host": "::1"}},
            "c": {"discovery": {"method": "etcd", "host": "h", "hosts": ["h:1"]}}}}));
        assert_eq!(
            v["services"]["a"]["discovery"]["hosts"],
            json!(["10.0.0.1:4001"])
        );
        assert!(v["services"]["a"]["discovery"].get("host").is_none());
        assert_eq!(
            v["services"]["b"]["discovery"]["hosts"],
            json!(["[::1]:4001"])
        );
        // Both forms: left for serde to report `host`.
        assert_eq!(v["services"]["c"]["discovery"]["host"], json!("h"));
    }

    #[test]
    fn unsupported_children_take_the_service_out() {
        let (v, c) = normalized(json!({"services": {
            "m": {"discovery": {"method": "multi", "watchers": {
                "a": {"method": "zookeeper_dns", "hosts": "z:2181"}, "b": {"method": "etcd"}}}},
            "e": {"discovery": {"method": "etcd"}}}}));
        assert_eq!(v["services"].as_object().unwrap().len(), 1);
        assert_eq!(
            c.unsupported,
            [(
                "services.m.discovery.watchers.a.method".to_owned(),
                "`zookeeper_dns` discovery".to_owned()
            )]
        );
    }

    #[test]
    fn big_seed_is_folded_deterministically() {
        let (v, _) = normalized(
            json!({"haproxy": {"server_order_seed": 210136353548255761639276844525416927231.0}}),
        );
        let seed = v["haproxy"]["server_order_seed"].as_u64().unwrap();
        let (again, _) = normalized(
            json!({"haproxy": {"server_order_seed": 210136353548255761639276844525416927231.0}}),
        );
        assert_eq!(again["haproxy"]["server_order_seed"].as_u64(), Some(seed));
        let (small, _) = normalized(json!({"haproxy": {"server_order_seed": 7}}));
        assert_eq!(small["haproxy"]["server_order_seed"], json!(7));
    }
}
