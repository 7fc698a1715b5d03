//! A bounded loopback load generator (reliability §2.1, §4.1): HTTP GETs at a fixed rate,
//! each on a **new** TCP connection (so accepts during reloads are exercised), each with
//! a timeout; it counts successes by the backend that answered and keeps every failure
//! with its time. Bounded in requests and in time: it stops at whichever comes first, or
//! when [`Load::stop`] is called.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::{interval, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::http::http_get_timeout;

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
