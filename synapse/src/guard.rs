//! The mass-removal guard (reliability S19b, Appendix B3): when more than a fraction of a
//! service's servers vanish within one window, keep routing to the last good set for a
//! hold time instead of applying the removal, and say so.
//!
//! Why: a whole AZ partitioned from etcd, a revoked-leases accident (CVE-2026-33413 lets
//! any client revoke any lease on etcd 3.4) or a bad deploy deletes most registrations at
//! once. HAProxy's own health checks keep traffic off servers that really died, so
//! holding them for a while costs little, while applying the removal can black-hole a
//! service. Envoy's panic threshold is the same trade-off.
//!
//! Counting: a server "vanishes" when its server name leaves the set; servers replaced by
//! new ones in the same window do not count (a deploy that swaps instances is not a mass
//! removal). So the loss is `removed - added`, against every server applied since the
//! window opened (the first change after `window` of quiet). While held, additions and updates
//! still apply; only removals wait. The hold ends at `hold` after the trip, or earlier
//! when the loss drops back under the threshold (the servers came back).
//!
//! [`check`] is the pure decision; [`Guards`] keeps one state per service, logs and
//! counts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::ServiceName;
use tokio::time::Instant;

use crate::backends::BackendSet;
use crate::counters::Counters;

/// The guard's settings (config keys `mass_removal_guard.*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuardSettings {
    pub enabled: bool,
    /// Trip when more than this fraction of the window's servers vanish (0 < f < 1).
    pub max_removed_fraction: f64,
    /// How long removals count together.
    pub window: Duration,
    /// How long the last good set is kept after a trip.
    pub hold: Duration,
}

impl Default for GuardSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            max_removed_fraction: 0.5,
            window: Duration::from_secs(10),
            hold: Duration::from_secs(30),
        }
    }
}

/// One service's guard state.
#[derive(Debug, Clone, Default)]
pub struct GuardState {
    /// Server names applied when the window opened, and when.
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
        /// Servers lost in the window, and the window's server count.
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
        match &mut state.reference {
            // Servers applied during the window count too (a burst of additions right
            // before a mass expiry must not hide it).
            Some((r, at)) if now.saturating_duration_since(*at) < settings.window => {
                r.extend(names(applied));
            }
            _ => state.reference = Some((names(applied), now)),
        }
    }
    let reference = state.reference.as_ref().map(|(r, _)| r);
    let (lost, of) = reference.map_or((0, 0), |r| loss(r, &proposed));
    let trips = of > 0 && (lost as f64) > settings.max_removed_fraction * (of as f64);
    match state.held_until {
        Some(until) if now < until && trips => Verdict::Hold {
            set: merge(applied, proposed),
            until,
            tripped: false,
            lost,
            of,
        },
        Some(_) => {
            // Released: a new window starts from what is applied from now on.
            *state = GuardState {
                reference: Some((names(&proposed), now)),
                held_until: None,
            };
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

/// (servers of `reference` gone from `proposed` net of new ones, `reference`'s size).
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
                        hold = ?settings.hold,
                        "mass removal: most servers vanished at once; keeping the last good set for the hold time"
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
    fn additions_within_the_window_count_for_a_removal_right_after() {
        // 1 server, 100 added, then the 100 expire before the window ends (S19b).
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
                (lost as f64) <= fraction * (of as f64)
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
