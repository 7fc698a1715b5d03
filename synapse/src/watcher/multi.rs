//! The `multi` watcher: runs child watchers and combines their sets with a resolver
//! (airbnb synapse's `multi`): `union`, or `sequential` — the first child in order that
//! is fresh and non-empty, which makes "etcd first, EC2 tags when etcd is away".

use std::sync::Arc;

use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::publisher::{Publisher, Watcher};
use crate::backends::{Discovered, Origin};
use crate::config::Resolver;
use crate::counters::Counters;

/// Children (any watchers: `AnyWatcher`s in a run) plus a resolver.
pub struct MultiWatcher<W> {
    children: Vec<(String, W)>,
    resolver: Resolver,
    counters: Option<Arc<Counters>>,
}

impl<W> MultiWatcher<W> {
    pub fn new(
        children: Vec<(String, W)>,
        resolver: Resolver,
        counters: Option<Arc<Counters>>,
    ) -> Self {
        Self {
            children,
            resolver,
            counters,
        }
    }
}

impl<W: Watcher> Watcher for MultiWatcher<W> {
    async fn run(self, out: Publisher, cancel: CancellationToken) {
        let changed = Arc::new(Notify::new());
        let mut tasks = JoinSet::new();
        let mut inputs = Vec::new();
        for (name, child) in self.children {
            let (tx, mut rx) = watch::channel(None);
            tasks.spawn(child.run(tx, cancel.child_token()));
            inputs.push((name, rx.clone()));
            let changed = changed.clone();
            tasks.spawn(async move {
                while rx.changed().await.is_ok() {
                    changed.notify_one();
                }
            });
        }
        order_children(&mut inputs, &self.resolver);
        let mut source: Option<Source> = None;
        loop {
            let snapshot: Vec<Option<Discovered>> =
                inputs.iter().map(|(_, rx)| rx.borrow().clone()).collect();
            let previous = out.borrow().clone();
            if let Some((d, chosen)) = combine(&self.resolver, &snapshot, previous.as_ref()) {
                if chosen != source {
                    let name = |s: Option<Source>| match s {
                        Some(Source::Child(i)) => inputs[i].0.clone(),
                        Some(Source::All) => "all".to_owned(),
                        Some(Source::Held) => "last known set".to_owned(),
                        None => "none".to_owned(),
                    };
                    tracing::info!(
                        from = %name(source),
                        to = %name(chosen),
                        backends = d.backends.len(),
                        "discovery source switched"
                    );
                    source = chosen;
                    if let Some(counters) = &self.counters {
                        crate::counters::Counters::inc(&counters.source_switches);
                    }
                }
                out.send_if_modified(|cur| {
                    let changed = cur.as_ref() != Some(&d);
                    *cur = Some(d);
                    changed
                });
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = changed.notified() => {}
            }
        }
        tasks.shutdown().await;
    }
}

/// Puts children in the resolver's order: `sequential_order` first, the rest by name.
fn order_children<T>(inputs: &mut [(String, T)], resolver: &Resolver) {
    if let Resolver::Sequential(order) = resolver {
        inputs.sort_by_key(|(name, _)| {
            (
                order.iter().position(|o| o == name).unwrap_or(usize::MAX),
                name.clone(),
            )
        });
    }
}

/// Where a published set came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// One child (by position in resolver order).
    Child(usize),
    /// Every child (`union`).
    All,
    /// No child is usable: the set published before is held.
    Held,
}

/// Combines the children's latest sets (in resolver order). `None` until there is an
/// answer that cannot change only because a child has not reported yet.
///
/// `sequential` takes the first child that is fresh and non-empty. When none is, it holds
/// what it published before (marked stale) rather than falling back to some stale child:
/// a fault in the fallback source while the primary is away must not swing routing back
/// to the primary's old set.
fn combine(
    resolver: &Resolver,
    children: &[Option<Discovered>],
    previous: Option<&Discovered>,
) -> Option<(Discovered, Option<Source>)> {
    match resolver {
        Resolver::Union => {
            let mut all = Discovered::default();
            let mut origins = std::collections::BTreeSet::new();
            // One server per host:port: a nerve registered in two registries at once (a
            // migration) is one server, as the first child in order describes it.
            let mut addresses = std::collections::BTreeSet::new();
            for child in children {
                let child = child.as_ref()?;
                for b in &child.backends {
                    if addresses.insert((b.host.clone(), b.port)) {
                        all.backends.insert(b.clone());
                    }
                }
                all.fresh |= child.fresh;
                origins.insert(child.origin);
            }
            all.origin = match (origins.pop_first(), origins.is_empty()) {
                (Some(only), true) => only,
                _ => Origin::Mixed,
            };
            Some((all, Some(Source::All)))
        }
        Resolver::Sequential(_) => {
            let fresh = children.iter().enumerate().find_map(|(i, c)| {
                c.as_ref()
                    .filter(|c| c.fresh && !c.backends.is_empty())
                    .map(|c| (c.clone(), Some(Source::Child(i))))
            });
            if fresh.is_some() {
                return fresh;
            }
            // Nothing fresh with backends: a child that has not answered yet may still.
            if children.iter().any(Option::is_none) {
                return None;
            }
            if let Some(prev) = previous.filter(|p| !p.backends.is_empty()) {
                let held = Discovered {
                    backends: prev.backends.clone(),
                    fresh: false,
                    origin: prev.origin,
                    revision: None,
                };
                return Some((held, Some(Source::Held)));
            }
            // Never published anything: the first non-empty child, else the first.
            children
                .iter()
                .enumerate()
                .find(|(_, c)| c.as_ref().is_some_and(|c| !c.backends.is_empty()))
                .or_else(|| children.iter().enumerate().next())
                .and_then(|(i, c)| c.clone().map(|c| (c, Some(Source::Child(i)))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::tests_support::backend;

    fn d(fresh: bool, hosts: &[&str]) -> Option<Discovered> {
        from(Origin::Etcd, fresh, hosts)
    }

    fn from(origin: Origin, fresh: bool, hosts: &[&str]) -> Option<Discovered> {
        Some(Discovered {
            backends: hosts.iter().map(|h| backend("a", h, 80)).collect(),
            fresh,
            origin,
            revision: None,
        })
    }

    fn pick(r: &Resolver, children: &[Option<Discovered>]) -> Option<Discovered> {
        combine(r, children, None).map(|(d, _)| d)
    }

    #[test]
    fn sequential_prefers_the_first_fresh_non_empty_child() {
        let seq = Resolver::Sequential(vec!["etcd".into(), "ec2".into()]);
        assert_eq!(
            pick(&seq, &[d(true, &["10.0.0.1"]), d(true, &["10.0.0.2"])]),
            d(true, &["10.0.0.1"])
        );
        // etcd away (stale) or empty: the fallback.
        assert_eq!(
            pick(&seq, &[d(false, &["10.0.0.1"]), d(true, &["10.0.0.2"])]),
            d(true, &["10.0.0.2"])
        );
        assert_eq!(
            pick(&seq, &[d(true, &[]), d(true, &["10.0.0.2"])]),
            d(true, &["10.0.0.2"])
        );
        // Both away and nothing published yet: the first with backends.
        assert_eq!(
            pick(&seq, &[d(false, &["10.0.0.1"]), d(false, &["10.0.0.2"])]),
            d(false, &["10.0.0.1"])
        );
        assert_eq!(pick(&seq, &[None, d(false, &[])]), None);
        assert_eq!(
            pick(&seq, &[None, d(true, &["10.0.0.2"])]),
            d(true, &["10.0.0.2"])
        );
    }

    #[test]
    fn sequential_holds_the_fallback_when_it_fails_too() {
        let seq = Resolver::Sequential(vec!["etcd".into(), "ec2".into()]);
        // etcd away, EC2 serving: EC2's set is published.
        let (first, src) = combine(
            &seq,
            &[d(false, &["10.0.0.1"]), d(true, &["10.0.0.2"])],
            None,
        )
        .unwrap();
        assert_eq!(src, Some(Source::Child(1)));
        // Then EC2 fails too: hold EC2's set, don't swing back to etcd's old one.
        let (held, src) = combine(
            &seq,
            &[d(false, &["10.0.0.1"]), d(false, &["10.0.0.2"])],
            Some(&first),
        )
        .unwrap();
        assert_eq!(src, Some(Source::Held));
        assert_eq!(Some(held), d(false, &["10.0.0.2"]));
        // etcd back: etcd wins again.
        let (back, src) = combine(
            &seq,
            &[d(true, &["10.0.0.1"]), d(false, &["10.0.0.2"])],
            Some(&first),
        )
        .unwrap();
        assert_eq!(src, Some(Source::Child(0)));
        assert_eq!(Some(back), d(true, &["10.0.0.1"]));
    }

    #[test]
    fn the_origin_is_the_chosen_childs_or_mixed_for_a_union() {
        let seq = Resolver::Sequential(vec!["etcd".into(), "ec2".into()]);
        let etcd_away = from(Origin::Etcd, false, &["10.0.0.1"]);
        let ec2 = from(Origin::Ec2, true, &["10.0.0.2"]);
        let (first, _) = combine(&seq, &[etcd_away.clone(), ec2.clone()], None).unwrap();
        assert_eq!(first.origin, Origin::Ec2);
        let ec2_away = from(Origin::Ec2, false, &["10.0.0.2"]);
        let (held, _) = combine(&seq, &[etcd_away.clone(), ec2_away], Some(&first)).unwrap();
        assert_eq!((held.origin, held.fresh), (Origin::Ec2, false));
        let (all, _) = combine(&Resolver::Union, &[etcd_away.clone(), ec2], None).unwrap();
        assert_eq!(all.origin, Origin::Mixed);
        let (all, _) = combine(&Resolver::Union, &[etcd_away.clone(), etcd_away], None).unwrap();
        assert_eq!(all.origin, Origin::Etcd);
    }

    #[test]
    fn union_has_one_server_per_address_described_by_the_first_child() {
        // A provider in both registries during a migration: the same host:port, but the
        // ZooKeeper node written by the old nerve names the instance differently.
        let zk = Some(Discovered {
            backends: [
                backend("old-name", "10.0.0.1", 80),
                backend("b", "10.0.0.2", 80),
            ]
            .into_iter()
            .collect(),
            fresh: true,
            origin: Origin::Zookeeper,
            revision: None,
        });
        let etcd = Some(Discovered {
            backends: [backend("a", "10.0.0.1", 80), backend("a", "10.0.0.1", 81)]
                .into_iter()
                .collect(),
            fresh: true,
            origin: Origin::Etcd,
            revision: None,
        });
        let (all, _) = combine(&Resolver::Union, &[zk, etcd], None).unwrap();
        let got: Vec<(String, String, u16)> = all
            .backends
            .iter()
            .map(|b| (b.name.to_string(), b.host.to_string(), b.port.get()))
            .collect();
        assert_eq!(
            got,
            [
                ("a".to_owned(), "10.0.0.1".to_owned(), 81),
                ("b".to_owned(), "10.0.0.2".to_owned(), 80),
                ("old-name".to_owned(), "10.0.0.1".to_owned(), 80),
            ]
        );
        assert_eq!(all.origin, Origin::Mixed);
    }

    #[test]
    fn union_waits_for_every_child() {
        assert_eq!(
            pick(&Resolver::Union, &[d(true, &["10.0.0.1"]), None]),
            None
        );
        assert_eq!(
            pick(
                &Resolver::Union,
                &[d(true, &["10.0.0.1"]), d(false, &["10.0.0.2"])]
            ),
            d(true, &["10.0.0.1", "10.0.0.2"])
        );
    }

    #[test]
    fn sequential_order_comes_first() {
        let mut v = vec![
            ("a".to_owned(), 1),
            ("b".to_owned(), 2),
            ("c".to_owned(), 3),
        ];
        order_children(&mut v, &Resolver::Sequential(vec!["c".into(), "a".into()]));
        let names: Vec<&str> = v.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["c", "a", "b"]);
    }
}
