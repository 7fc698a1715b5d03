//! One task per configured service: run its checks every `check_interval`, apply rise/fall
//! per check, decide whether the service should be registered (all checks up, not
//! drained, report not throttled), and tell the supervisor when that changes.
//!
//! Checks of a service run one after the other, each bounded by its own timeout, and the
//! next round starts an interval after the previous *tick* (`MissedTickBehavior::Delay`):
//! a slow check delays the next round instead of overlapping it or causing a burst.

use std::path::PathBuf;

use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::check::Check;
use crate::config::ServiceConfig;
use crate::health::{Health, Transition};
use crate::metrics::{CheckLabels, Metrics, ThrottleLabels};
use crate::rate_limit::TokenBucket;
use common::ServiceName;

/// What a service task reports to the supervisor, on every change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceState {
    /// All checks up.
    pub healthy: bool,
    /// A maintenance file exists.
    pub drained: bool,
    /// The health is backed by evidence: up, or some check down after `fall` failures.
    pub settled: bool,
    /// The service should be registered.
    pub reported: bool,
    /// The last round of checks: `ok`, `no checks`, or the first failure; `None`
    /// before the first round.
    pub last_check: Option<String>,
}

/// A [`ServiceState`] from one generation of one service's task.
#[derive(Debug, Clone)]
pub struct ServiceUpdate {
    pub service: ServiceName,
    /// Increases each time the supervisor starts a task for the service (SIGHUP).
    pub generation: u64,
    pub state: ServiceState,
}

/// Everything a service task needs besides its checks.
pub struct ServiceTask {
    pub config: ServiceConfig,
    pub generation: u64,
    /// nerve's global maintenance file (may change on SIGHUP).
    pub global_maintenance: watch::Receiver<Option<PathBuf>>,
    pub updates: mpsc::UnboundedSender<ServiceUpdate>,
    pub metrics: Metrics,
}

impl ServiceTask {
    /// Runs until `cancel` fires (or the supervisor is gone).
    pub async fn run<C: Check>(self, checks: Vec<C>, cancel: CancellationToken) {
        let config = &self.config;
        let name = config.name.as_str();
        let instance = config.registration.name.as_str();
        let mut health: Vec<Health> = config
            .checks
            .iter()
            .map(|c| Health::new(c.rise, c.fall))
            .collect();
        let mut bucket = config
            .rate_limit
            .map(|limit| TokenBucket::new(&limit, Instant::now()));
        let mut throttled = false;
        let no_checks = checks.is_empty();
        let mut state = ServiceState {
            healthy: no_checks,
            drained: false,
            settled: no_checks,
            reported: false,
            last_check: None,
        };
        let mut sent: Option<ServiceState> = None;
        let service_labels = self.metrics.service(name);

        let mut interval = tokio::time::interval(config.check_interval);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = interval.tick() => {}
            }
            let results = tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                results = run_checks(&checks) => results,
            };
            let mut last_check = None;
            for (i, ((check, (result, took)), h)) in checks
                .iter()
                .zip(results)
                .zip(health.iter_mut())
                .enumerate()
            {
                self.metrics.check_took(name, i, took);
                let ok = result.is_ok();
                self.metrics
                    .check_runs
                    .get_or_create(&CheckLabels {
                        service: name.to_owned(),
                        result: if ok { "ok" } else { "failed" }.to_owned(),
                    })
                    .inc();
                if let Err(e) = &result {
                    let error = crate::error_chain(e);
                    debug!(service = name, instance, check = check.describe(), error = %error,
                        "check failed");
                    last_check.get_or_insert_with(|| format!("{}: {error}", check.describe()));
                }
                match h.observe(ok) {
                    Some(Transition::BecameUp) => {
                        debug!(
                            service = name,
                            instance,
                            check = check.describe(),
                            "check is up"
                        )
                    }
                    Some(Transition::BecameDown) => {
                        debug!(
                            service = name,
                            instance,
                            check = check.describe(),
                            "check is down"
                        )
                    }
                    None => {}
                }
            }

            let healthy = health.iter().all(Health::is_up);
            let settled = healthy || health.iter().any(|h| !h.is_up() && h.is_settled());
            if healthy != state.healthy {
                self.metrics
                    .health_transitions
                    .get_or_create(&service_labels)
                    .inc();
                if healthy {
                    info!(service = name, instance, "service is healthy");
                } else {
                    let failing: Vec<&str> = checks
                        .iter()
                        .zip(&health)
                        .filter(|(_, h)| !h.is_up())
                        .map(|(c, _)| c.describe())
                        .collect();
                    info!(service = name, instance, failing = ?failing, "service is unhealthy");
                }
            }
            self.metrics
                .service_healthy
                .get_or_create(&service_labels)
                .set(i64::from(healthy));

            let drained = self.maintenance_file_exists().await;
            self.metrics
                .service_drained
                .get_or_create(&service_labels)
                .set(i64::from(drained));
            if drained != state.drained {
                if drained {
                    info!(
                        service = name,
                        instance, "maintenance file present: reporting down"
                    );
                } else {
                    info!(
                        service = name,
                        instance, "maintenance file gone: back in rotation"
                    );
                }
            }

            let want = healthy && !drained;
            let mut reported = state.reported;
            if want != reported {
                let allowed = match (&mut bucket, config.rate_limit) {
                    (Some(bucket), Some(limit)) => {
                        if bucket.try_take(Instant::now()) {
                            true
                        } else {
                            self.metrics
                                .reports_throttled
                                .get_or_create(&ThrottleLabels {
                                    service: name.to_owned(),
                                    shadow: limit.shadow_mode.to_string(),
                                })
                                .inc();
                            if limit.shadow_mode {
                                info!(service = name, instance, "report would be throttled by rate_limiting (shadow mode: reporting anyway)");
                            } else if !throttled {
                                warn!(service = name, instance, "report throttled by rate_limiting; retrying each check interval");
                            }
                            limit.shadow_mode
                        }
                    }
                    _ => true,
                };
                throttled = !allowed;
                if allowed {
                    reported = want;
                }
            } else {
                throttled = false;
            }
            self.metrics
                .service_reported
                .get_or_create(&service_labels)
                .set(i64::from(reported));

            let last_check = Some(
                last_check.unwrap_or_else(|| if no_checks { "no checks" } else { "ok" }.to_owned()),
            );
            state = ServiceState {
                healthy,
                drained,
                settled,
                reported,
                last_check,
            };
            if sent.as_ref() != Some(&state) {
                let update = ServiceUpdate {
                    service: config.name.clone(),
                    generation: self.generation,
                    state: state.clone(),
                };
                if self.updates.send(update).is_err() {
                    break;
                }
                sent = Some(state.clone());
            }
        }
    }

    async fn maintenance_file_exists(&self) -> bool {
        let global = self.global_maintenance.borrow().clone();
        for file in [global.as_ref(), self.config.maintenance_file.as_ref()]
            .into_iter()
            .flatten()
        {
            if tokio::fs::try_exists(file).await.unwrap_or(false) {
                return true;
            }
        }
        false
    }
}

/// Each check's result and how long it took.
async fn run_checks<C: Check>(
    checks: &[C],
) -> Vec<(Result<(), crate::check::CheckError>, std::time::Duration)> {
    let mut results = Vec::with_capacity(checks.len());
    for check in checks {
        let started = Instant::now();
        let result = check.check().await;
        results.push((result, started.elapsed()));
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::CheckError;
    use crate::config::{CheckConfig, CheckKind};
    use crate::rate_limit::RateLimit;
    use common::{Host, InstanceId, Port, Registration, ServicePath};
    use std::collections::VecDeque;
    use std::num::NonZeroU32;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// Returns scripted results, then repeats the last one; counts concurrent runs.
    struct ScriptedCheck {
        results: Mutex<VecDeque<bool>>,
        last: Mutex<bool>,
        delay: Duration,
        running: Arc<AtomicUsize>,
        max_running: Arc<AtomicUsize>,
        runs: Arc<AtomicUsize>,
    }

    impl ScriptedCheck {
        fn new(results: &[bool], delay: Duration) -> Self {
            Self {
                results: Mutex::new(results.iter().copied().collect()),
                last: Mutex::new(false),
                delay,
                running: Arc::default(),
                max_running: Arc::default(),
                runs: Arc::default(),
            }
        }
    }

    impl Check for ScriptedCheck {
        async fn check(&self) -> Result<(), CheckError> {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_running.fetch_max(now, Ordering::SeqCst);
            self.runs.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            self.running.fetch_sub(1, Ordering::SeqCst);
            let ok = {
                let mut results = self.results.lock().unwrap();
                let mut last = self.last.lock().unwrap();
                if let Some(r) = results.pop_front() {
                    *last = r;
                }
                *last
            };
            if ok {
                Ok(())
            } else {
                Err(CheckError::Status(500))
            }
        }

        fn describe(&self) -> &str {
            "scripted"
        }
    }

    fn service(rise: u32, fall: u32, checks: usize, interval_ms: u64) -> ServiceConfig {
        ServiceConfig {
            name: ServiceName::new("web").unwrap(),
            path: ServicePath::new("/svc/web").unwrap(),
            targets: crate::config::ReportTargets::default(),
            registration: Registration {
                host: Host::parse("127.0.0.1").unwrap(),
                port: Port::new(80).unwrap(),
                name: InstanceId::new("i1").unwrap(),
                weight: None,
                haproxy_server_options: None,
                labels: Default::default(),
            },
            check_interval: Duration::from_millis(interval_ms),
            checks: (0..checks)
                .map(|_| CheckConfig {
                    name: "scripted".into(),
                    rise: NonZeroU32::new(rise).unwrap(),
                    fall: NonZeroU32::new(fall).unwrap(),
                    kind: CheckKind::Noop,
                })
                .collect(),
            rate_limit: None,
            maintenance_file: None,
        }
    }

    struct Running {
        rx: mpsc::UnboundedReceiver<ServiceUpdate>,
        cancel: CancellationToken,
        task: tokio::task::JoinHandle<()>,
        _maintenance: watch::Sender<Option<PathBuf>>,
    }

    fn start(config: ServiceConfig, checks: Vec<ScriptedCheck>) -> Running {
        let (tx, rx) = mpsc::unbounded_channel();
        let (mtx, mrx) = watch::channel(None);
        let cancel = CancellationToken::new();
        let task = ServiceTask {
            config,
            generation: 7,
            global_maintenance: mrx,
            updates: tx,
            metrics: Metrics::default(),
        };
        let task = tokio::spawn(task.run(checks, cancel.clone()));
        Running {
            rx,
            cancel,
            task,
            _maintenance: mtx,
        }
    }

    /// The `reported` values of the updates, in order, until `n` are seen.
    async fn reported(rx: &mut mpsc::UnboundedReceiver<ServiceUpdate>, n: usize) -> Vec<bool> {
        let mut out = Vec::new();
        while out.len() < n {
            let u = rx.recv().await.unwrap();
            assert_eq!(u.generation, 7);
            if out.last() != Some(&u.state.reported) {
                out.push(u.state.reported);
            }
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn needs_rise_successes_in_a_row() {
        // rise 3: two successes, a failure, two successes, then failures for ever.
        let check = ScriptedCheck::new(&[true, true, false, true, true, false], Duration::ZERO);
        let mut r = start(service(3, 2, 1, 100), vec![check]);
        let started = Instant::now();
        loop {
            let u = r.rx.recv().await.unwrap();
            assert!(!u.state.reported, "registered without 3 successes in a row");
            // Down is confirmed after `fall` failures in a row (runs 6 and 7).
            if u.state.settled {
                assert!(!u.state.healthy);
                break;
            }
        }
        assert!(started.elapsed() >= Duration::from_millis(600));
        r.cancel.cancel();
        r.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn rise_fall_cycle() {
        // rise 2, fall 2: up after runs 1-2, down after runs 4-5, up after 7-8.
        let check = ScriptedCheck::new(
            &[true, true, true, false, false, false, true, true],
            Duration::ZERO,
        );
        let mut r = start(service(2, 2, 1, 100), vec![check]);
        assert_eq!(reported(&mut r.rx, 4).await, [false, true, false, true]);
        r.cancel.cancel();
        r.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn all_checks_must_pass() {
        let a = ScriptedCheck::new(&[true], Duration::ZERO);
        let b = ScriptedCheck::new(&[false, false, true], Duration::ZERO);
        let mut r = start(service(1, 1, 2, 100), vec![a, b]);
        let mut runs_until_up = 0;
        loop {
            let u = r.rx.recv().await.unwrap();
            runs_until_up += 1;
            if u.state.reported {
                break;
            }
        }
        assert!(runs_until_up >= 2, "up while check b still failing");
        r.cancel.cancel();
        r.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn no_checks_means_up() {
        let mut r = start(service(1, 1, 0, 100), Vec::new());
        let u = r.rx.recv().await.unwrap();
        assert!(u.state.reported && u.state.healthy && u.state.settled);
        r.cancel.cancel();
        r.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn slow_checks_never_overlap_or_pile_up() {
        // Each check takes 5 intervals.
        let check = ScriptedCheck::new(&[true], Duration::from_millis(500));
        let (runs, max_running) = (check.runs.clone(), check.max_running.clone());
        let r = start(service(1, 1, 1, 100), vec![check]);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(max_running.load(Ordering::SeqCst), 1);
        let n = runs.load(Ordering::SeqCst);
        // 10 s / (500 ms check) ≈ 20 runs; a catch-up burst would make it ~100.
        assert!((15..=21).contains(&n), "{n} runs");
        r.cancel.cancel();
        r.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_interrupts_a_running_check() {
        let check = ScriptedCheck::new(&[true], Duration::from_secs(3600));
        let r = start(service(1, 1, 1, 100), vec![check]);
        tokio::time::sleep(Duration::from_secs(1)).await;
        r.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(1), r.task)
            .await
            .expect("service task ignored cancellation")
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn maintenance_file_drains_and_restores() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("web.down");
        let mut config = service(1, 1, 1, 100);
        config.maintenance_file = Some(file.clone());
        let mut r = start(config, vec![ScriptedCheck::new(&[true], Duration::ZERO)]);
        // rise 1: registered from the first check on.
        assert_eq!(reported(&mut r.rx, 1).await, [true]);
        std::fs::write(&file, "").unwrap();
        let u = r.rx.recv().await.unwrap();
        assert!(u.state.healthy && u.state.drained && !u.state.reported);
        std::fs::remove_file(&file).unwrap();
        let u = r.rx.recv().await.unwrap();
        assert!(u.state.healthy && !u.state.drained && u.state.reported);
        // The global maintenance file drains too.
        let global = dir.path().join("all.down");
        std::fs::write(&global, "").unwrap();
        r._maintenance.send_replace(Some(global));
        let u = r.rx.recv().await.unwrap();
        assert!(u.state.drained && !u.state.reported);
        r.cancel.cancel();
        r.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limiting_holds_back_flaps() {
        // Flaps every check; the bucket allows one report (burst 1), then one per 10 s.
        let script: Vec<bool> = (0..400).map(|i| i % 2 == 0).collect();
        let mut config = service(1, 1, 1, 100);
        config.rate_limit = Some(RateLimit {
            shadow_mode: false,
            average_rate: 0.1,
            max_burst: 1,
        });
        let mut r = start(config, vec![ScriptedCheck::new(&script, Duration::ZERO)]);
        let started = Instant::now();
        let mut changes = 0;
        let mut last = false;
        while started.elapsed() < Duration::from_secs(30) {
            let u = r.rx.recv().await.unwrap();
            if u.state.reported != last {
                changes += 1;
                last = u.state.reported;
            }
        }
        // 1 (burst) + 30 s × 0.1/s = 4 reports at most, against ~300 flaps.
        assert!((2..=4).contains(&changes), "{changes} reports");
        r.cancel.cancel();
        r.task.await.unwrap();
    }
}
