//! The `multi` watcher: runs child watchers and combines their sets with a resolver
//! (airbnb synapse's `multi`): `union`, or `sequential` — the first child in order that
//! is fresh and non-empty, which makes "etcd first, EC2 tags when etcd is away".

use std::sync::Arc;

use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{AnyWatcher, Publisher, Watcher};
use crate::backends::Discovered;
use crate::config::Resolver;

/// Children plus a resolver.
pub struct MultiWatcher {
    children: Vec<(String, AnyWatcher)>,
    resolver: Resolver,
}

impl MultiWatcher {
    pub fn new(children: Vec<(String, AnyWatcher)>, resolver: Resolver) -> Self {
        Self { children, resolver }
    }
}

impl Watcher for MultiWatcher {
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
        loop {
            let snapshot: Vec<Option<Discovered>> =
                inputs.iter().map(|(_, rx)| rx.borrow().clone()).collect();
            if let Some(d) = combine(&self.resolver, &snapshot) {
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

/// Combines the children's latest sets (in resolver order). `None` until there is an
/// answer that cannot change only because a child has not reported yet.
fn combine(resolver: &Resolver, children: &[Option<Discovered>]) -> Option<Discovered> {
    match resolver {
        Resolver::Union => {
            let mut all = Discovered::default();
            for child in children {
                let child = child.as_ref()?;
                all.backends.extend(child.backends.iter().cloned());
                all.fresh |= child.fresh;
            }
            Some(all)
        }
        Resolver::Sequential(_) => {
            let usable = |want_fresh: bool| {
                children
                    .iter()
                    .flatten()
                    .find(|c| !c.backends.is_empty() && (c.fresh || !want_fresh))
            };
            if let Some(c) = usable(true) {
                return Some(c.clone());
            }
            // Nothing fresh with backends: a child that has not answered yet may still.
            if children.iter().any(Option::is_none) {
                return None;
            }
            Some(usable(false).cloned().unwrap_or_default())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::tests_support::backend;

    fn d(fresh: bool, hosts: &[&str]) -> Option<Discovered> {
        Some(Discovered {
            backends: hosts.iter().map(|h| backend("a", h, 80)).collect(),
            fresh,
        })
    }

    #[test]
    fn sequential_prefers_the_first_fresh_non_empty_child() {
        let seq = Resolver::Sequential(vec!["etcd".into(), "ec2".into()]);
        assert_eq!(
            combine(&seq, &[d(true, &["10.0.0.1"]), d(true, &["10.0.0.2"])]),
            d(true, &["10.0.0.1"])
        );
        // etcd away (stale) or empty: the fallback.
        assert_eq!(
            combine(&seq, &[d(false, &["10.0.0.1"]), d(true, &["10.0.0.2"])]),
            d(true, &["10.0.0.2"])
        );
        assert_eq!(
            combine(&seq, &[d(true, &[]), d(true, &["10.0.0.2"])]),
            d(true, &["10.0.0.2"])
        );
        // Both away: the last known set of the first.
        assert_eq!(
            combine(&seq, &[d(false, &["10.0.0.1"]), d(false, &["10.0.0.2"])]),
            d(false, &["10.0.0.1"])
        );
        assert_eq!(combine(&seq, &[None, d(false, &[])]), None);
        assert_eq!(
            combine(&seq, &[None, d(true, &["10.0.0.2"])]),
            d(true, &["10.0.0.2"])
        );
    }

    #[test]
    fn union_waits_for_every_child() {
        assert_eq!(
            combine(&Resolver::Union, &[d(true, &["10.0.0.1"]), None]),
            None
        );
        assert_eq!(
            combine(
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
