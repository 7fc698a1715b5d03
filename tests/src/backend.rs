//! A real HTTP backend on loopback: answers every path with its own id, so a test can see
//! which instance HAProxy routed a request to, and `/health` with 200 or 500 so HAProxy
//! health checks (and nerve's) can be driven from the test.
//!
//! Hand-rolled HTTP/1.1 (request line, headers, `Content-Length` bodies, keep-alive) on
//! tokio: it is all HAProxy and the checkers send, and it spares the workspace a hyper
//! build.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// The largest request head accepted; anything bigger is a bug in the test.
const MAX_HEAD: usize = 64 * 1024;
/// An idle keep-alive connection is closed after this, like any real server would.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Shared {
    id: String,
    healthy: AtomicBool,
    /// `/health` alternates 200 / 500 on every probe (while `healthy`).
    flapping: AtomicBool,
    requests: AtomicU64,
    health_checks: AtomicU64,
}

/// An HTTP server on `127.0.0.1`. Every response carries the id in the body and in the
/// `X-Backend-Id` header. Stops when killed or dropped.
#[derive(Debug)]
pub struct Backend {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: Option<JoinHandle<()>>,
}

impl Backend {
    /// Starts a healthy backend on a free port. Panics if it cannot bind.
    pub async fn start(id: impl Into<String>) -> Self {
        let id = id.into();
        Self::start_on(id.clone(), 0)
            .await
            .unwrap_or_else(|e| panic!("backend {id}: cannot bind 127.0.0.1:0: {e}"))
    }

    /// Starts a healthy backend on `127.0.0.1:port` (0 for any), e.g. to bring a killed
    /// backend back at the same address.
    pub async fn start_on(id: impl Into<String>, port: u16) -> io::Result<Self> {
        Self::start_at(id, SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await
    }

    /// Starts a healthy backend on a given loopback address, e.g. `127.0.1.4:50001` for
    /// an EC2 instance that moto placed at `127.0.1.4`. Non-loopback addresses are refused.
    pub async fn start_at(id: impl Into<String>, addr: SocketAddr) -> io::Result<Self> {
        if !addr.ip().is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{addr} is not a loopback address"),
            ));
        }
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            id: id.into(),
            healthy: AtomicBool::new(true),
            flapping: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            health_checks: AtomicU64::new(0),
        });
        let server = tokio::spawn(serve(listener, Arc::clone(&shared)));
        Ok(Self {
            shared,
            addr,
            server: Some(server),
        })
    }

    /// The id this backend answers with.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Makes `/health` answer 200 (`true`) or 500 (`false`). Other paths are unaffected.
    pub fn set_healthy(&self, healthy: bool) {
        self.shared.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Makes `/health` alternate between 200 and 500 on every probe (`true`), the
    /// fastest possible flapping; `false` goes back to [`Backend::set_healthy`]'s answer.
    pub fn set_flapping(&self, flapping: bool) {
        self.shared.flapping.store(flapping, Ordering::SeqCst);
    }

    /// What `/health` currently answers.
    pub fn is_healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::SeqCst)
    }

    /// Requests answered so far, not counting `/health` (so HAProxy's health checks do
    /// not blur "did traffic reach this backend").
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// `/health` requests answered so far.
    pub fn health_checks(&self) -> u64 {
        self.shared.health_checks.load(Ordering::SeqCst)
    }

    /// Whether it still listens (not killed).
    pub fn is_alive(&self) -> bool {
        self.server.is_some()
    }

    /// Stops listening and drops every open connection (clients see a reset or EOF).
    /// When this returns the port is closed. Idempotent.
    pub async fn kill(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            // Aborting drops the listener and the JoinSet of connections; awaiting makes
            // sure that has happened before we return.
            let _ = server.await;
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    // Owning the connections here means aborting this task drops them all.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, Arc::clone(&shared)));
                }
                Err(e) => {
                    // EMFILE and friends are transient; don't spin on them.
                    tracing::warn!(backend = %shared.id, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    loop {
        // EOF, a malformed request or an idle connection: close it.
        let Ok(Ok(Some(request))) =
            tokio::time::timeout(IDLE_TIMEOUT, read_request(&mut read)).await
        else {
            return;
        };
        let (status, reason) = if request.path == "/health" {
            let n = shared.health_checks.fetch_add(1, Ordering::SeqCst);
            let flap_down = shared.flapping.load(Ordering::SeqCst) && n % 2 == 1;
            if shared.healthy.load(Ordering::SeqCst) && !flap_down {
                (200, "OK")
            } else {
                (500, "Internal Server Error")
            }
        } else {
            shared.requests.fetch_add(1, Ordering::SeqCst);
            (200, "OK")
        };
        let body = if request.method == "HEAD" {
            ""
        } else {
            shared.id.as_str()
        };
        let response = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\n\
             Content-Length: {}\r\nX-Backend-Id: {}\r\nConnection: {}\r\n\r\n{body}",
            shared.id.len(),
            shared.id,
            if request.keep_alive {
                "keep-alive"
            } else {
                "close"
            },
        );
        if write.write_all(response.as_bytes()).await.is_err() || !request.keep_alive {
            return;
        }
    }
}

#[derive(Debug)]
struct Request {
    method: String,
    path: String,
    keep_alive: bool,
}

/// Reads one request (head and any `Content-Length` body). `None` on a clean EOF before
/// a request starts.
async fn read_request<R: AsyncBufReadExt + Unpin>(read: &mut R) -> io::Result<Option<Request>> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let mut line = String::new();
    if read.read_line(&mut line).await? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(path), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("bad request line"));
    };
    let method = method.to_owned();
    let path = path.split('?').next().unwrap_or_default().to_owned();
    // HTTP/1.1 keeps the connection open unless asked not to; HTTP/1.0 the opposite.
    let mut keep_alive = version == "HTTP/1.1";
    let mut content_length = 0usize;
    let mut head_len = line.len();
    loop {
        line.clear();
        let n = read.read_line(&mut line).await?;
        head_len += n;
        if n == 0 || head_len > MAX_HEAD {
            return Err(bad("request head cut short or too long"));
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            return Err(bad("bad header line"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = value.parse().map_err(|_| bad("bad content-length"))?;
        } else if name.eq_ignore_ascii_case("connection") {
            if value.eq_ignore_ascii_case("close") {
                keep_alive = false;
            } else if value.eq_ignore_ascii_case("keep-alive") {
                keep_alive = true;
            }
        }
    }
    // The body is not used, but must be consumed to find the next request.
    let mut remaining = content_length as u64;
    let mut sink = [0u8; 4096];
    while remaining > 0 {
        let want = usize::try_from(remaining.min(sink.len() as u64)).unwrap_or(sink.len());
        let n = read.read(&mut sink[..want]).await?;
        if n == 0 {
            return Err(bad("body cut short"));
        }
        remaining -= n as u64;
    }
    Ok(Some(Request {
        method,
        path,
        keep_alive,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{http_get, parse_response};

    #[tokio::test]
    async fn answers_with_its_id_and_counts() {
        let backend = Backend::start("b1").await;
        let r = http_get(backend.addr(), "/anything?x=1").await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "b1"));
        assert_eq!(r.header("x-backend-id"), Some("b1"));
        assert_eq!(backend.requests(), 1);
        assert_eq!(
            http_get(backend.addr(), "/health").await.unwrap().status,
            200
        );
        backend.set_healthy(false);
        assert_eq!(
            http_get(backend.addr(), "/health").await.unwrap().status,
            500
        );
        assert_eq!((backend.requests(), backend.health_checks()), (1, 2));
    }

    #[tokio::test]
    async fn keeps_connections_alive_and_kill_closes_them() {
        let mut backend = Backend::start("ka").await;
        let mut stream = TcpStream::connect(backend.addr()).await.unwrap();
        for _ in 0..3 {
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut buf = vec![0u8; 1024];
            let n = stream.read(&mut buf).await.unwrap();
            let r = parse_response(&buf[..n]).unwrap();
            assert_eq!(r.body, "ka");
        }
        assert_eq!(backend.requests(), 3);
        backend.kill().await;
        let mut buf = [0u8; 16];
        // The server side of the kept-alive connection is gone: EOF or reset.
        let read = stream.read(&mut buf).await;
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert!(TcpStream::connect(backend.addr()).await.is_err());
    }
}
