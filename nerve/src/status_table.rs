//! `nerve status` for people: a summary line (instance, etcd connection, lease) and one
//! line per service (health, registered or not, the lease TTL left on its key, the last
//! check), from the `/status` document ([`crate::status::Status`] as JSON). Reads the
//! JSON rather than the Rust type, so a newer `nerve status` can read an older nerve.

use common::table::{Cell, Table, Tone};
use serde_json::Value;

/// Longest last-check text in the narrow table (`-o wide` shows it whole).
const CHECK_WIDTH: usize = 60;

/// The table for `doc`; `wide` adds each service's etcd path and keys.
pub fn render(doc: &Value, wide: bool, colour: bool) -> Result<String, String> {
    let services = doc
        .get("services")
        .and_then(Value::as_object)
        .ok_or("the status document has no `services`")?;
    let registry = &doc["registry"];
    let connected = registry["connected"].as_bool().unwrap_or(false);
    let ttl_left = registry["lease_ttl_left_secs"].as_u64();
    let keys: Vec<(&str, &str)> = registry["keys"]
        .as_object()
        .map(|k| {
            k.iter()
                .map(|(key, svc)| (key.as_str(), svc.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();

    let mut out = format!(
        "nerve {}  etcd {}",
        doc["instance_id"].as_str().unwrap_or("?"),
        if connected {
            Tone::Good.paint("connected", colour)
        } else {
            Tone::Bad.paint("disconnected", colour)
        }
    );
    match registry["lease_id"].as_i64() {
        Some(id) => {
            out.push_str(&format!("  lease {id:016x}"));
            if let Some(left) = ttl_left {
                out.push_str(&format!(" {left}s left"));
            }
            if let Some(ttl) = registry["lease_ttl_secs"].as_u64() {
                out.push_str(&format!(" (TTL {ttl}s)"));
            }
        }
        None => out.push_str(&format!("  lease {}", Tone::Warn.paint("none", colour))),
    }
    out.push_str(&format!("  {} keys\n", keys.len()));
    // ZooKeeper sessions (issue 20), one line each; absent from older documents.
    let mut zk_nodes: Vec<(String, String)> = Vec::new();
    if let Some(sessions) = doc.get("zookeeper").and_then(Value::as_object) {
        for (ensemble, z) in sessions {
            let state = if z["connected"].as_bool().unwrap_or(false) {
                Tone::Good.paint("connected", colour)
            } else {
                Tone::Bad.paint("disconnected", colour)
            };
            let nodes = z["nodes"].as_object();
            out.push_str(&format!("zookeeper {ensemble} {state}"));
            if let Some(id) = z["session_id"].as_str() {
                out.push_str(&format!("  session {id}"));
                if let Some(age) = z["session_age_secs"].as_u64() {
                    out.push_str(&format!(" {age}s old"));
                }
            }
            out.push_str(&format!(
                "  {} expirations  {} nodes\n",
                z["expirations"].as_u64().unwrap_or(0),
                nodes.map_or(0, serde_json::Map::len)
            ));
            for (node, svc) in nodes.into_iter().flatten() {
                zk_nodes.push((node.clone(), svc.as_str().unwrap_or("").to_owned()));
            }
        }
    }
    out.push('\n');

    let mut header = vec!["service", "health", "registered", "lease ttl", "last check"];
    if wide {
        header.extend(["etcd path", "keys"]);
    }
    let mut table = Table::new(&header);
    for (name, s) in services {
        let flag = |k: &str| s[k].as_bool().unwrap_or(false);
        let mut health = if flag("drained") {
            Cell::new("drained", Tone::Warn)
        } else if flag("healthy") {
            Cell::new("healthy", Tone::Good)
        } else {
            Cell::new("unhealthy", Tone::Bad)
        };
        if flag("replacing") {
            health.text.push_str(" (replacing)");
        }
        let own: Vec<&str> = keys
            .iter()
            .copied()
            .chain(zk_nodes.iter().map(|(k, s)| (k.as_str(), s.as_str())))
            .filter(|(_, svc)| svc == name)
            .map(|(k, _)| k)
            .collect();
        let registered = match (own.is_empty(), flag("reported")) {
            (false, _) => Cell::new("yes", Tone::Good),
            (true, true) => Cell::new("pending", Tone::Warn),
            (true, false) => Cell::new("no", Tone::Dim),
        };
        // The lease is etcd's: a service registered only in ZooKeeper has none.
        let in_etcd = keys.iter().any(|(_, svc)| svc == name);
        let lease = match ttl_left {
            Some(left) if in_etcd => format!("{left}s"),
            _ => "-".to_owned(),
        };
        let last_check = match s["last_check"].as_str() {
            None => Cell::new("-", Tone::Dim),
            Some(text @ ("ok" | "no checks")) => Cell::new(text, Tone::Good),
            Some(text) if wide => Cell::new(text, Tone::Bad),
            Some(text) => Cell::new(shorten(text, CHECK_WIDTH), Tone::Bad),
        };
        let mut row = vec![
            Cell::from(name.as_str()),
            health,
            registered,
            lease.into(),
            last_check,
        ];
        if wide {
            row.push(s["etcd_path"].as_str().unwrap_or("-").into());
            row.push(
                if own.is_empty() {
                    "-".to_owned()
                } else {
                    own.join(",")
                }
                .into(),
            );
        }
        table.row(row);
    }
    if table.is_empty() {
        out.push_str("no services\n");
    } else {
        out.push_str(&table.render(colour));
    }
    Ok(out)
}

/// `text` cut to `width` characters, with `…` when cut.
fn shorten(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_owned()
    } else {
        let mut s: String = text.chars().take(width - 1).collect();
        s.push('…');
        s
    }
}
