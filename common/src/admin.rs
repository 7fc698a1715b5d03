//! The small local HTTP endpoint both daemons expose for operators and container
//! healthchecks: `/metrics` (Prometheus/OpenMetrics text), `/status` (JSON of what the
//! daemon believes), `/healthz` (liveness) and `/readyz` (readiness).
//!
//! It is deliberately tiny: GET, plus the `POST` actions a daemon hooks in
//! ([`AdminState::action`]: nerve's `/drain/<service>`), one request per connection,
//! bounded request size and time. It is on by default, on loopback ([`NERVE_DEFAULT_LISTEN`],
//! [`SYNAPSE_DEFAULT_LISTEN`]); it is not a public API. A daemon whose admin address is
//! taken keeps running without the endpoint ([`serve_or_warn`]): observability must
//! never be the reason a service-discovery daemon is down.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
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

/// Where nerve's admin endpoint listens when the config has no `admin_listen`.
pub const NERVE_DEFAULT_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9101));
/// Where synapse's admin endpoint listens when the config has no `admin_listen`.
pub const SYNAPSE_DEFAULT_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9102));

/// The `admin_listen` key as written in a config file. Use it with `#[serde(default)]`,
/// so that a missing key is [`ListenSetting::Unset`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ListenSetting {
    /// No key: the daemon's default address.
    #[default]
    Unset,
    /// `null` or `false`: no endpoint.
    Off,
    /// `true`: the default address.
    On,
    /// An `address:port` (checked by [`ListenSetting::resolve`]).
    Address(String),
}

impl ListenSetting {
    /// Where to listen, `None` for no endpoint; `Err` is the message for the key.
    pub fn resolve(&self, default: SocketAddr) -> Result<Option<SocketAddr>, String> {
        match self {
            Self::Unset | Self::On => Ok(Some(default)),
            Self::Off => Ok(None),
            Self::Address(a) => a.parse().map(Some).map_err(|_| {
                format!(
                    "must be an address and port, e.g. {default}, or null to turn the endpoint off"
                )
            }),
        }
    }
}

impl<'de> serde::Deserialize<'de> for ListenSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ListenSetting;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an \"address:port\" string, or null (or false) for no endpoint")
            }
            fn visit_unit<E>(self) -> Result<ListenSetting, E> {
                Ok(ListenSetting::Off)
            }
            fn visit_none<E>(self) -> Result<ListenSetting, E> {
                Ok(ListenSetting::Off)
            }
            fn visit_bool<E>(self, on: bool) -> Result<ListenSetting, E> {
                Ok(if on {
                    ListenSetting::On
                } else {
                    ListenSetting::Off
                })
            }
            fn visit_str<E>(self, s: &str) -> Result<ListenSetting, E> {
                Ok(ListenSetting::Address(s.to_owned()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Produces the `/status` document on demand.
pub type StatusFn = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// Produces the `/status/<name>` document for a name (a service), asynchronously (it may
/// ask another process); `None`: no such name (404).
pub type DetailFn = Arc<
    dyn Fn(
            String,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<serde_json::Value>> + Send>>
        + Send
        + Sync,
>;

/// Answers a `POST` (an operator action such as nerve's `/drain/<service>`): gets the
/// request target (path and query), returns the HTTP status and a JSON body; `None`: no
/// such action (404).
pub type ActionFn = Arc<
    dyn Fn(
            String,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Option<(u16, serde_json::Value)>> + Send>,
        > + Send
        + Sync,
>;

/// What the admin endpoint serves.
#[derive(Clone)]
pub struct AdminState {
    pub registry: Arc<std::sync::Mutex<Registry>>,
    pub status: StatusFn,
    /// `/readyz` answers 200 while this is true, 503 otherwise.
    pub ready: Arc<AtomicBool>,
    /// `/status/<name>`, if the daemon has such documents.
    pub detail: Option<DetailFn>,
    /// `POST` requests, if the daemon takes any.
    pub action: Option<ActionFn>,
}

impl AdminState {
    pub fn new(registry: Registry, status: StatusFn) -> Self {
        Self {
            registry: Arc::new(std::sync::Mutex::new(registry)),
            status,
            ready: Arc::new(AtomicBool::new(false)),
            detail: None,
            action: None,
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

/// [`serve`], or — when `addr` cannot be bound (taken, not an address of this host) —
/// one warning and `None`: the daemon carries on without the endpoint.
pub async fn serve_or_warn(
    addr: SocketAddr,
    state: AdminState,
    cancel: CancellationToken,
) -> Option<(SocketAddr, tokio::task::JoinHandle<()>)> {
    match serve(addr, state, cancel).await {
        Ok((bound, task)) => {
            tracing::info!(addr = %bound, "admin endpoint listening");
            Some((bound, task))
        }
        Err(e) => {
            tracing::warn!(
                addr = %addr,
                error = %e.source,
                "admin endpoint off: cannot listen on {addr} ({}); running without /metrics, \
                 /status and the probes. Set admin_listen to a free address, or to null to \
                 turn the endpoint off",
                e.source
            );
            None
        }
    }
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
    let detail = path
        .strip_prefix("/status/")
        .filter(|name| !name.is_empty())
        .zip(state.detail.as_ref());
    let (status, content_type, body) =
        if let Some(action) = state.action.as_ref().filter(|_| method == "POST") {
            match action(target.to_owned()).await {
                Some((code, doc)) => (code, "application/json", pretty(&doc)),
                None => (404, "text/plain", "not found\n".to_owned()),
            }
        } else if method != "GET" && method != "HEAD" {
            (405, "text/plain", "only GET\n".to_owned())
        } else if let Some((name, detail)) = detail {
            match detail(name.to_owned()).await {
                Some(doc) => (200, "application/json", pretty(&doc)),
                None => (404, "text/plain", format!("no service {name}\n")),
            }
        } else {
            route(path, state)
        };
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        504 => "Gateway Timeout",
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
        "/status" => (200, "application/json", pretty(&(state.status)())),
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

/// `doc` as pretty JSON with a final newline.
fn pretty(doc: &serde_json::Value) -> String {
    let mut body = serde_json::to_string_pretty(doc).unwrap_or_else(|_| "{}".into());
    body.push('\n');
    body
}

/// Why `nerve status` / `synapse status` could not show the status.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("the admin endpoint is off in {} (admin_listen: null): set admin_listen, or pass --admin <address:port>", path.display())]
    Off { path: PathBuf },
    #[error("cannot read the admin address from {path}: {message}")]
    Config { path: PathBuf, message: String },
    /// (The I/O error is in the message, not a `source`: this is printed as it is.)
    #[error("the admin endpoint at {addr} is unreachable: {error}")]
    Unreachable {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("the admin endpoint at {addr} answered HTTP {status}: {}", body.trim())]
    Http {
        addr: SocketAddr,
        status: u16,
        body: String,
    },
}

/// Where a `status` subcommand connects: `admin` if given; else the `admin_listen` of the
/// config file at `config` (read as JSON with comments; nothing else of it is checked,
/// so the subcommand works with a config the daemon would reject); else, or when the
/// config has no `admin_listen`, `default` (the daemon's own default). A wildcard listen
/// address (`0.0.0.0`, `::`) is asked on loopback.
pub fn status_address(
    admin: Option<SocketAddr>,
    config: Option<&Path>,
    default: SocketAddr,
) -> Result<SocketAddr, StatusError> {
    if let Some(addr) = admin {
        return Ok(addr);
    }
    let Some(path) = config else {
        return Ok(default);
    };
    let bad = |message: String| StatusError::Config {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let doc = crate::config::parse_jsonc(&text).map_err(|e| bad(e.to_string()))?;
    let setting = match doc.get("admin_listen") {
        None => ListenSetting::Unset,
        Some(v) => {
            serde_json::from_value(v.clone()).map_err(|e| bad(format!("admin_listen: {e}")))?
        }
    };
    let listen = setting
        .resolve(default)
        .map_err(|e| bad(format!("admin_listen {e}")))?
        .ok_or_else(|| StatusError::Off {
            path: path.to_owned(),
        })?;
    Ok(match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, listen.port()))
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv6Addr::LOCALHOST, listen.port()))
        }
        _ => listen,
    })
}

/// The document at `path` (`/status`, ...) of the endpoint at `addr`, as served.
pub async fn status_at(addr: SocketAddr, path: &str) -> Result<String, StatusError> {
    let (code, body) = fetch(addr, path)
        .await
        .map_err(|error| StatusError::Unreachable { addr, error })?;
    if code == 200 {
        Ok(body)
    } else {
        Err(StatusError::Http {
            addr,
            status: code,
            body,
        })
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

    #[test]
    fn listen_setting_reads_every_spelling() {
        #[derive(serde::Deserialize)]
        struct File {
            #[serde(default)]
            admin_listen: ListenSetting,
        }
        let read = |text: &str| serde_json::from_str::<File>(text).map(|f| f.admin_listen);
        let d = NERVE_DEFAULT_LISTEN;
        assert_eq!(read("{}").unwrap().resolve(d), Ok(Some(d)));
        assert_eq!(
            read(r#"{"admin_listen": true}"#).unwrap().resolve(d),
            Ok(Some(d))
        );
        assert_eq!(
            read(r#"{"admin_listen": null}"#).unwrap().resolve(d),
            Ok(None)
        );
        assert_eq!(
            read(r#"{"admin_listen": false}"#).unwrap().resolve(d),
            Ok(None)
        );
        assert_eq!(
            read(r#"{"admin_listen": "0.0.0.0:9"}"#).unwrap().resolve(d),
            Ok(Some("0.0.0.0:9".parse().unwrap()))
        );
        let e = read(r#"{"admin_listen": "nine"}"#)
            .unwrap()
            .resolve(d)
            .unwrap_err();
        assert!(e.contains("127.0.0.1:9101") && e.contains("null"), "{e}");
        let e = read(r#"{"admin_listen": 9101}"#).err().unwrap().to_string();
        assert!(e.contains("address:port"), "{e}");
    }

    #[tokio::test]
    async fn a_taken_address_leaves_the_endpoint_off() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let state = AdminState::new(Registry::default(), Arc::new(|| serde_json::json!({})));
        assert!(serve_or_warn(addr, state, CancellationToken::new())
            .await
            .is_none());
    }

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
        // Stopped: `status` says unreachable.
        assert!(matches!(
            status_at(addr, "/status").await,
            Err(StatusError::Unreachable { .. })
        ));
    }

    #[test]
    fn status_address_prefers_the_flag_then_the_config_then_the_default() {
        let dir = std::env::temp_dir().join(format!("admin-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let flag: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let file = dir.join("c.json");
        std::fs::write(
            &file,
            "{\n // comment\n \"admin_listen\": \"0.0.0.0:9102\", \"x\": 1,}",
        )
        .unwrap();
        let default = SYNAPSE_DEFAULT_LISTEN;
        assert_eq!(
            status_address(Some(flag), Some(&file), default).unwrap(),
            flag
        );
        assert_eq!(
            status_address(None, Some(&file), default).unwrap(),
            "127.0.0.1:9102".parse::<SocketAddr>().unwrap()
        );
        std::fs::write(&file, r#"{"admin_listen": "[::]:9102"}"#).unwrap();
        assert_eq!(
            status_address(None, Some(&file), default).unwrap(),
            "[::1]:9102".parse::<SocketAddr>().unwrap()
        );
        // No key, or `true`: the daemon's default.
        for text in [r#"{"services": {}}"#, r#"{"admin_listen": true}"#] {
            std::fs::write(&file, text).unwrap();
            assert_eq!(status_address(None, Some(&file), default).unwrap(), default);
        }
        for text in [r#"{"admin_listen": null}"#, r#"{"admin_listen": false}"#] {
            std::fs::write(&file, text).unwrap();
            let err = status_address(None, Some(&file), default).unwrap_err();
            assert!(matches!(err, StatusError::Off { .. }), "{err}");
            assert!(err.to_string().contains("--admin"), "{err}");
        }
        for text in [
            r#"{"admin_listen": "localhost"}"#,
            r#"{"admin_listen": 9102}"#,
        ] {
            std::fs::write(&file, text).unwrap();
            let err = status_address(None, Some(&file), default).unwrap_err();
            assert!(err.to_string().contains("admin_listen"), "{err}");
        }
        assert!(matches!(
            status_address(None, Some(&dir.join("missing.json")), default),
            Err(StatusError::Config { .. })
        ));
        assert_eq!(status_address(None, None, default).unwrap(), default);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
