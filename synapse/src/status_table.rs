//! `synapse status` for people. [`render`]: a summary line (readiness, the last apply and
//! reload) and one line per service (source, freshness, servers up / in maintenance /
//! quarantined, the last change, the mass-removal guard, the etcd watch), from the
//! `/status` document; `-o wide` adds one line per server. [`render_service`]: one
//! service's servers as the registry has them beside what HAProxy runs, from
//! `/status/<service>` (the `service_detail` module), with every disagreement flagged.
//!
//! Both read the JSON rather than the Rust types, so a newer `synapse status` can read an
//! older synapse, and fields added later (per-server quarantine) show when present.

use common::table::{duration, Cell, Table, Tone};
use serde_json::Value;

/// A server's state as the status document gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerState {
    Up,
    Maint,
    Quarantined,
}

/// `server`'s state; `service` may list quarantined servers by name.
fn server_state(service: &Value, server: &Value) -> ServerState {
    let name = server["name"].as_str().unwrap_or("");
    let listed = service["quarantined"].as_array().is_some_and(|q| {
        q.iter()
            .any(|e| e.as_str() == Some(name) || e["name"].as_str() == Some(name))
    });
    let state = server["state"].as_str();
    if listed || server["quarantined"] == true || state == Some("quarantined") {
        ServerState::Quarantined
    } else if server["maint"] == true || state == Some("maint") {
        ServerState::Maint
    } else {
        ServerState::Up
    }
}

/// `server`'s state in the registry's view, in words: `up`, `maint` or `quarantined`.
pub(crate) fn registry_state(service: &Value, server: &Value) -> &'static str {
    match server_state(service, server) {
        ServerState::Up => "up",
        ServerState::Maint => "maint",
        ServerState::Quarantined => "quarantined",
    }
}

/// Whether the document says anything about quarantine for `service`.
fn knows_quarantine(service: &Value) -> bool {
    service.get("quarantined").is_some()
        || service["servers"].as_array().is_some_and(|s| {
            s.iter()
                .any(|v| v.get("quarantined").is_some() || v["state"] == "quarantined")
        })
}

fn event(e: &Value) -> Option<String> {
    let method = e["method"].as_str()?;
    let ago = e["seconds_ago"]
        .as_f64()
        .map_or_else(String::new, |s| format!(" {} ago", duration(s)));
    Some(format!("{}{ago}", method.replace('_', " ")))
}

/// The `synapse status` table for the `/status` document `doc`.
pub fn render(doc: &Value, wide: bool, colour: bool) -> Result<String, String> {
    let services = doc
        .get("services")
        .and_then(Value::as_object)
        .ok_or("the status document has no `services`")?;
    let outputs = &doc["outputs"];
    let mut out = format!(
        "synapse  {}",
        if doc["ready"] == true {
            Tone::Good.paint("ready", colour)
        } else {
            Tone::Warn.paint("not ready", colour)
        }
    );
    if let Some(apply) = event(&outputs["last_apply"]) {
        out.push_str(&format!("  last apply: {apply}"));
    }
    let reload = event(&outputs["last_reload"]).unwrap_or_else(|| "none".to_owned());
    out.push_str(&format!("  last reload: {reload}"));
    if outputs["reload_pending"] == true {
        out.push_str(&format!("  {}", Tone::Warn.paint("reload pending", colour)));
    }
    out.push_str("\n\n");

    let mut table = Table::new(&[
        "service",
        "source",
        "freshness",
        "servers",
        "up",
        "maint",
        "quar",
        "last change",
        "guard",
        "etcd",
    ]);
    for (name, s) in services {
        let source = match s["source"].as_str() {
            None => Cell::new("-", Tone::Dim),
            Some("last_known_good") => Cell::new("last-known-good", Tone::Warn),
            Some(other) => Cell::from(other),
        };
        let freshness = match s["fresh"].as_bool() {
            None => Cell::new("-", Tone::Dim),
            Some(true) => Cell::new("fresh", Tone::Good),
            Some(false) => Cell::new(
                match s["stale_seconds"].as_f64() {
                    Some(secs) => format!("stale {}", duration(secs)),
                    None => "stale".to_owned(),
                },
                Tone::Bad,
            ),
        };
        let servers = s["servers"].as_array().map_or(&[][..], Vec::as_slice);
        let count = |state| {
            servers
                .iter()
                .filter(|v| server_state(s, v) == state)
                .count()
        };
        let applied = s["applied"] == true;
        let number = |n: usize, bad: Tone| {
            if !applied {
                Cell::new("-", Tone::Dim)
            } else if n == 0 {
                Cell::from("0")
            } else {
                Cell::new(n.to_string(), bad)
            }
        };
        let up = count(ServerState::Up);
        let quarantined = if knows_quarantine(s) {
            // Quarantined servers are listed beside `servers`, not in it.
            let listed = s["quarantined"].as_array().map_or(0, Vec::len);
            number(listed.max(count(ServerState::Quarantined)), Tone::Warn)
        } else {
            Cell::new("-", Tone::Dim)
        };
        let row = vec![
            Cell::from(name.as_str()),
            source,
            freshness,
            if applied {
                Cell::from(servers.len().to_string())
            } else {
                Cell::new("-", Tone::Dim)
            },
            if applied && up == 0 {
                Cell::new("0", Tone::Bad)
            } else {
                number(up, Tone::Plain)
            },
            number(count(ServerState::Maint), Tone::Warn),
            quarantined,
            event(&s["last_change"]).map_or_else(|| Cell::new("-", Tone::Dim), Cell::from),
            guard(&s["guard"]),
            etcd(&s["etcd"], wide),
        ];
        table.row(row);
    }
    if table.is_empty() {
        out.push_str("no services\n");
        return Ok(out);
    }
    out.push_str(&table.render(colour));
    // HAProxy's reason for each quarantined server: the line an operator needs first.
    for (name, s) in services {
        for q in s["quarantined"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "quarantined: {name}/{}: {}\n",
                q["name"].as_str().unwrap_or("?"),
                q["error"].as_str().unwrap_or("refused by HAProxy")
            ));
        }
    }
    if wide {
        let mut servers = Table::new(&[
            "service", "server", "host", "port", "state", "weight", "backup",
        ]);
        for (name, s) in services {
            for v in s["servers"].as_array().into_iter().flatten() {
                let state = match server_state(s, v) {
                    ServerState::Up => Cell::new("up", Tone::Good),
                    ServerState::Maint => Cell::new("maint", Tone::Warn),
                    ServerState::Quarantined => Cell::new("quarantined", Tone::Warn),
                };
                servers.row(vec![
                    Cell::from(name.as_str()),
                    Cell::from(v["name"].as_str().unwrap_or("?")),
                    Cell::from(v["host"].as_str().unwrap_or("?")),
                    Cell::from(v["port"].as_u64().map_or("?".into(), |p| p.to_string())),
                    state,
                    Cell::from(v["weight"].as_u64().map_or("-".into(), |w| w.to_string())),
                    Cell::from(if v["backup"] == true { "yes" } else { "no" }),
                ]);
            }
        }
        if !servers.is_empty() {
            out.push('\n');
            out.push_str(&servers.render(colour));
        }
    }
    Ok(out)
}

fn guard(g: &Value) -> Cell {
    if g.is_null() {
        return Cell::new("-", Tone::Dim);
    }
    if g["enabled"] == false {
        return Cell::new("off", Tone::Dim);
    }
    if g["holding"] == true {
        let left = g["hold_seconds_left"]
            .as_f64()
            .map_or_else(String::new, |s| format!(" {}", duration(s)));
        return Cell::new(format!("holding{left}"), Tone::Bad);
    }
    Cell::new("armed", Tone::Good)
}

fn etcd(e: &Value, wide: bool) -> Cell {
    let Some(state) = e["state"].as_str() else {
        return Cell::new("-", Tone::Dim);
    };
    let mut text = match e["revision"].as_i64() {
        Some(rev) => format!("{state} @{rev}"),
        None => state.to_owned(),
    };
    if wide {
        if let Some(err) = e["last_error"].as_str() {
            text.push_str(&format!(" ({err})"));
        }
    }
    let tone = match state {
        "watching" => Tone::Good,
        "retrying" => Tone::Bad,
        _ => Tone::Warn,
    };
    Cell::new(text, tone)
}

/// The `synapse status <service>` table for the `/status/<service>` document `doc`: each
/// server as the registry (what synapse applied) and HAProxy (runtime API) have it, and
/// whether they agree.
pub fn render_service(doc: &Value, wide: bool, colour: bool) -> Result<String, String> {
    let servers = doc
        .get("servers")
        .and_then(Value::as_array)
        .ok_or("the service document has no `servers`")?;
    let mut out = format!(
        "service {}  backend {}",
        doc["service"].as_str().unwrap_or("?"),
        doc["backend"].as_str().unwrap_or("-"),
    );
    if let Some(err) = doc["haproxy_error"].as_str() {
        out.push_str(&format!(
            "  {}",
            Tone::Bad.paint(&format!("HAProxy unreadable: {err}"), colour)
        ));
    }
    out.push_str("\n\n");
    let mut header = vec!["server", "address", "registry", "haproxy", "weight", ""];
    if wide {
        header.insert(5, "haproxy id");
    }
    let mut table = Table::new(&header);
    let mut disagreements = 0;
    for v in servers {
        let registry = match v["registry"].as_str() {
            Some("absent") | None => Cell::new("absent", Tone::Dim),
            Some(state @ "up") => Cell::new(state, Tone::Good),
            Some(state) => Cell::new(state, Tone::Warn),
        };
        let haproxy = match v["haproxy"].as_str() {
            None | Some("absent") => Cell::new("absent", Tone::Dim),
            Some(state) if state.starts_with("UP") => Cell::new(state, Tone::Good),
            Some(state) if state.starts_with("DOWN") => Cell::new(state, Tone::Bad),
            Some(state) => Cell::new(state, Tone::Warn),
        };
        let problem = v["disagreement"].as_str();
        disagreements += usize::from(problem.is_some());
        let mut row = vec![
            Cell::from(v["name"].as_str().unwrap_or("?")),
            Cell::from(v["address"].as_str().unwrap_or("-")),
            registry,
            haproxy,
            Cell::from(v["weight"].as_u64().map_or("-".into(), |w| w.to_string())),
        ];
        if wide {
            row.push(Cell::from(
                v["haproxy_id"]
                    .as_u64()
                    .map_or("-".into(), |w| w.to_string()),
            ));
        }
        row.push(match (problem, v["error"].as_str()) {
            (Some(p), _) => Cell::new(format!("! {p}"), Tone::Bad),
            // A quarantined server: HAProxy's reason for refusing it.
            (None, Some(e)) => Cell::new(format!("HAProxy refuses it: {e}"), Tone::Warn),
            (None, None) => Cell::from(""),
        });
        table.row(row);
    }
    if table.is_empty() {
        out.push_str("no servers\n");
    } else {
        out.push_str(&table.render(colour));
    }
    out.push('\n');
    out.push_str(&match disagreements {
        0 => Tone::Good.paint("registry and HAProxy agree", colour),
        n => Tone::Bad.paint(
            &format!(
                "{n} disagreement{} between the registry and HAProxy",
                if n == 1 { "" } else { "s" }
            ),
            colour,
        ),
    });
    out.push('\n');
    Ok(out)
}
