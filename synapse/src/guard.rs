//! The mass-removal guard (reliability S19b, Appendix B3): when most of a service's
//! stable servers vanish at once, keep routing to the last good set for a hold time
//! instead of applying the removal, and say so.
//!
//! Why: a whole AZ partitioned from etcd, a revoked-leases accident (CVE-2026-33413 lets
//! any client revoke any lease on etcd 3.4) or a bad deploy deletes most registrations at
//! once. HAProxy's own health checks keep traffic off servers that really died, so
//! holding them for a while costs little, while applying the removal can black-hole a
//! service.
//!
//! What it must not do is fight a normal deploy (issue 17): a held deregistration keeps
//! routing to an instance that drained and stopped. So it only holds what looks like a
//! control-plane failure:
//!
//! - A window opens at the first removal after `window` without one. The servers applied
//!   just before it are the *stable set*; losses are counted against it only. A server
//!   added inside the window and removed again (a canary) never counts.
//! - The loss is the stable servers missing from the proposal, less the new servers it
//!   has (a deploy that swaps instances is not a mass removal).
//! - It trips only when the loss is at least `min_removed_servers` (default 3) *and* more
//!   than `max_removed_fraction` (default 0.5) of the stable set. Two of three
//!   instances leaving at once (a rolling restart, a SIGKILL) are applied; 20 of 24
//!   vanishing are held. A whole prefix emptied is kept by `use_previous_backends`
//!   before the guard is asked.
//!
//! While held, additions and updates still apply; only removals wait. The hold ends at
//! `hold` after the trip, or earlier when the loss drops back under the threshold (the
//! servers came back).
//!
//! [`check`] is the pure decision; [`Guards`] keeps one state per service, logs and
//! counts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;

use common::ServiceName;
use tokio::time::Instant;

use crate::backends::BackendSet;
use crate::config::GuardSettings;
use crate::counters::Counters;

impl GuardSettings {
    /// Whether losing `lost` of a stable set of `of` servers trips the guard.
    pub fn trips(&self, lost: usize, of: usize) -> bool {
        of > 0
            && lost >= self.min_removed_servers
            && (lost as f64) > self.max_removed_fraction * (of as f64)
    }
}

/// One service's guard state.
#[derive(Debug, Clone, Default)]
pub struct GuardState {
    /// The stable set (server names applied when the window opened), and when.
    reference: Option<(BTreeSet<String>, Instant)>,
    /// Set while holding: when the hold ends.
    held_until: Option<Instant>,
}

impl GuardState {
    /// When the current hold ends, if holding.
    pub fn held_until(&self) -> Option<Instant> {
        self.held_until
    }
}

/// What to route to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The proposed set, as is.
    Apply(BackendSet),
    /// The proposed set plus the servers it would remove, until `until`.
    Hold {
        set: BackendSet,
        until: Instant,
        /// This call tripped the guard (false while a hold continues).
        tripped: bool,
        /// Stable servers lost, and the stable set's size.
        lost: usize,
        of: usize,
    },
    /// A hold ended (time, or the servers came back): the proposed set.
    Release(BackendSet),
}

/// Decides what a service routes to, given what is `applied` now and what discovery and
/// the service's rules `proposed`. Pure apart from `state`.
pub fn check(
    settings: &GuardSettings,
    state: &mut GuardState,
    applied: &BackendSet,
    proposed: BackendSet,
    now: Instant,
) -> Verdict {
    if !settings.enabled || applied.is_empty() {
        *state = GuardState::default();
        return Verdict::Apply(proposed);
    }
    if state.held_until.is_none() {
        let open = state
            .reference
            .as_ref()
            .is_some_and(|(_, at)| now.saturating_duration_since(*at) < settings.window);
        if !open {
            let applied_names = names(applied);
            let proposed_names = names(&proposed);
            // A window opens with a removal; until then there is nothing to count.
            state.reference = applied_names
                .difference(&proposed_names)
                .next()
                .is_some()
                .then_some((applied_names, now));
        }
    }
    let reference = state.reference.as_ref().map(|(r, _)| r);
    let (lost, of) = reference.map_or((0, 0), |r| loss(r, &proposed));
    let trips = settings.trips(lost, of);
    match state.held_until {
        Some(until) if now < until && trips => Verdict::Hold {
            set: merge(applied, proposed),
            until,
            tripped: false,
            lost,
            of,
        },
        Some(_) => {
            // Released: the next removal opens a new window.
            *state = GuardState::default();
            Verdict::Release(proposed)
        }
        None if trips => {
            let until = now + settings.hold;
            state.held_until = Some(until);
            Verdict::Hold {
                set: merge(applied, proposed),
                until,
                tripped: true,
                lost,
                of,
            }
        }
        None => Verdict::Apply(proposed),
    }
}

fn names(set: &BackendSet) -> BTreeSet<String> {
    set.iter().map(|b| b.server_name()).collect()
}

/// (servers of the stable set `reference` gone from `proposed`, net of the new ones it
/// has; the stable set's size).
fn loss(reference: &BTreeSet<String>, proposed: &BackendSet) -> (usize, usize) {
    let proposed = names(proposed);
    let removed = reference.difference(&proposed).count();
    let added = proposed.difference(reference).count();
    (removed.saturating_sub(added), reference.len())
}

/// `proposed`, plus every applied server whose name it lacks.
fn merge(applied: &BackendSet, proposed: BackendSet) -> BackendSet {
    let keep = names(&proposed);
    let mut out = proposed;
    out.extend(
        applied
            .iter()
            .filter(|b| !keep.contains(&b.server_name()))
            .cloned(),
    );
    out
}

/// Every service's guard, with the log lines and counters around [`check`].
#[derive(Debug, Default)]
pub struct Guards {
    states: BTreeMap<ServiceName, GuardState>,
}

impl Guards {
    /// The set `service` should route to; logs and counts trips and releases.
    pub fn check(
        &mut self,
        service: &ServiceName,
        settings: &GuardSettings,
        applied: Option<&BackendSet>,
        proposed: BackendSet,
        counters: &Counters,
    ) -> BackendSet {
        let empty = BackendSet::new();
        let state = self.states.entry(service.clone()).or_default();
        let set = match check(
            settings,
            state,
            applied.unwrap_or(&empty),
            proposed,
            Instant::now(),
        ) {
            Verdict::Apply(set) => set,
            Verdict::Hold {
                set,
                until,
                tripped,
                lost,
                of,
            } => {
                if tripped {
                    Counters::inc(&counters.mass_removal_trips);
                    tracing::error!(
                        service = %service,
                        lost,
                        of,
                        max_removed_fraction = settings.max_removed_fraction,
                        min_removed_servers = settings.min_removed_servers,
                        hold = ?settings.hold,
                        "mass removal: most of the stable servers vanished at once; keeping the last good set for the hold time"
                    );
                }
                tracing::debug!(service = %service, until = ?until, "mass-removal guard holding");
                set
            }
            Verdict::Release(set) => {
                tracing::warn!(service = %service, servers = set.len(), "mass-removal guard released: applying the current set");
                set
            }
        };
        let holding = self
            .states
            .values()
            .filter(|s| s.held_until.is_some())
            .count();
        counters
            .mass_removal_holding
            .store(holding as u64, Ordering::Relaxed);
        set
    }

    /// When `service`'s hold ends, if its guard holds now.
    pub fn held_until(&self, service: &ServiceName) -> Option<Instant> {
        self.states.get(service).and_then(GuardState::held_until)
    }

    /// The earliest end of a hold (the reconcile loop wakes then to release it).
    pub fn next_release(&self) -> Option<Instant> {
        self.states
            .values()
            .filter_map(GuardState::held_until)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::backends::tests_support::backend;
    use proptest::prelude::*;

    fn set(ports: impl IntoIterator<Item = u16>) -> BackendSet {
        ports
            .into_iter()
            .map(|p| backend("i", "10.0.0.1", p))
            .collect()
    }

    fn settings() -> GuardSettings {
        GuardSettings::default()
    }

    #[test]
    fn half_or_less_applies_more_holds_then_releases_after_the_hold() {
        let s = settings();
        let mut st = GuardState::default();
        let t0 = Instant::now();
        let applied = set(1..=4);
        // 2 of 4: not more than half.
        assert_eq!(
            check(&s, &mut st, &applied, set(3..=4), t0),
            Verdict::Apply(set(3..=4))
        );
        // A third one in the same window: 3 of 4 lost → hold the applied set.
        let applied = set(3..=4);
        let v = check(&s, &mut st, &applied, set([4]), t0 + Duration::from_secs(1));
        let Verdict::Hold {
            set: held,
            tripped: true,
            lost: 3,
            of: 4,
            until,
        } = v
        else {
            panic!("{v:?}")
        };
        assert_eq!(held, set(3..=4));
        assert_eq!(until, t0 + Duration::from_secs(31));
        // Still held before the end, released at it.
        let v = check(&s, &mut st, &held, set([4]), t0 + Duration::from_secs(30));
        assert!(matches!(v, Verdict::Hold { tripped: false, .. }), "{v:?}");
        assert_eq!(
            check(&s, &mut st, &held, set([4]), until),
            Verdict::Release(set([4]))
        );
        assert_eq!(st.held_until(), None);
    }

    #[test]
    fn replacement_is_not_removal_and_disabled_never_holds() {
        let mut st = GuardState::default();
        let t0 = Instant::now();
        assert_eq!(
            check(&settings(), &mut st, &set([1]), set([2, 3]), t0),
            Verdict::Apply(set([2, 3]))
        );
        let off = GuardSettings {
            enabled: false,
            ..settings()
        };
        assert_eq!(
            check(&off, &mut st, &set(1..=10), set([1]), t0),
            Verdict::Apply(set([1]))
        );
    }

    #[test]
    fn servers_coming_back_end_the_hold_early_and_additions_apply_while_held() {
        let s = settings();
        let mut st = GuardState::default();
        let t0 = Instant::now();
        let applied = set(1..=6);
        let v = check(&s, &mut st, &applied, set([1]), t0);
        assert!(matches!(v, Verdict::Hold { tripped: true, .. }));
        // A new server while held: routed, the vanished ones kept.
        let v = check(&s, &mut st, &applied, set([1, 9]), t0);
        let Verdict::Hold { set: held, .. } = v else {
            panic!("{v:?}")
        };
        assert_eq!(held, set([1, 2, 3, 4, 5, 6, 9]));
        // They come back: released at once.
        assert_eq!(
            check(&s, &mut st, &held, set(1..=6), t0 + Duration::from_secs(2)),
            Verdict::Release(set(1..=6))
        );
    }

    #[test]
    fn servers_added_before_a_mass_removal_count() {
        // 1 server, 100 added, then the 100 expire a few seconds later (S19b): they
        // were applied before the first removal, so they are the stable set.
        let s = settings();
        let mut st = GuardState::default();
        let t0 = Instant::now();
        assert!(matches!(
            check(&s, &mut st, &set([1]), set(1..=101), t0),
            Verdict::Apply(_)
        ));
        let v = check(
            &s,
            &mut st,
            &set(1..=101),
            set([1]),
            t0 + Duration::from_secs(6),
        );
        assert!(
            matches!(
                v,
                Verdict::Hold {
                    tripped: true,
                    lost: 100,
                    of: 101,
                    ..
                }
            ),
            "{v:?}"
        );
    }

    #[test]
    fn a_new_window_opens_after_quiet() {
        let s = settings();
        let mut st = GuardState::default();
        let t0 = Instant::now();
        // 2 of 4 now, and 1 of the remaining 2 a window later: never more than half of
        // a window's servers.
        assert!(matches!(
            check(&s, &mut st, &set(1..=4), set(1..=2), t0),
            Verdict::Apply(_)
        ));
        assert!(matches!(
            check(&s, &mut st, &set(1..=2), set([1]), t0 + s.window),
            Verdict::Apply(_)
        ));
    }

    #[test]
    fn two_of_three_leaving_within_seconds_is_applied() {
        // One nerve stopped cleanly, another SIGKILLed 3 s later (its key expires).
        let s = settings();
        let mut st = GuardState::default();
        let t0 = Instant::now();
        assert_eq!(
            check(&s, &mut st, &set(1..=3), set(2..=3), t0),
            Verdict::Apply(set(2..=3))
        );
        assert_eq!(
            check(
                &s,
                &mut st,
                &set(2..=3),
                set([3]),
                t0 + Duration::from_secs(3)
            ),
            Verdict::Apply(set([3]))
        );
        // A rolling restart: each one leaves and comes back.
        let mut applied = set(1..=3);
        for (i, p) in (1..=3).enumerate() {
            let t = t0 + Duration::from_secs(20 + 2 * i as u64);
            let without: BackendSet = (1..=3)
                .filter(|x| *x != p)
                .map(|x| backend("i", "10.0.0.1", x))
                .collect();
            assert_eq!(
                check(&s, &mut st, &applied, without.clone(), t),
                Verdict::Apply(without.clone())
            );
            applied = without;
            let t = t + Duration::from_secs(1);
            assert_eq!(
                check(&s, &mut st, &applied, set(1..=3), t),
                Verdict::Apply(set(1..=3))
            );
            applied = set(1..=3);
        }
    }

    #[test]
    fn canary_churn_never_trips() {
        // 3 stable servers; a canary is added and deleted every 2.5 s, for 5 minutes.
        let s = settings();
        let mut st = GuardState::default();
        let mut now = Instant::now();
        let mut applied = set(1..=3);
        for i in 0..120u16 {
            now += Duration::from_millis(1250);
            let with: BackendSet = set(1..=3).into_iter().chain(set([100 + i])).collect();
            assert_eq!(
                check(&s, &mut st, &applied, with.clone(), now),
                Verdict::Apply(with.clone())
            );
            now += Duration::from_millis(1250);
            let v = check(&s, &mut st, &with, set(1..=3), now);
            assert_eq!(v, Verdict::Apply(set(1..=3)), "delete {i}");
            applied = set(1..=3);
        }
    }

    #[test]
    fn a_wipe_is_held_and_the_minimum_is_configurable() {
        let s = settings();
        let mut st = GuardState::default();
        let t0 = Instant::now();
        let v = check(&s, &mut st, &set(1..=24), set(21..=24), t0);
        assert!(
            matches!(
                v,
                Verdict::Hold {
                    tripped: true,
                    lost: 20,
                    of: 24,
                    ..
                }
            ),
            "{v:?}"
        );
        // 3 of 3 is held too; 2 of 2 is not (under the minimum: use_previous_backends
        // keeps an emptied prefix instead).
        let mut st = GuardState::default();
        let v = check(&s, &mut st, &set(1..=3), set([]), t0);
        assert!(matches!(v, Verdict::Hold { lost: 3, of: 3, .. }), "{v:?}");
        let mut st = GuardState::default();
        assert_eq!(
            check(&s, &mut st, &set(1..=2), set([]), t0),
            Verdict::Apply(set([]))
        );
        let strict = GuardSettings {
            min_removed_servers: 2,
            ..s
        };
        let mut st = GuardState::default();
        let v = check(&strict, &mut st, &set(1..=3), set([3]), t0);
        assert!(matches!(v, Verdict::Hold { lost: 2, of: 3, .. }), "{v:?}");
    }

    proptest! {
        /// Whatever the sequence: an applied proposal never loses more than the allowed
        /// fraction of the window's servers; a hold keeps every applied server and adds
        /// every proposed one; a hold ends early only when the loss is back under the
        /// threshold.
        #[test]
        fn never_removes_more_than_allowed_within_the_hold(
            steps in proptest::collection::vec(
                (proptest::collection::btree_set(1u16..40, 0..30), 0u64..4_000), 1..20),
            fraction in 0.1f64..0.9,
        ) {
            let s = GuardSettings { max_removed_fraction: fraction, ..settings() };
            let mut st = GuardState::default();
            let mut now = Instant::now();
            let mut applied = set(1..=20);
            let within = |r: &BTreeSet<String>, out: &BackendSet| {
                let (lost, of) = loss(r, out);
                !s.trips(lost, of)
            };
            for (ports, dt) in steps {
                now += Duration::from_millis(dt);
                let proposed = set(ports);
                let before = applied.clone();
                let held_until = st.held_until;
                let reference = st.reference.clone();
                let out = match check(&s, &mut st, &before, proposed.clone(), now) {
                    Verdict::Apply(x) => {
                        prop_assert_eq!(&x, &proposed);
                        if let Some((r, _)) = &st.reference {
                            prop_assert!(within(r, &x));
                        }
                        x
                    }
                    Verdict::Release(x) => {
                        prop_assert_eq!(&x, &proposed);
                        let until = held_until.expect("released without a hold");
                        let (r, _) = reference.expect("a hold has a reference");
                        prop_assert!(now >= until || within(&r, &x));
                        x
                    }
                    Verdict::Hold { set: x, until, .. } => {
                        prop_assert!(until > now);
                        prop_assert!(names(&before).is_subset(&names(&x)));
                        prop_assert!(names(&proposed).is_subset(&names(&x)));
                        x
                    }
                };
                applied = out;
            }
        }
    }
}
