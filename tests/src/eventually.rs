//! Polling with a deadline, in place of fixed sleeps: a test states the condition it waits
//! for, and a failure says what was last seen instead of "timed out".

use std::fmt::Debug;
use std::future::Future;
use std::panic::Location;
use std::time::Duration;

use tokio::time::{sleep, timeout_at, Instant};

/// What one attempt of [`eventually`] returned: success with a value, or not yet, with a
/// description of what was observed (shown if the deadline passes).
pub trait Outcome {
    /// What [`eventually`] returns on success.
    type Output;
    /// `Ok(value)` when the condition holds, `Err(observed)` when it does not (yet).
    fn into_outcome(self) -> Result<Self::Output, String>;
}

impl Outcome for bool {
    type Output = ();
    fn into_outcome(self) -> Result<(), String> {
        if self {
            Ok(())
        } else {
            Err("false".to_owned())
        }
    }
}

impl<T> Outcome for Option<T> {
    type Output = T;
    fn into_outcome(self) -> Result<T, String> {
        self.ok_or_else(|| "None".to_owned())
    }
}

impl<T, E: Debug> Outcome for Result<T, E> {
    type Output = T;
    fn into_outcome(self) -> Result<T, String> {
        self.map_err(|e| format!("{e:?}"))
    }
}

/// Calls `attempt` until it succeeds (`true`, `Some`, `Ok`) and returns the success value.
/// Panics once `timeout` has passed, with the caller's location and the last observation
/// (the `Err`'s `Debug`, `None` or `false`): return `Err(format!(...))` with what you saw
/// to get a useful message. An attempt still running at the deadline is abandoned.
///
/// Attempts start 5 ms apart and back off to 100 ms.
///
/// ```no_run
/// # async fn demo(backend: integration_tests::Backend) {
/// use std::time::Duration;
/// use integration_tests::eventually;
/// eventually(Duration::from_secs(5), || async {
///     let n = backend.requests();
///     if n >= 2 { Ok(n) } else { Err(format!("{n} requests")) }
/// })
/// .await;
/// # }
/// ```
#[track_caller]
pub fn eventually<F, Fut, O>(timeout: Duration, mut attempt: F) -> impl Future<Output = O::Output>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = O>,
    O: Outcome,
{
    // `#[track_caller]` does not reach into an `async fn`, so capture the caller here.
    let caller = Location::caller();
    async move {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(5);
        let mut attempts = 0u32;
        let mut last = String::from("no attempt finished");
        loop {
            attempts += 1;
            match timeout_at(deadline, attempt()).await {
                Ok(outcome) => match outcome.into_outcome() {
                    Ok(value) => return value,
                    Err(observed) => last = observed,
                },
                Err(_) => {
                    last = format!(
                        "attempt {attempts} still running at the deadline; before it: {last}"
                    );
                }
            }
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "eventually (at {caller}): condition not met within {timeout:?} \
                     ({attempts} attempts); last observed: {last}"
                );
            }
            sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn returns_the_first_success() {
        let calls = AtomicU32::new(0);
        let value = eventually(Duration::from_secs(5), || async {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            if n >= 3 {
                Ok(n)
            } else {
                Err(format!("only {n}"))
            }
        })
        .await;
        assert_eq!(value, 3);
    }

    #[tokio::test]
    async fn panics_with_the_last_observation() {
        let result = tokio::spawn(async {
            eventually(Duration::from_millis(50), || async {
                Err::<(), _>("the backend said 503")
            })
            .await;
        })
        .await;
        let panic = result
            .expect_err("eventually must panic on timeout")
            .into_panic();
        let message = panic
            .downcast_ref::<String>()
            .expect("panic message is a String");
        assert!(message.contains("the backend said 503"), "{message}");
        assert!(message.contains("eventually.rs"), "{message}");
    }

    #[tokio::test]
    async fn a_hanging_attempt_does_not_outlive_the_deadline() {
        let result = tokio::spawn(async {
            eventually(Duration::from_millis(50), || async {
                std::future::pending::<bool>().await
            })
            .await;
        })
        .await;
        assert!(result.is_err());
    }
}
