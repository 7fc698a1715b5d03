//! The loop of a source that is asked for its complete set every `check_interval`
//! (`ec2tag`, `dns`): set up a client (retrying with backoff), then each round publish
//! what it answered; a failed round keeps the last published set, marked stale, and
//! retries with backoff, never slower than the interval.

use std::future::Future;
use std::time::Duration;

use common::{Backoff, ServiceName};
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;

use super::publisher::{mark_stale, publish, Publisher};
use crate::backends::{BackendSet, Origin};

/// A polled source of backends.
pub(crate) trait PolledSource: Send + Sync {
    type Client: Send + Sync;
    type Error: Send;

    fn service(&self) -> &ServiceName;
    fn origin(&self) -> Origin;
    fn interval(&self) -> Duration;
    /// Builds the client; an error is logged and retried with backoff.
    fn setup(&self) -> Result<Self::Client, String>;
    /// One complete read of the source.
    fn round(
        &self,
        client: &Self::Client,
    ) -> impl Future<Output = Result<BackendSet, Self::Error>> + Send;
    /// Logs a failed round; `attempts` counts the failures in a row.
    fn log_failure(&self, e: &Self::Error, retry_in: Duration, attempts: u32);
}

/// Runs `source` until `cancel`.
pub(crate) async fn run<S: PolledSource>(source: S, out: Publisher, cancel: CancellationToken) {
    let interval = source.interval();
    let mut backoff = Backoff::new(Duration::from_secs(1).min(interval), interval);
    let client = loop {
        match source.setup() {
            Ok(c) => break c,
            Err(e) => {
                tracing::error!(service = %source.service(), origin = source.origin().as_str(),
                    error = %e, "cannot set up the discovery client");
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return,
                    _ = sleep(backoff.next_delay()) => {}
                }
            }
        }
    };
    backoff.reset();
    loop {
        let answered = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            answered = source.round(&client) => answered,
        };
        let wait = match answered {
            Ok(set) => {
                let count = set.len();
                let changed = publish(&out, set, true, source.origin());
                if changed || backoff.attempts() > 0 {
                    tracing::info!(service = %source.service(), origin = source.origin().as_str(),
                        backends = count, "discovered");
                }
                backoff.reset();
                interval
            }
            Err(e) => {
                mark_stale(&out);
                let delay = backoff.next_delay();
                source.log_failure(&e, delay, backoff.attempts());
                delay
            }
        };
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            _ = sleep(wait) => {}
        }
    }
}

/// Whether the `attempts`-th failure in a row is logged at `warn` (the first, then every
/// tenth), so that an outage does not flood the log.
pub(crate) fn loud(attempts: u32) -> bool {
    attempts <= 1 || attempts % 10 == 0
}
