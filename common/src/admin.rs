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
    if let Some(why) = from_a_browser(&method, request.headers()) {
        return http_response(&AdminResponse::text(
            403,
            format!(
                "refused: a {method} with {why} comes from a web page; the admin routes that \
                 change things are for the daemon's own CLI and for curl\n"
            ),
        ));
    }
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

/// Why a request that may change something (any method but GET and HEAD) comes from a
/// web page, `None` when it does not: a browser sends `Origin` with every such request,
/// cross-site or not, and `Sec-Fetch-Site` other than `none` when a page (not the user)
/// made it. A page on any site can POST to 127.0.0.1 without reading the answer
/// (nerve's `/drain` would deregister a service); a page behind a DNS name rebound to
/// 127.0.0.1 sends `Origin` as well. curl, the daemons' CLIs and scripts send neither.
fn from_a_browser(method: &str, headers: &hyper::HeaderMap) -> Option<String> {
    if method == "GET" || method == "HEAD" {
        return None;
    }
    if let Some(origin) = headers.get(hyper::header::ORIGIN) {
        return Some(format!(
            "Origin: {}",
            String::from_utf8_lossy(origin.as_bytes())
        ));
    }
    headers
        .get("sec-fetch-site")
        .filter(|site| site.as_bytes() != b"none")
        .map(|site| {
            format!(
                "Sec-Fetch-Site: {}",
                String::from_utf8_lossy(site.as_bytes())
            )
        })
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
mod tests;
