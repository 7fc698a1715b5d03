//! Rise/fall hysteresis for one check: a pure state machine, no clocks and no I/O.
//!
//! A check starts **down**: a service registers only after `rise` consecutive successes,
//! so a restarting nerve never advertises a service it has not seen working. Once up, it
//! goes down after `fall` consecutive failures. Any other sequence keeps the previous
//! state. This is SmartStack nerve's ring-buffer rule ("the last `rise` results all true"
//! / "the last `fall` results all false") written as two streak counters.

use std::num::NonZeroU32;

/// A change of state reported by [`Health::observe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    BecameUp,
    BecameDown,
}

/// The health of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    up: bool,
    rise: NonZeroU32,
    fall: NonZeroU32,
    /// Consecutive successes up to now (0 after a failure).
    successes: u32,
    /// Consecutive failures up to now (0 after a success).
    failures: u32,
}

impl Health {
    /// A check that has not been run yet: down.
    pub fn new(rise: NonZeroU32, fall: NonZeroU32) -> Self {
        Self {
            up: false,
            rise,
            fall,
            successes: 0,
            failures: 0,
        }
    }

    /// Feeds one check result; returns a transition when a threshold is reached.
    pub fn observe(&mut self, ok: bool) -> Option<Transition> {
        if ok {
            self.successes = self.successes.saturating_add(1);
            self.failures = 0;
            if !self.up && self.successes >= self.rise.get() {
                self.up = true;
                return Some(Transition::BecameUp);
            }
        } else {
            self.failures = self.failures.saturating_add(1);
            self.successes = 0;
            if self.up && self.failures >= self.fall.get() {
                self.up = false;
                return Some(Transition::BecameDown);
            }
        }
        None
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// True once the state is backed by evidence: up, or down with at least `fall`
    /// consecutive failures seen. A fresh check is down but not settled; a SIGHUP
    /// replacement waits for its new checks to settle before it takes over.
    pub fn is_settled(&self) -> bool {
        self.up || self.failures >= self.fall.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn health(rise: u32, fall: u32) -> Health {
        Health::new(
            NonZeroU32::new(rise).unwrap(),
            NonZeroU32::new(fall).unwrap(),
        )
    }

    #[test]
    fn table() {
        use Transition::*;
        // rise 2, fall 3.
        let steps: &[(bool, bool, Option<Transition>)] = &[
            // (ok, up after, transition)
            (true, false, None),
            (false, false, None), // a failure resets the rise streak
            (true, false, None),
            (true, true, Some(BecameUp)),
            (true, true, None),
            (false, true, None),
            (false, true, None),
            (true, true, None), // a success resets the fall streak
            (false, true, None),
            (false, true, None),
            (false, false, Some(BecameDown)),
            (false, false, None),
            (true, false, None),
            (true, true, Some(BecameUp)),
        ];
        let mut h = health(2, 3);
        assert!(!h.is_up() && !h.is_settled());
        for (i, &(ok, up, transition)) in steps.iter().enumerate() {
            assert_eq!(h.observe(ok), transition, "step {i}");
            assert_eq!(h.is_up(), up, "step {i}");
        }
    }

    #[test]
    fn rise_one_fall_one_follows_every_result() {
        let mut h = health(1, 1);
        assert_eq!(h.observe(true), Some(Transition::BecameUp));
        assert_eq!(h.observe(false), Some(Transition::BecameDown));
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(true), Some(Transition::BecameUp));
    }

    #[test]
    fn settles_when_down_is_confirmed() {
        let mut h = health(3, 2);
        h.observe(false);
        assert!(!h.is_settled());
        h.observe(false);
        assert!(h.is_settled() && !h.is_up());
        h.observe(true);
        assert!(!h.is_settled());
    }

    proptest! {
        /// Never up before `rise` consecutive successes; never down before `fall`
        /// consecutive failures; transitions happen exactly when the state changes.
        #[test]
        fn never_flips_early(rise in 1u32..6, fall in 1u32..6, results in proptest::collection::vec(any::<bool>(), 0..200)) {
            let mut h = health(rise, fall);
            let mut was_up = false;
            for (i, &ok) in results.iter().enumerate() {
                let t = h.observe(ok);
                let tail = &results[..=i];
                let streak = tail.iter().rev().take_while(|&&r| r == ok).count() as u32;
                match t {
                    Some(Transition::BecameUp) => {
                        prop_assert!(ok && !was_up && streak >= rise);
                    }
                    Some(Transition::BecameDown) => {
                        prop_assert!(!ok && was_up && streak >= fall);
                    }
                    None => prop_assert_eq!(h.is_up(), was_up),
                }
                if h.is_up() && !was_up {
                    prop_assert!(streak >= rise);
                }
                if !h.is_up() && was_up {
                    prop_assert!(streak >= fall);
                }
                // The ring-buffer rule: `rise` trues in a row while down must flip it up.
                if !was_up && ok && streak >= rise {
                    prop_assert!(h.is_up());
                }
                if was_up && !ok && streak >= fall {
                    prop_assert!(!h.is_up());
                }
                was_up = h.is_up();
            }
        }
    }
}
