//! The small local HTTP endpoint both daemons expose for operators and container
//! healthchecks: `/metrics` (Prometheus/OpenMetrics text), `/status` (JSON of what the
//! daemon believes), `/healthz` (liveness) and `/readyz` (readiness).
//!
//! It is deliberately small: hyper's HTTP/1 server, GET only unless the daemon adds its
//! own routes ([`AdminState::routes`]), one request per connection, bounded request size,
//! a bounded number of connections at once, and one deadline for the whole exchange. It is on by default, on loopback ([`NERVE_DEFAULT_LISTEN`],
//! [`SYNAPSE_DEFAULT_LISTEN`]); it is not a public API. A daemon whose admin address is
//! taken keeps running without the endpoint ([`serve_or_warn`]): observability must
//! never be the reason a service-discovery daemon is down.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Largest request head hyper buffers (its minimum is 8 KiB).
const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// Largest request body read for a daemon's own routes ([`AdminState::routes`]).
const MAX_REQUEST_BODY: usize = 64 * 1024;
/// Largest response body [`fetch`] reads.
const MAX_RESPONSE_BODY: usize = 64 * 1024 * 1024;
/// How long [`fetch`] waits for a whole answer.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// How many connections the endpoint serves at once, and how long one may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Limits {
    /// Connections served at once; one more is answered 503 and closed at once.
    connections: usize,
    /// The whole exchange: reading the request, answering, writing the answer.
    exchange: Duration,
}

impl Limits {
    /// The documented defaults (docs/operations.md): room for scrapers, probes and a few
    /// `status` commands, and a deadline far above any honest local client's.
    const DEFAULT: Self = Self {
        connections: 64,
        exchange: Duration::from_secs(10),
    };
}

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

/// A request offered to a daemon's own routes ([`AdminState::routes`]).
#[derive(Debug, Clone)]
pub struct AdminRequest {
    /// `GET`, `POST`, ... as sent.
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query string (after `?`), empty when there is none.
    pub query: String,
    /// The body, at most 64 KiB (a longer one is answered 413 before any route sees it).
    pub body: Vec<u8>,
}

/// A daemon route's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminResponse {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl AdminResponse {
    /// A JSON document, pretty-printed.
    pub fn json(status: u16, doc: &serde_json::Value) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: pretty(doc),
        }
    }

    /// Plain text.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain",
            body: body.into(),
        }
    }
}

/// A daemon's own routes (e.g. nerve's `POST /drain/<service>`), asked before the
/// built-in ones for every request; `None`: not one of its routes.
pub type RoutesFn = Arc<
    dyn Fn(
            AdminRequest,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<AdminResponse>> + Send>>
        + Send
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
    /// The daemon's own routes, if any (the only way to serve a method other than GET).
    pub routes: Option<RoutesFn>,
}

impl AdminState {
    pub fn new(registry: Registry, status: StatusFn) -> Self {
        Self {
            registry: Arc::new(std::sync::Mutex::new(registry)),
            status,
            ready: Arc::new(AtomicBool::new(false)),
            detail: None,
            routes: None,
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
/// port 0) and the serving task. At most 64 connections are served at once (one more is
/// answered 503 and closed), each within 10 s from accept to the last byte written.
pub async fn serve(
    addr: SocketAddr,
    state: AdminState,
    cancel: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), BindError> {
    serve_with(addr, state, Limits::DEFAULT, cancel).await
}

async fn serve_with(
    addr: SocketAddr,
    state: AdminState,
    limits: Limits,
    cancel: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), BindError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| BindError { addr, source })?;
    warn_if_exposed(local);
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.connections));
    let mut refused: u64 = 0;
    let task = tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = cancel.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin endpoint accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                refused += 1;
                refuse(&stream, refused, limits.connections);
                continue;
            };
            let (state, cancel) = (state.clone(), cancel.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    served = tokio::time::timeout(limits.exchange, exchange(stream, state)) => {
                        match served {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => tracing::debug!(error = %e, "admin request failed"),
                            Err(_) => tracing::debug!(
                                "admin connection closed: not done within {:?}", limits.exchange
                            ),
                        }
                    }
                }
                drop(permit);
            });
        }
    });
    Ok((local, task))
}

/// The warning for an endpoint anyone on the network may reach, `None` on loopback.
fn exposure_warning(addr: SocketAddr) -> Option<String> {
    (!addr.ip().is_loopback()).then(|| {
        format!(
            "admin endpoint listening on {addr}, which is not a loopback address: anyone who \
             reaches it can read /metrics and /status (services, backends, addresses) and use \
             the daemon's admin routes; it has no authentication. Bind it to 127.0.0.1 \
             (the default) unless a firewall or network policy keeps others out"
        )
    })
}

fn warn_if_exposed(addr: SocketAddr) {
    if let Some(warning) = exposure_warning(addr) {
        tracing::warn!(addr = %addr, "{warning}");
    }
}

/// Answers a connection over the limit with a 503 and closes it, without waiting: a
/// non-blocking write of a few bytes into a fresh socket's empty buffer. Logged on the
/// first refusal and every 100th after it, so a flood does not flood the log.
fn refuse(stream: &TcpStream, refused: u64, limit: usize) {
    const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
        Content-Length: 21\r\nConnection: close\r\n\r\ntoo many connections\n";
    let _ = stream.try_write(BUSY);
    if refused == 1 || refused % 100 == 0 {
        tracing::warn!(
            refused,
            limit,
            "admin endpoint refused a connection: {limit} are being served (refused so far: \
             {refused})"
        );
    }
}

/// One connection, one request (no keep-alive), with hyper's HTTP/1 parser.
async fn exchange(stream: TcpStream, state: AdminState) -> Result<(), hyper::Error> {
    let service = hyper::service::service_fn(move |request| {
        let state = state.clone();
        async move { Ok::<_, std::convert::Infallible>(answer(request, &state).await) }
    });
    hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .max_buf_size(MAX_REQUEST_HEAD)
        .serve_connection(TokioIo::new(stream), service)
        .await
}

async fn answer(
    request: hyper::Request<hyper::body::Incoming>,
    state: &AdminState,
) -> hyper::Response<Full<Bytes>> {
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or("").to_owned();
    let response = if let Some(routes) = &state.routes {
        let body = match Limited::new(request.into_body(), MAX_REQUEST_BODY)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes().to_vec(),
            Err(_) => return http_response(&AdminResponse::text(413, "request body too large\n")),
        };
        let offered = AdminRequest {
            method: method.clone(),
            path: path.clone(),
            query,
            body,
        };
        match routes(offered).await {
            Some(response) => response,
            None => built_in(&method, &path, state).await,
        }
    } else {
        built_in(&method, &path, state).await
    };
    http_response(&response)
}

async fn built_in(method: &str, path: &str, state: &AdminState) -> AdminResponse {
    if method != "GET" && method != "HEAD" {
        return AdminResponse::text(405, "only GET\n");
    }
    let detail = path
        .strip_prefix("/status/")
        .filter(|name| !name.is_empty())
        .zip(state.detail.as_ref());
    if let Some((name, detail)) = detail {
        return match detail(name.to_owned()).await {
            Some(doc) => AdminResponse::json(200, &doc),
            None => AdminResponse::text(404, format!("no service {name}\n")),
        };
    }
    route(path, state)
}

/// hyper leaves the body out of an answer to HEAD and sets `Content-Length` itself.
fn http_response(response: &AdminResponse) -> hyper::Response<Full<Bytes>> {
    let mut http = hyper::Response::new(Full::new(Bytes::from(response.body.clone())));
    *http.status_mut() = hyper::StatusCode::from_u16(response.status)
        .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    http.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(response.content_type),
    );
    http
}

fn route(path: &str, state: &AdminState) -> AdminResponse {
    match path {
        "/metrics" => {
            let mut text = String::new();
            let encoded = match state.registry.lock() {
                Ok(registry) => prometheus_client::encoding::text::encode(&mut text, &registry),
                Err(_) => Err(std::fmt::Error),
            };
            match encoded {
                Ok(()) => AdminResponse {
                    status: 200,
                    content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body: text,
                },
                Err(_) => AdminResponse::text(500, "metrics encoding failed\n"),
            }
        }
        "/status" => AdminResponse::json(200, &(state.status)()),
        "/healthz" => AdminResponse::text(200, "ok\n"),
        "/readyz" => {
            if state.ready.load(Ordering::Relaxed) {
                AdminResponse::text(200, "ready\n")
            } else {
                AdminResponse::text(503, "not ready\n")
            }
        }
        _ => AdminResponse::text(404, "not found\n"),
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
    let invalid = |e: &dyn std::fmt::Display| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("admin endpoint: {e}"),
        )
    };
    let io = async {
        let stream = TcpStream::connect(addr).await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| invalid(&e))?;
        let connection = tokio::spawn(connection);
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, addr.to_string())
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| invalid(&e))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| invalid(&e))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BODY)
            .collect()
            .await
            .map_err(|e| invalid(&e))?
            .to_bytes();
        connection.abort();
        Ok::<_, std::io::Error>((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(FETCH_TIMEOUT, io).await.map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::TimedOut, "admin endpoint timed out")
    })?
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

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn plain_state() -> AdminState {
        AdminState::new(Registry::default(), Arc::new(|| serde_json::json!({})))
    }

    async fn serve_limited(state: AdminState, limits: Limits) -> (SocketAddr, CancellationToken) {
        let cancel = CancellationToken::new();
        let (addr, _task) = serve_with(
            "127.0.0.1:0".parse().unwrap(),
            state,
            limits,
            cancel.clone(),
        )
        .await
        .unwrap();
        (addr, cancel)
    }

    /// Everything the server sends until it closes, or `None` if it is still open at
    /// `deadline`.
    async fn read_until_closed(stream: &mut TcpStream, deadline: Duration) -> Option<Vec<u8>> {
        let mut got = Vec::new();
        let read = tokio::time::timeout(deadline, async {
            let mut chunk = [0u8; 4096];
            loop {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await;
        read.ok().map(|()| got)
    }

    /// A client sending its request one byte at a time is cut off at the exchange
    /// deadline, before it could finish (the old parser's 5 s read timeout, too, was
    /// the only bound; hyper alone has none without a timer).
    #[tokio::test]
    async fn a_slow_loris_client_is_cut_off_at_the_exchange_deadline() {
        let limits = Limits {
            connections: 4,
            exchange: Duration::from_secs(1),
        };
        let (addr, cancel) = serve_limited(plain_state(), limits).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
            "p".repeat(60)
        );
        // 100 ms a byte: about 9 s for the whole request, far past the 1 s deadline.
        let mut cut_after = None;
        for (i, byte) in request.bytes().enumerate() {
            if stream.write_all(&[byte]).await.is_err() {
                cut_after = Some(i);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut probe = [0u8; 64];
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(1), stream.read(&mut probe)).await
            {
                cut_after = Some(i + 1);
                break;
            }
        }
        let sent = cut_after.expect("the slow request was never cut off");
        assert!(sent < request.len(), "cut off only after the whole request");
        cancel.cancel();
    }

    /// With `limit` connections held open (sending nothing), one more is refused at
    /// once (503, closed), and the endpoint serves again once one is released.
    #[tokio::test]
    async fn connections_over_the_limit_are_refused_at_once() {
        let limits = Limits {
            connections: 3,
            exchange: Duration::from_secs(60),
        };
        let (addr, cancel) = serve_limited(plain_state(), limits).await;
        let mut held = Vec::new();
        for _ in 0..limits.connections {
            held.push(TcpStream::connect(addr).await.unwrap());
        }
        // Each held connection is accepted (and takes its permit) in order; a request on
        // a fresh connection is refused once all are taken.
        let mut extra = TcpStream::connect(addr).await.unwrap();
        let _ = extra
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let answer = read_until_closed(&mut extra, Duration::from_secs(10))
            .await
            .expect("the connection over the limit was left open");
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 503"),
            "{answer}"
        );
        assert!(!answer.contains("200"), "{answer}");

        drop(held.pop());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok((200, _)) = fetch(addr, "/healthz").await {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not served after a held connection closed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        cancel.cancel();
    }

    /// A client that asks for a big document and never reads it holds its connection
    /// only until the exchange deadline: the write side is bounded too.
    #[tokio::test]
    async fn a_client_that_never_reads_is_cut_off_and_its_slot_freed() {
        let big = serde_json::json!({"blob": "x".repeat(32 * 1024 * 1024)});
        let state = AdminState::new(Registry::default(), Arc::new(move || big.clone()));
        let limits = Limits {
            connections: 1,
            exchange: Duration::from_secs(2),
        };
        let (addr, cancel) = serve_limited(state, limits).await;
        let mut stuck = TcpStream::connect(addr).await.unwrap();
        stuck
            .write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        // Its answer is far larger than the socket buffers: the server's write blocks
        // with the only slot taken, until the deadline closes the stuck exchange.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok((200, _)) = fetch(addr, "/healthz").await {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the stuck writer kept its slot"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The stuck client got a cut answer: closed before the whole document.
        let got = read_until_closed(&mut stuck, Duration::from_secs(10))
            .await
            .expect("the stuck connection is still open");
        assert!(got.len() < 32 * 1024 * 1024, "the whole answer was sent");
        cancel.cancel();
    }

    #[test]
    fn a_non_loopback_address_is_warned_about() {
        for quiet in ["127.0.0.1:9101", "127.0.0.2:1", "[::1]:9102"] {
            assert_eq!(exposure_warning(quiet.parse().unwrap()), None, "{quiet}");
        }
        for exposed in ["0.0.0.0:9101", "[::]:9102", "10.1.2.3:9101", "192.0.2.1:80"] {
            let warning = exposure_warning(exposed.parse().unwrap()).expect(exposed);
            assert!(
                warning.contains(exposed) && warning.contains("not a loopback"),
                "{warning}"
            );
        }
        // And it is logged, as a warning, by what serve() calls after binding.
        let buf = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || LogSink(sink.clone()))
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            warn_if_exposed("127.0.0.1:9101".parse().unwrap());
            warn_if_exposed("0.0.0.0:9101".parse().unwrap());
        });
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.contains("WARN") && text.contains("0.0.0.0:9101"),
            "{text}"
        );
    }

    struct LogSink(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for LogSink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A daemon's own routes see every request first (method, path, query, body) and
    /// may leave it to the built-in ones; a method no route takes is still 405.
    #[tokio::test]
    async fn daemon_routes_come_first_and_fall_through() {
        let mut state = plain_state();
        state.routes = Some(Arc::new(|request: AdminRequest| {
            Box::pin(async move {
                let service = request.path.strip_prefix("/drain/")?.to_owned();
                (request.method == "POST").then(|| {
                    AdminResponse::json(
                        202,
                        &serde_json::json!({
                            "service": service,
                            "query": request.query,
                            "body": String::from_utf8_lossy(&request.body),
                        }),
                    )
                })
            })
        }));
        let (addr, cancel) = serve_limited(state, Limits::DEFAULT).await;
        let post = |path: &'static str, body: Vec<u8>| async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let head = format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            let _ = stream.write_all(&body).await;
            let got = read_until_closed(&mut stream, Duration::from_secs(10))
                .await
                .unwrap();
            String::from_utf8_lossy(&got).into_owned()
        };
        let answer = post("/drain/web?wait=1", b"{}".to_vec()).await;
        assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
        assert!(
            answer.contains(r#""service": "web""#)
                && answer.contains(r#""query": "wait=1""#)
                && answer.contains(r#""body": "{}""#),
            "{answer}"
        );
        let answer = post("/status", Vec::new()).await;
        assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
        let answer = post("/drain/web", vec![b'x'; MAX_REQUEST_BODY + 1]).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        // GETs not taken by a route are the built-in ones.
        assert_eq!(fetch(addr, "/healthz").await.unwrap(), (200, "ok\n".into()));
        assert_eq!(fetch(addr, "/drain/web").await.unwrap().0, 404);
        cancel.cancel();
    }

    /// A request head over the limit is refused by hyper, never buffered without end.
    #[tokio::test]
    async fn an_oversized_request_head_is_refused() {
        let (addr, cancel) = serve_limited(plain_state(), Limits::DEFAULT).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
            "p".repeat(MAX_REQUEST_HEAD * 2)
        );
        let _ = stream.write_all(head.as_bytes()).await;
        let got = read_until_closed(&mut stream, Duration::from_secs(10))
            .await
            .expect("left open");
        let got = String::from_utf8_lossy(&got);
        assert!(got.is_empty() || got.starts_with("HTTP/1.1 431"), "{got}");
        cancel.cancel();
    }

    /// HEAD: the headers of GET, no body.
    #[tokio::test]
    async fn head_answers_without_a_body() {
        let (addr, cancel) = serve_limited(plain_state(), Limits::DEFAULT).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let got = read_until_closed(&mut stream, Duration::from_secs(10))
            .await
            .unwrap();
        let got = String::from_utf8_lossy(&got);
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        assert!(
            got.to_ascii_lowercase().contains("content-length: 3"),
            "{got}"
        );
        assert!(got.ends_with("\r\n\r\n"), "{got}");
        cancel.cancel();
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
