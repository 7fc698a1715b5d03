//! `/status/<service>` on the admin endpoint, behind `synapse status <service>`: each
//! server of one service as the registry has it (what synapse applied, from
//! [`crate::status`]) beside what HAProxy runs (its runtime API, `show servers state`),
//! and where the two disagree: a server HAProxy serves that the registry does not have,
//! or one the registry has that HAProxy does not serve. A server slot HAProxy keeps in
//! maintenance for a removed server is not a disagreement (synapse parks removed
//! servers that way); a server HAProxy's own health check marks down is shown, not
//! flagged (the check is HAProxy's verdict, not a difference of sets).

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::config::Config;
use crate::counters::Counters;
use crate::haproxy::answers::{parse_servers_state, Admin, LiveServer};
use crate::haproxy::runtime::Session;

/// The document for `service`; `None` if synapse has no such service.
pub async fn document(config: &Config, counters: &Counters, service: &str) -> Option<Value> {
    let svc = config
        .services
        .values()
        .find(|s| s.name.as_str() == service)?;
    let status = counters.services.snapshot();
    let registry: Vec<Value> = status
        .services
        .get(service)
        .map(|s| {
            let doc = serde_json::to_value(s).unwrap_or_default();
            doc["servers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|mut server| {
                    server["state"] = json!(crate::status_table::registry_state(&doc, &server));
                    server
                })
                // Quarantined servers are left out of `servers`: list them with HAProxy's
                // reason, so a refused registration is visible beside what HAProxy runs.
                .chain(doc["quarantined"].as_array().into_iter().flatten().map(
                    |q| json!({"name": q["name"], "state": "quarantined", "error": q["error"]}),
                ))
                .collect()
        })
        .unwrap_or_default();
    let backend = svc.backend_name();
    let live = if svc.haproxy.disabled {
        Err("the service's haproxy section is disabled: HAProxy does not route it".to_owned())
    } else {
        haproxy(config, &backend).await
    };
    let (live, error) = match live {
        Ok(live) => (live, None),
        Err(e) => (BTreeMap::new(), Some(e)),
    };
    let mut doc = json!({
        "service": service,
        "backend": backend,
        "servers": compare(&registry, &live, error.is_none()),
    });
    if let Some(e) = error {
        doc["haproxy_error"] = json!(e);
    }
    Some(doc)
}

/// One backend's servers as HAProxy runs them: name → (server, operational state).
type Live = BTreeMap<String, (LiveServer, Option<u32>)>;

async fn haproxy(config: &Config, backend: &str) -> Result<Live, String> {
    let h = config
        .haproxy
        .as_ref()
        .ok_or("synapse has no HAProxy output here")?;
    let path = h
        .socket_file_paths
        .first()
        .ok_or("no socket_file_path: HAProxy's runtime API is not configured")?;
    let mut session = Session::open(path).await.map_err(|e| e.to_string())?;
    let text = session
        .servers_state_raw()
        .await
        .map_err(|e| e.to_string())?;
    let mut servers = parse_servers_state(&text)?;
    let ops = op_states(&text, backend);
    Ok(servers
        .remove(backend)
        .unwrap_or_default()
        .into_iter()
        .map(|(name, s)| {
            let op = ops.get(&name).copied();
            (name, (s, op))
        })
        .collect())
}

/// `srv_op_state` (0 stopped, 1 starting, 2 running, 3 stopping) per server of `backend`
/// in a `show servers state` answer.
fn op_states(text: &str, backend: &str) -> BTreeMap<String, u32> {
    let mut lines = text.lines().skip(1);
    let Some(columns) = lines.next().and_then(|h| h.strip_prefix('#')) else {
        return BTreeMap::new();
    };
    let columns: Vec<&str> = columns.split_whitespace().collect();
    let at = |name: &str| columns.iter().position(|c| *c == name);
    let (Some(be), Some(srv), Some(op)) = (at("be_name"), at("srv_name"), at("srv_op_state"))
    else {
        return BTreeMap::new();
    };
    lines
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(be) == Some(&backend))
                .then(|| Some((f.get(srv)?.to_string(), f.get(op)?.parse().ok()?)))
                .flatten()
        })
        .collect()
}

/// What HAProxy does with a server, in words.
fn haproxy_state(server: &LiveServer, op: Option<u32>) -> String {
    match (server.admin, op) {
        (Admin::Maint, _) => "MAINT".into(),
        (Admin::Drain, _) => "DRAIN".into(),
        (Admin::Ready, Some(0)) => "DOWN".into(),
        (Admin::Ready, Some(1)) => "UP (starting)".into(),
        (Admin::Ready, Some(3)) => "UP (stopping)".into(),
        (Admin::Ready, _) => "UP".into(),
    }
}

/// The servers of both sides, by name, with the disagreements.
fn compare(registry: &[Value], live: &Live, haproxy_known: bool) -> Vec<Value> {
    let mut names: Vec<&str> = registry.iter().filter_map(|s| s["name"].as_str()).collect();
    names.extend(live.keys().map(String::as_str));
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let reg = registry.iter().find(|s| s["name"] == name);
            let run = live.get(name);
            let reg_state = reg.and_then(|s| s["state"].as_str()).unwrap_or("absent");
            let serving = run.is_some_and(|(s, _)| s.admin != Admin::Maint);
            let disagreement = match (reg_state, run) {
                _ if !haproxy_known => None,
                ("up", None) => Some("registered, but HAProxy does not have it"),
                ("up", Some(_)) if !serving => Some("registered, but HAProxy keeps it in MAINT"),
                ("absent", Some(_)) if serving => Some("HAProxy serves it; the registry does not have it"),
                (_, Some(_)) if serving && reg_state != "up" => {
                    Some("held out by synapse, but HAProxy serves it")
                }
                _ => None,
            };
            let address = match (reg, run) {
                (Some(s), _) => format!(
                    "{}:{}",
                    s["host"].as_str().unwrap_or("?"),
                    s["port"].as_u64().unwrap_or(0)
                ),
                (None, Some((s, _))) => s
                    .addr
                    .map_or_else(|| "-".to_owned(), |a| format!("{a}:{}", s.port)),
                (None, None) => "-".to_owned(),
            };
            let address = if reg.is_some_and(|s| s["host"].is_null()) && run.is_none() {
                "-".to_owned()
            } else {
                address
            };
            json!({
                "name": name,
                "address": address,
                "registry": reg_state,
                "haproxy": run.map_or_else(|| "absent".to_owned(), |(s, op)| haproxy_state(s, *op)),
                "haproxy_id": run.map(|(s, _)| s.id),
                "weight": run.map(|(s, _)| s.weight).or_else(|| reg.and_then(|s| s["weight"].as_u64()).and_then(|w| u16::try_from(w).ok())),
                "disagreement": disagreement,
                "error": reg.map_or(&Value::Null, |s| &s["error"]),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(id: u32, admin: Admin, op: u32) -> (LiveServer, Option<u32>) {
        (
            LiveServer {
                id,
                addr: "127.0.0.1".parse().ok(),
                port: 8000 + id as u16,
                admin,
                weight: 1,
            },
            Some(op),
        )
    }

    #[test]
    fn disagreements_are_flagged_both_ways_and_parked_slots_are_not() {
        let registry = vec![
            json!({"name": "a_127.0.0.1:8001", "host": "127.0.0.1", "port": 8001, "state": "up"}),
            json!({"name": "b_127.0.0.1:8002", "host": "127.0.0.1", "port": 8002, "state": "up"}),
        ];
        let running: Live = [
            ("a_127.0.0.1:8001".to_owned(), live(1, Admin::Ready, 2)),
            ("c_127.0.0.1:8003".to_owned(), live(3, Admin::Ready, 2)),
            ("d_127.0.0.1:8004".to_owned(), live(4, Admin::Maint, 0)),
        ]
        .into();
        let rows = compare(&registry, &running, true);
        let by = |n: &str| {
            rows.iter()
                .find(|r| r["name"].as_str().unwrap().starts_with(n))
                .unwrap()
        };
        assert_eq!(by("a")["disagreement"], Value::Null);
        assert_eq!(by("a")["haproxy"], "UP");
        assert!(by("b")["disagreement"]
            .as_str()
            .unwrap()
            .contains("does not have"));
        assert!(by("c")["disagreement"]
            .as_str()
            .unwrap()
            .contains("registry does not"));
        assert_eq!(by("d")["disagreement"], Value::Null, "a parked slot");
        assert_eq!(by("d")["haproxy"], "MAINT");
        // Held out (quarantined) in the registry's view, yet served.
        let held = vec![json!({"name": "a_127.0.0.1:8001", "state": "quarantined"})];
        let rows = compare(&held, &running, true);
        assert!(rows[0]["disagreement"]
            .as_str()
            .unwrap()
            .contains("held out"));
        // HAProxy unreadable: nothing is flagged.
        let rows = compare(&registry, &Live::new(), false);
        assert!(rows.iter().all(|r| r["disagreement"].is_null()));
    }

    #[test]
    fn op_states_come_from_the_same_answer() {
        let text = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state\n\
                    3 web 1 a 127.0.0.1 2 0\n3 web 2 b 127.0.0.1 0 0\n4 api 1 a 127.0.0.1 0 0\n";
        let ops = op_states(text, "web");
        assert_eq!(ops.get("a"), Some(&2));
        assert_eq!(ops.get("b"), Some(&0));
        assert_eq!(ops.len(), 2);
    }
}
