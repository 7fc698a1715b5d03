//! Servers HAProxy refuses, left out (issue 17: a blast radius of one).
//!
//! A registration can pass the allow-list and still be refused by HAProxy: a host name
//! that does not resolve, or whatever a future HAProxy checks that we do not. Before,
//! such a server stayed in every render, so every later file failed `haproxy -c` and
//! one bad registration froze the config of every synapse watching its prefix. Now the
//! candidate's new servers are bisected with the check ([`find_refused`]) and the ones
//! it refuses are quarantined: left out of every render until their value changes (then
//! they are tried again) or they go away. Each one is logged once, counted per service
//! and listed in `/status` with HAProxy's error line.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use common::ServiceName;

use crate::backends::{Backend, BackendSet};

/// One quarantined server: the value HAProxy refused, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    pub backend: Backend,
    /// HAProxy's error line about it.
    pub error: String,
}

/// Every service's quarantined servers, by server name.
#[derive(Debug, Clone, Default)]
pub struct Quarantine {
    by_service: BTreeMap<ServiceName, BTreeMap<String, Quarantined>>,
}

impl Quarantine {
    /// `desired` without the quarantined servers (borrowed when there are none).
    /// Entries whose server is gone, or whose value changed (it is tried again), are
    /// dropped first.
    pub fn filter<'a>(
        &mut self,
        desired: &'a BTreeMap<ServiceName, BackendSet>,
    ) -> Cow<'a, BTreeMap<ServiceName, BackendSet>> {
        self.by_service.retain(|service, entries| {
            let Some(set) = desired.get(service) else {
                return false;
            };
            entries.retain(|name, q| {
                let kept = set.contains(&q.backend);
                if !kept {
                    tracing::info!(service = %service, server = %name, "a quarantined server changed or went away: trying it again");
                }
                kept
            });
            !entries.is_empty()
        });
        if self.by_service.is_empty() {
            return Cow::Borrowed(desired);
        }
        let filtered = desired
            .iter()
            .map(|(service, set)| {
                let set = match self.by_service.get(service) {
                    Some(q) => set
                        .iter()
                        .filter(|b| q.get(&b.server_name()).is_none_or(|q| q.backend != **b))
                        .cloned()
                        .collect(),
                    None => set.clone(),
                };
                (service.clone(), set)
            })
            .collect();
        Cow::Owned(filtered)
    }

    /// Quarantines `backend` of `service`; logs it the first time.
    pub fn add(&mut self, service: &ServiceName, backend: Backend, error: String) {
        let name = backend.server_name();
        tracing::error!(
            service = %service,
            server = %name,
            error = %error,
            "HAProxy refuses this server: left out until its registration changes (quarantined)"
        );
        self.by_service
            .entry(service.clone())
            .or_default()
            .insert(name, Quarantined { backend, error });
    }

    /// Server name → error line, per service (for `/status` and the metrics).
    pub fn report(&self) -> BTreeMap<ServiceName, BTreeMap<String, String>> {
        self.by_service
            .iter()
            .map(|(s, q)| {
                let q = q
                    .iter()
                    .map(|(n, e)| (n.clone(), e.error.clone()))
                    .collect();
                (s.clone(), q)
            })
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.by_service.is_empty()
    }

    /// Quarantined servers, all services.
    pub fn len(&self) -> usize {
        self.by_service.values().map(BTreeMap::len).sum()
    }
}

/// A server of the candidate: its service and value.
pub type Suspect = (ServiceName, Backend);

/// The servers of `desired` that are not in `good` (the sets of the last file that
/// passed): the only ones a failed check can be blamed on.
pub fn suspects(
    desired: &BTreeMap<ServiceName, BackendSet>,
    good: Option<&BTreeMap<ServiceName, BackendSet>>,
) -> Vec<Suspect> {
    desired
        .iter()
        .flat_map(|(service, set)| {
            let known = good.and_then(|g| g.get(service));
            set.iter()
                .filter(move |b| known.is_none_or(|k| !k.contains(*b)))
                .map(move |b| (service.clone(), b.clone()))
        })
        .collect()
}

/// `desired` without `out`.
pub fn without(
    desired: &BTreeMap<ServiceName, BackendSet>,
    out: &BTreeSet<Suspect>,
) -> BTreeMap<ServiceName, BackendSet> {
    desired
        .iter()
        .map(|(service, set)| {
            let set = set
                .iter()
                .filter(|b| !out.contains(&(service.clone(), (*b).clone())))
                .cloned()
                .collect();
            (service.clone(), set)
        })
        .collect()
}

/// Bisects `suspects` with `check` (which is given the servers to leave out): `None`
/// when the check fails without any of them (the operator's own lines, or something
/// else no server causes), else the refused ones with the check's output for each.
/// Checks: 1 + about 2·k·log2(n) for k refused of n.
pub async fn find_refused<F, Fut>(
    suspects: Vec<Suspect>,
    mut check: F,
) -> Option<Vec<(Suspect, String)>>
where
    F: FnMut(BTreeSet<Suspect>) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut left_out: BTreeSet<Suspect> = suspects.iter().cloned().collect();
    if check(left_out.clone()).await.is_err() {
        return None;
    }
    let mut refused = Vec::new();
    // Groups still to try, each against everything accepted so far.
    let mut stack = vec![suspects];
    while let Some(group) = stack.pop() {
        let mut trial = left_out.clone();
        for s in &group {
            trial.remove(s);
        }
        match check(trial.clone()).await {
            Ok(()) => left_out = trial,
            Err(output) if group.len() == 1 => {
                let mut group = group;
                refused.extend(group.pop().map(|s| (s, output)));
            }
            Err(_) => {
                let mut a = group;
                let b = a.split_off(a.len() / 2);
                stack.push(b);
                stack.push(a);
            }
        }
    }
    Some(refused)
}

/// HAProxy's error line about `server` in a check's output (the `[ALERT]` naming it),
/// else the output itself.
pub fn error_line(output: &str, server: &str) -> String {
    output
        .split("[ALERT]")
        .find(|part| part.contains(server))
        .map_or(output, str::trim)
        .chars()
        .take(500)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::tests_support::backend;

    fn svc() -> ServiceName {
        ServiceName::new("web").unwrap()
    }

    #[tokio::test]
    async fn bisect_finds_every_refused_server_and_blames_none_for_the_operators_lines() {
        let all: Vec<Suspect> = (1..=40)
            .map(|p| (svc(), backend("i", "10.0.0.1", p)))
            .collect();
        let bad: BTreeSet<u16> = [3, 17, 18, 40].into();
        let checks = std::cell::Cell::new(0);
        let check = |out: BTreeSet<Suspect>| {
            checks.set(checks.get() + 1);
            let failing = all
                .iter()
                .filter(|s| !out.contains(*s))
                .find(|s| bad.contains(&s.1.port.get()))
                .map(|s| format!("[ALERT] x : 'server web/{}' : invalid", s.1.server_name()));
            async move { failing.map_or(Ok(()), Err) }
        };
        let found = find_refused(all.clone(), check).await.unwrap();
        let ports: BTreeSet<u16> = found.iter().map(|(s, _)| s.1.port.get()).collect();
        assert_eq!(ports, bad);
        assert!(checks.get() < 40, "{} checks", checks.get());
        let (s, out) = &found[0];
        assert!(error_line(out, &s.1.server_name()).starts_with("x : 'server web/"));
        // Failing without any suspect: nobody is blamed.
        assert_eq!(
            find_refused(all, |_| async { Err("operator".to_owned()) }).await,
            None
        );
    }

    #[test]
    fn a_quarantined_server_is_left_out_until_its_value_changes() {
        let mut q = Quarantine::default();
        let a = backend("a", "10.0.0.1", 80);
        let b = backend("b", "10.0.0.2", 80);
        q.add(&svc(), a.clone(), "refused".into());
        let desired = BTreeMap::from([(svc(), BackendSet::from([a.clone(), b.clone()]))]);
        assert_eq!(q.filter(&desired)[&svc()], BackendSet::from([b.clone()]));
        assert_eq!(q.report()[&svc()]["a_10.0.0.1:80"], "refused");
        // The same name with another value (here: a weight) is tried again.
        let mut a2 = a.clone();
        a2.weight = common::Weight::new(3);
        let desired = BTreeMap::from([(svc(), BackendSet::from([a2.clone(), b]))]);
        assert_eq!(q.filter(&desired)[&svc()].len(), 2);
        assert!(q.is_empty());
    }
}
