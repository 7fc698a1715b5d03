//! A bounded loopback load generator (reliability §2.1, §4.1): HTTP GETs at a fixed rate,
//! each on a **new** TCP connection (so accepts during reloads are exercised), each with
//! a timeout; it counts successes by the backend that answered and keeps every failure
//! with its time. Bounded in requests and in time: it stops at whichever comes first, or
//! when [`Load::stop`] is called.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::{interval, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::http::{http_get, http_get_timeout};
use crate::ports::loopback;

/// One failed request: when (since the start), and what happened.
#[derive(Debug, Clone)]
pub struct Failure {
    pub at: Duration,
    pub error: String,
}

/// What a load run saw.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub sent: u64,
    /// Successful answers by the backend id in the body.
    pub ok_by_backend: BTreeMap<String, u64>,
    /// Connect errors, timeouts and non-2xx answers.
    pub failures: Vec<Failure>,
}

impl LoadReport {
    pub fn ok(&self) -> u64 {
        self.ok_by_backend.values().sum()
    }

    pub fn failed(&self) -> u64 {
        self.failures.len() as u64
    }

    /// Failures that happened outside the `excluded` windows (offsets from the start):
    /// e.g. the moments a backend was dead but not yet known to be.
    pub fn failed_outside(&self, excluded: &[(Duration, Duration)]) -> u64 {
        self.failures
            .iter()
            .filter(|f| !excluded.iter().any(|(a, b)| f.at >= *a && f.at <= *b))
            .count() as u64
    }
}

/// Load settings.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Requests per second.
    pub rate: u32,
    /// Per-request timeout.
    pub timeout: Duration,
    /// At most this many requests.
    pub max_requests: u64,
    /// At most this long.
    pub max_duration: Duration,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            rate: 50,
            timeout: Duration::from_secs(1),
            max_requests: 50 * 600,
            max_duration: Duration::from_secs(600),
        }
    }
}

/// A running load generator.
pub struct Load {
    started: Instant,
    report: Arc<Mutex<LoadReport>>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Load {
    /// Starts sending `GET /` to `addr`.
    pub fn start(addr: SocketAddr, options: LoadOptions) -> Self {
        let started = Instant::now();
        let report: Arc<Mutex<LoadReport>> = Arc::default();
        let cancel = CancellationToken::new();
        let (r, c) = (report.clone(), cancel.clone());
        let task = tokio::spawn(async move {
            let period = Duration::from_secs(1) / options.rate.max(1);
            let mut tick = interval(period);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let deadline = started + options.max_duration;
            let mut inflight = tokio::task::JoinSet::new();
            for _ in 0..options.max_requests {
                tokio::select! {
                    _ = c.cancelled() => break,
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = tick.tick() => {}
                }
                while inflight.try_join_next().is_some() {}
                let r = r.clone();
                inflight.spawn(async move {
                    let result = http_get_timeout(addr, "/", options.timeout).await;
                    let at = started.elapsed();
                    let mut report = r.lock().expect("load report");
                    report.sent += 1;
                    match result {
                        Ok(resp) if (200..300).contains(&resp.status) => {
                            *report
                                .ok_by_backend
                                .entry(resp.body.trim().to_owned())
                                .or_default() += 1;
                        }
                        Ok(resp) => report.failures.push(Failure {
                            at,
                            error: format!("status {}", resp.status),
                        }),
                        Err(e) => report.failures.push(Failure {
                            at,
                            error: e.to_string(),
                        }),
                    }
                });
            }
            while inflight.join_next().await.is_some() {}
        });
        Self {
            started,
            report,
            cancel,
            task: Some(task),
        }
    }

    /// Time since the start (to mark windows for [`LoadReport::failed_outside`]).
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// What was seen so far.
    pub fn snapshot(&self) -> LoadReport {
        self.report.lock().expect("load report").clone()
    }

    /// Stops sending, waits for the requests in flight, and returns the report.
    pub async fn stop(mut self) -> LoadReport {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.snapshot()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

// === request loops with per-loop tallies (reload tests and benchmarks) ===

/// Counts of a request loop.
#[derive(Default)]
pub struct Tally {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
}

/// New connection per request, every `every`, until `stop`; at most `max` requests.
pub fn new_connection_loop(
    port: u16,
    every: Duration,
    max: u64,
    stop: Arc<AtomicBool>,
) -> (Arc<Tally>, JoinHandle<Vec<String>>) {
    let tally = Arc::new(Tally::default());
    let t = tally.clone();
    let task = tokio::spawn(async move {
        let mut errors = Vec::new();
        let mut tick = tokio::time::interval(every);
        for _ in 0..max {
            tick.tick().await;
            if stop.load(Ordering::SeqCst) {
                break;
            }
            match http_get(loopback(port), "/").await {
                Ok(r) if r.status == 200 => {
                    t.ok.fetch_add(1, Ordering::SeqCst);
                }
                other => {
                    t.failed.fetch_add(1, Ordering::SeqCst);
                    errors.push(format!("{other:?}"));
                }
            }
        }
        errors
    });
    (tally, task)
}

/// One HTTP/1.1 keep-alive connection, reused until the server says `Connection: close`
/// (then a new one). A request that fails on a reused connection is a failure: no retry.
pub fn keep_alive_loop(
    port: u16,
    every: Duration,
    max: u64,
    stop: Arc<AtomicBool>,
) -> (Arc<Tally>, JoinHandle<Vec<String>>) {
    let tally = Arc::new(Tally::default());
    let t = tally.clone();
    let task = tokio::spawn(async move {
        let mut errors = Vec::new();
        let mut conn: Option<TcpStream> = None;
        let mut tick = tokio::time::interval(every);
        for _ in 0..max {
            tick.tick().await;
            if stop.load(Ordering::SeqCst) {
                break;
            }
            if conn.is_none() {
                conn = TcpStream::connect(loopback(port)).await.ok();
            }
            let Some(stream) = conn.as_mut() else {
                t.failed.fetch_add(1, Ordering::SeqCst);
                errors.push("connect failed".into());
                continue;
            };
            match tokio::time::timeout(Duration::from_secs(5), keep_alive_get(stream)).await {
                Ok(Ok((200, close))) => {
                    t.ok.fetch_add(1, Ordering::SeqCst);
                    if close {
                        conn = None;
                    }
                }
                other => {
                    t.failed.fetch_add(1, Ordering::SeqCst);
                    errors.push(format!("{other:?}"));
                    conn = None;
                }
            }
        }
        errors
    });
    (tally, task)
}

/// GET / on a kept-alive connection: (status, whether the server closes it).
async fn keep_alive_get(stream: &mut TcpStream) -> std::io::Result<(u16, bool)> {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: keep-alive\r\n\r\n")
        .await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let eof = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed");
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(eof());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
    };
    let length: usize = header("content-length:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(eof());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let close = header("connection:").is_some_and(|v| v == "close");
    Ok((status, close))
}
