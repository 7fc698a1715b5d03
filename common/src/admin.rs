//! The small local HTTP endpoint both daemons expose for operators and container
//! healthchecks: `/metrics` (Prometheus/OpenMetrics text), `/status` (JSON of what the
//! daemon believes), `/healthz` (liveness) and `/readyz` (readiness).
//!
//! It is deliberately tiny: GET only, one request per connection, bounded request size
//! and time. It binds to localhost by default; it is not a public API.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Largest request head accepted.
const MAX_REQUEST: usize = 8 * 1024;
/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Produces the `/status` document on demand.
pub type StatusFn = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// What the admin endpoint serves.
#[derive(Clone)]
pub struct AdminState {
    pub registry: Arc<std::sync::Mutex<Registry>>,
    pub status: StatusFn,
    /// `/readyz` answers 200 while this is true, 503 otherwise.
    pub ready: Arc<AtomicBool>,
}

impl AdminState {
    pub fn new(registry: Registry, status: StatusFn) -> Self {
        Self {
            registry: Arc::new(std::sync::Mutex::new(registry)),
            status,
            ready: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// Errors from starting the endpoint.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for the admin endpoint")]
pub struct BindError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Binds `addr` and serves until `cancel` fires. Returns the bound address (useful with
/// port 0) and the serving task.
pub async fn serve(
    addr: SocketAddr,
    state: AdminState,
    cancel: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), BindError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| BindError { addr, source })?;
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let state = state.clone();
                        tokio::spawn(async move {
                            if let Err(e) = handle(stream, &state).await {
                                tracing::debug!(error = %e, "admin request failed");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "admin endpoint accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
    });
    Ok((local, task))
}

async fn handle(mut stream: TcpStream, state: &AdminState) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let head = tokio::time::timeout(READ_TIMEOUT, async {
        let mut chunk = [0u8; 1024];
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.len() > MAX_REQUEST {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if head.is_err() {
        return Ok(());
    }
    let request = String::from_utf8_lossy(&buf);
    let mut parts = request.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = if method != "GET" && method != "HEAD" {
        (405, "text/plain", "only GET\n".to_owned())
    } else {
        route(path, state)
    };
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if method != "HEAD" {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}

fn route(path: &str, state: &AdminState) -> (u16, &'static str, String) {
    match path {
        "/metrics" => {
            let mut text = String::new();
            let encoded = match state.registry.lock() {
                Ok(registry) => prometheus_client::encoding::text::encode(&mut text, &registry),
                Err(_) => Err(std::fmt::Error),
            };
            match encoded {
                Ok(()) => (
                    200,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text,
                ),
                Err(_) => (500, "text/plain", "metrics encoding failed\n".into()),
            }
        }
        "/status" => {
            let doc = (state.status)();
            let mut body = serde_json::to_string_pretty(&doc).unwrap_or_else(|_| "{}".into());
            body.push('\n');
            (200, "application/json", body)
        }
        "/healthz" => (200, "text/plain", "ok\n".into()),
        "/readyz" => {
            if state.ready.load(Ordering::Relaxed) {
                (200, "text/plain", "ready\n".into())
            } else {
                (503, "text/plain", "not ready\n".into())
            }
        }
        _ => (404, "text/plain", "not found\n".into()),
    }
}

/// Fetches `path` from an admin endpoint: what `nerve status` / `synapse status` use.
pub async fn fetch(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let io = async {
        let mut stream = TcpStream::connect(addr).await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await?;
        let mut resp = Vec::new();
        stream.read_to_end(&mut resp).await?;
        Ok::<_, std::io::Error>(resp)
    };
    let resp = tokio::time::timeout(READ_TIMEOUT, io).await.map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::TimedOut, "admin endpoint timed out")
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

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[tokio::test]
    async fn serves_metrics_status_and_probes() {
        let mut registry = Registry::default();
        let counter: Counter = Counter::default();
        registry.register("test_events", "Events seen", counter.clone());
        counter.inc_by(3);
        let state = AdminState::new(registry, Arc::new(|| serde_json::json!({"services": 2})));
        let cancel = CancellationToken::new();
        let (addr, task) = serve(
            "127.0.0.1:0".parse().unwrap(),
            state.clone(),
            cancel.clone(),
        )
        .await
        .unwrap();

        let (code, body) = fetch(addr, "/metrics").await.unwrap();
        assert_eq!(code, 200);
        assert!(body.contains("test_events_total 3"), "{body}");
        let (code, body) = fetch(addr, "/status").await.unwrap();
        assert_eq!(code, 200);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&body).unwrap()["services"],
            2
        );
        assert_eq!(fetch(addr, "/healthz").await.unwrap().0, 200);
        assert_eq!(fetch(addr, "/readyz").await.unwrap().0, 503);
        state.ready.store(true, Ordering::Relaxed);
        assert_eq!(fetch(addr, "/readyz").await.unwrap().0, 200);
        assert_eq!(fetch(addr, "/nope").await.unwrap().0, 404);

        cancel.cancel();
        task.await.unwrap();
    }
}
