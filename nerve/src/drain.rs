//! Operator drains and the drain barrier: `nerve drain <service> [--wait]` (the admin
//! endpoint's `POST /drain/<service>`) deregisters a service and keeps it deregistered
//! until `nerve undrain` (`POST /undrain/<service>`) or a restart; with `wait`, it then
//! waits until every live synapse that watches the service's path has applied the
//! deletion's revision (`common::applied`). On SIGTERM nerve runs the same barrier for
//! everything the lease revoke deleted, within `shutdown_timeout`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::admin::{AdminRequest, AdminResponse, RoutesFn};
use common::applied::BarrierReport;
use common::etcd::EtcdSettings;
use common::ServiceName;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::status::{Status, StatusHandle};

/// How long a drain waits by default (for the deregistration, then for the synapses).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest wait a request may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// What a drain did, as `POST /drain/<service>` answers it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainOutcome {
    pub service: String,
    /// The service's etcd path.
    pub etcd_path: String,
    /// The operator drain is in force (false after an undrain).
    pub drained: bool,
    /// nerve holds no registration for the service any more.
    pub deregistered: bool,
    /// The etcd revision at which this nerve deleted the registration (`None`: it held
    /// none in this process's life, so there was nothing to delete).
    pub revision: Option<i64>,
    /// Where the barrier stood when the wait ended (`None` without `wait`).
    pub barrier: Option<BarrierReport>,
}

impl DrainOutcome {
    /// The whole drain is done: deregistered and, if waited for, confirmed by all.
    pub fn complete(&self) -> bool {
        self.deregistered && self.barrier.as_ref().is_none_or(BarrierReport::complete)
    }
}

/// Shared by the admin endpoint and the supervisor.
#[derive(Clone)]
pub struct DrainHandle {
    drained: Arc<watch::Sender<BTreeSet<ServiceName>>>,
    status: StatusHandle,
    etcd: EtcdSettings,
    prefix: String,
}

impl DrainHandle {
    pub fn new(status: StatusHandle, etcd: EtcdSettings, prefix: String) -> Self {
        Self {
            drained: Arc::new(watch::channel(BTreeSet::new()).0),
            status,
            etcd,
            prefix,
        }
    }

    /// What the supervisor follows.
    pub fn subscribe(&self) -> watch::Receiver<BTreeSet<ServiceName>> {
        self.drained.subscribe()
    }

    /// Drains `service`; with `wait`, waits for the barrier. `timeout` bounds the whole.
    pub async fn drain(
        &self,
        service: &ServiceName,
        wait: bool,
        timeout: Duration,
    ) -> DrainOutcome {
        let deadline = Instant::now() + timeout;
        self.drained.send_if_modified(|d| d.insert(service.clone()));
        tracing::info!(service = %service, wait, timeout = ?timeout, "drained by the operator");
        let mut status = self.status.subscribe();
        let deregistered = tokio::time::timeout_at(deadline, async {
            loop {
                if !holds(&status.borrow_and_update(), service) {
                    return;
                }
                if status.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })
        .await
        .is_ok();
        let snapshot = self.status.snapshot();
        let mut outcome = DrainOutcome {
            service: service.to_string(),
            etcd_path: etcd_path(&snapshot, service),
            drained: true,
            deregistered,
            revision: snapshot.registry.deletions.get(service.as_str()).copied(),
            barrier: None,
        };
        if wait {
            let revision = if deregistered {
                outcome.revision.unwrap_or(0)
            } else {
                // Not deleted yet: nobody can have applied a deletion.
                i64::MAX
            };
            let left = deadline.saturating_duration_since(Instant::now());
            outcome.barrier =
                Some(barrier(&self.etcd, &self.prefix, &outcome.etcd_path, revision, left).await);
            log_barrier(service, outcome.barrier.as_ref());
        }
        outcome
    }

    /// Ends an operator drain; the service registers again once healthy.
    pub fn undrain(&self, service: &ServiceName) -> bool {
        let was = self.drained.send_if_modified(|d| d.remove(service));
        if was {
            tracing::info!(service = %service, "undrained by the operator");
        }
        was
    }

    /// At shutdown, after the lease revoke: the barrier for every path whose
    /// registration the revoke deleted, in parallel, until `deadline`. Logs the outcome.
    pub async fn barrier_on_shutdown(
        &self,
        revoked: &BTreeMap<String, (String, i64)>,
        deadline: Instant,
    ) {
        let mut waits = tokio::task::JoinSet::new();
        for (service, (path, revision)) in revoked {
            let (etcd, prefix) = (self.etcd.clone(), self.prefix.clone());
            let (service, path, revision) = (service.clone(), path.clone(), *revision);
            waits.spawn(async move {
                let left = deadline.saturating_duration_since(Instant::now());
                let report = barrier(&etcd, &prefix, &path, revision, left).await;
                (service, report)
            });
        }
        while let Some(joined) = waits.join_next().await {
            if let Ok((service, report)) = joined {
                if let Ok(name) = ServiceName::new(&service) {
                    log_barrier(&name, Some(&report));
                }
            }
        }
    }
}

/// Whether nerve still holds a key for `service`.
fn holds(status: &Status, service: &ServiceName) -> bool {
    status
        .registry
        .keys
        .values()
        .any(|s| s.as_str() == service.as_str())
}

fn etcd_path(status: &Status, service: &ServiceName) -> String {
    status
        .services
        .get(service.as_str())
        .map(|s| s.etcd_path.clone())
        .unwrap_or_default()
}

/// The barrier on its own etcd client; when etcd cannot be reached, nobody confirmed.
async fn barrier(
    etcd: &EtcdSettings,
    prefix: &str,
    path: &str,
    revision: i64,
    timeout: Duration,
) -> BarrierReport {
    let connected = tokio::time::timeout(timeout, common::etcd::connect(etcd)).await;
    match connected {
        Ok(Ok(mut client)) => {
            common::applied::wait(&mut client, prefix, path, revision, timeout).await
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %crate::error_chain(&e), "drain barrier: cannot connect to etcd");
            unknown(revision)
        }
        Err(_) => unknown(revision),
    }
}

/// A report that knows of no synapse: the wait could not look.
fn unknown(revision: i64) -> BarrierReport {
    BarrierReport {
        revision,
        not_confirmed: vec![common::applied::Lagging {
            instance_id: "(etcd unreachable)".into(),
            applied: 0,
        }],
        ..BarrierReport::default()
    }
}

fn log_barrier(service: &ServiceName, report: Option<&BarrierReport>) {
    let Some(r) = report else { return };
    let lagging: Vec<&str> = r
        .not_confirmed
        .iter()
        .map(|l| l.instance_id.as_str())
        .collect();
    if r.complete() {
        tracing::info!(service = %service, revision = r.revision, confirmed = r.confirmed.len(),
            elapsed_ms = r.elapsed_ms, "drain barrier: every live synapse has applied the deregistration");
    } else {
        tracing::warn!(service = %service, revision = r.revision, confirmed = r.confirmed.len(),
            not_confirmed = ?lagging, elapsed_ms = r.elapsed_ms,
            "drain barrier: not every synapse confirmed in time");
    }
}

/// A parsed `POST` target.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Request {
    Drain {
        service: String,
        wait: bool,
        timeout: Duration,
    },
    Undrain {
        service: String,
    },
}

/// `/drain/<service>?wait=true&timeout=30` or `/undrain/<service>`; `Err` is the message
/// for a 400.
fn parse_target(target: &str) -> Option<Result<Request, String>> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if let Some(service) = path.strip_prefix("/undrain/") {
        return Some(Ok(Request::Undrain {
            service: service.to_owned(),
        }));
    }
    let service = path.strip_prefix("/drain/")?.to_owned();
    let (mut wait, mut timeout) = (false, DEFAULT_TIMEOUT);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, "true"));
        match k {
            "wait" => match v {
                "true" | "1" => wait = true,
                "false" | "0" => wait = false,
                _ => return Some(Err(format!("wait={v}: expected true or false"))),
            },
            "timeout" => match v.parse::<f64>() {
                Ok(s) if s > 0.0 && s <= MAX_TIMEOUT.as_secs_f64() => {
                    timeout = Duration::from_secs_f64(s);
                }
                _ => return Some(Err(format!("timeout={v}: expected seconds, 0 < t ≤ 3600"))),
            },
            _ => return Some(Err(format!("unknown parameter {k}"))),
        }
    }
    Some(Ok(Request::Drain {
        service,
        wait,
        timeout,
    }))
}

/// The admin endpoint's route for `POST /drain/<service>` and `POST /undrain/<service>`;
/// every other request falls through to the built-in routes.
pub fn routes(handle: DrainHandle) -> RoutesFn {
    Arc::new(move |req: AdminRequest| {
        let handle = handle.clone();
        Box::pin(async move {
            if req.method != "POST" {
                return None;
            }
            let target = if req.query.is_empty() {
                req.path.clone()
            } else {
                format!("{}?{}", req.path, req.query)
            };
            let (code, doc) = answer(&handle, &target).await?;
            Some(AdminResponse::json(code, &doc))
        })
    })
}

/// The answer to a drain or undrain request target; `None` when it is neither.
async fn answer(handle: &DrainHandle, target: &str) -> Option<(u16, serde_json::Value)> {
    let request = match parse_target(target)? {
        Ok(r) => r,
        Err(e) => return Some((400, serde_json::json!({ "error": e }))),
    };
    let (Request::Drain { service, .. } | Request::Undrain { service }) = &request;
    let known = handle.status.snapshot().services.contains_key(service);
    let name = match ServiceName::new(service) {
        Ok(name) if known => name,
        _ => {
            return Some((
                404,
                serde_json::json!({ "error": format!("no service {service} in this nerve's config") }),
            ))
        }
    };
    match request {
        Request::Undrain { .. } => {
            let was = handle.undrain(&name);
            Some((
                200,
                serde_json::json!({ "service": service, "drained": false, "was_drained": was }),
            ))
        }
        Request::Drain { wait, timeout, .. } => {
            let outcome = handle.drain(&name, wait, timeout).await;
            let code = if outcome.complete() { 200 } else { 504 };
            Some((code, serde_json::to_value(&outcome).unwrap_or_default()))
        }
    }
}

/// Sends `POST <target>` to a nerve's admin endpoint and returns the status and body;
/// `timeout` bounds the whole exchange.
pub async fn post(
    addr: SocketAddr,
    target: &str,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let io = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let req = format!(
            "POST {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await?;
        let mut resp = Vec::new();
        stream.read_to_end(&mut resp).await?;
        Ok::<_, std::io::Error>(resp)
    };
    let resp = tokio::time::timeout(timeout, io).await.map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the admin endpoint did not answer in time",
        )
    })??;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response")
        })?;
    Ok((status, body.to_owned()))
}

/// The lines `nerve drain` prints for an outcome.
pub fn render(outcome: &DrainOutcome) -> String {
    let mut out = String::new();
    let revision = outcome.revision.map_or_else(
        || "none (it was not registered)".to_owned(),
        |r| r.to_string(),
    );
    if outcome.deregistered {
        out.push_str(&format!(
            "{}: deregistered from {} (etcd revision {revision}); drained until `nerve undrain {}` or a restart\n",
            outcome.service, outcome.etcd_path, outcome.service
        ));
    } else {
        out.push_str(&format!(
            "{}: drained, but the deregistration is not confirmed (is etcd reachable?)\n",
            outcome.service
        ));
    }
    if let Some(b) = outcome.barrier.as_ref().filter(|b| b.watching == 0) {
        out.push_str(&format!(
            "no live synapse watches {}: nothing to wait for (revision {})\n",
            outcome.etcd_path, b.revision
        ));
    } else if let Some(b) = &outcome.barrier {
        out.push_str(&format!(
            "{} of {} synapses watching {} confirmed in {} ms\n",
            b.confirmed.len(),
            b.watching,
            outcome.etcd_path,
            b.elapsed_ms
        ));
        for l in &b.not_confirmed {
            out.push_str(&format!(
                "  not confirmed: {} (applied revision {})\n",
                l.instance_id, l.applied
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(
            parse_target("/drain/web"),
            Some(Ok(Request::Drain {
                service: "web".into(),
                wait: false,
                timeout: DEFAULT_TIMEOUT
            }))
        );
        assert_eq!(
            parse_target("/drain/web?wait=true&timeout=2.5"),
            Some(Ok(Request::Drain {
                service: "web".into(),
                wait: true,
                timeout: Duration::from_millis(2500)
            }))
        );
        assert_eq!(
            parse_target("/undrain/web"),
            Some(Ok(Request::Undrain {
                service: "web".into()
            }))
        );
        assert_eq!(parse_target("/status"), None);
        for bad in [
            "/drain/web?wait=maybe",
            "/drain/web?timeout=0",
            "/drain/web?x=1",
        ] {
            assert!(matches!(parse_target(bad), Some(Err(_))), "{bad}");
        }
    }

    #[test]
    fn an_outcome_is_complete_only_when_every_synapse_confirmed() {
        let mut o = DrainOutcome {
            service: "web".into(),
            etcd_path: "/svc/web".into(),
            drained: true,
            deregistered: true,
            revision: Some(9),
            barrier: None,
        };
        assert!(o.complete());
        o.barrier = Some(BarrierReport {
            revision: 9,
            watching: 2,
            confirmed: vec!["a".into()],
            not_confirmed: vec![common::applied::Lagging {
                instance_id: "b".into(),
                applied: 8,
            }],
            elapsed_ms: 5,
        });
        assert!(!o.complete());
        let text = render(&o);
        assert!(text.contains("1 of 2 synapses"), "{text}");
        assert!(
            text.contains("not confirmed: b (applied revision 8)"),
            "{text}"
        );
        o.deregistered = false;
        o.barrier = None;
        assert!(!o.complete());
    }
}
