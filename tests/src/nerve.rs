//! nerve in-process, on its own Tokio runtime, so that a test can stop it either way a
//! host does: [`InProcessNerve::terminate`] is SIGTERM (the clean stop: nerve revokes its
//! lease, the key goes at once), [`InProcessNerve::kill`] is SIGKILL (the runtime is
//! dropped without running any more of nerve's code: the keep-alives stop and the key
//! expires after the lease TTL). For tests that need a real nerve process, see the fault
//! suite's re-executed children.

use std::time::Duration;

use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running nerve.
pub struct InProcessNerve {
    runtime: Option<Runtime>,
    cancel: CancellationToken,
    task: Option<JoinHandle<Result<(), nerve::RunError>>>,
}

impl InProcessNerve {
    /// Parses `config_text` (panicking on errors) and runs nerve on it.
    pub fn start(config_text: &str) -> Self {
        let config = nerve::config::parse(config_text, &Default::default())
            .unwrap_or_else(|e| panic!("nerve config:\n{e}\n{config_text}"));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("nerve runtime");
        let cancel = CancellationToken::new();
        let task = runtime.spawn(nerve::run(config, cancel.clone()));
        Self {
            runtime: Some(runtime),
            cancel,
            task: Some(task),
        }
    }

    /// SIGTERM: a clean stop (nerve revokes its lease); waits for it.
    pub async fn terminate(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
        }
    }

    /// SIGKILL: nerve's tasks are dropped where they stand; nothing more of it runs.
    pub fn kill(mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for InProcessNerve {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
