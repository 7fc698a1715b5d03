//! synapse running in-process, in the test's own runtime: started from a config text,
//! cancelled (and awaited) on [`InProcessSynapse::stop`], cancelled on drop. Its
//! [`Counters`] are readable while it runs.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use synapse::counters::Counters;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a cancelled synapse may take to stop (a managed HAProxy included).
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A running synapse.
#[derive(Debug)]
pub struct InProcessSynapse {
    cancel: CancellationToken,
    task: Option<JoinHandle<Result<(), synapse::RunError>>>,
    pub counters: Arc<Counters>,
}

impl InProcessSynapse {
    /// Parses `config_text` (panicking with the errors and the text if it is invalid) and
    /// runs synapse on it. Must be called inside a Tokio runtime.
    pub fn start(config_text: &str) -> Self {
        let config = synapse::Config::parse(config_text, None)
            .unwrap_or_else(|e| panic!("config:\n{e}\n{config_text}"));
        let cancel = CancellationToken::new();
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(synapse::run_with(config, counters.clone(), cancel.clone()));
        Self {
            cancel,
            task: Some(task),
            counters,
        }
    }

    /// Loads the config file at `path` (panicking if it is invalid) and runs synapse
    /// on it the way the binary does: re-reading `path` on every SIGHUP. Returns once
    /// synapse listens for SIGHUP (before that, SIGHUP would end the test process).
    pub async fn start_reloading(path: &std::path::Path) -> Self {
        let config = synapse::Config::load(path)
            .unwrap_or_else(|e| panic!("config {}:\n{e}", path.display()));
        let cancel = CancellationToken::new();
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(synapse::run_reloading(
            config,
            path.to_owned(),
            counters.clone(),
            cancel.clone(),
        ));
        let started = Self {
            cancel,
            task: Some(task),
            counters,
        };
        crate::eventually(Duration::from_secs(20), || async {
            started.counters.listening_for_sighup()
        })
        .await;
        started
    }

    /// Sends SIGHUP to this process (the in-process synapse re-reads its file).
    pub fn sighup(&self) {
        nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGHUP)
            .expect("SIGHUP to self");
    }

    /// Whether `run` is still going (synapse never exits on its own).
    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// One counter, e.g. `synapse.get(|c| &c.relists)`.
    pub fn get(&self, counter: fn(&Counters) -> &AtomicU64) -> u64 {
        Counters::get(counter(&self.counters))
    }

    /// Successful HAProxy reloads so far.
    pub fn reloads(&self) -> u64 {
        self.get(|c| &c.reloads)
    }

    /// Cancels synapse and waits for a clean stop; panics if it does not stop in time,
    /// panicked, or returned an error.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(STOP_TIMEOUT, task)
                .await
                .unwrap_or_else(|_| panic!("synapse did not stop within {STOP_TIMEOUT:?}"))
                .expect("synapse panicked")
                .expect("synapse returned an error");
        }
    }
}

impl Drop for InProcessSynapse {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
