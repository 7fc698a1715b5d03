//! The runtime-API plan: what HAProxy runs ([`RunningState`]) against what it should run
//! ([`Desired`], the freshly rendered config), as runtime commands, plus whether a reload
//! is still needed for what the runtime API cannot do. Pure.
//!
//! ```text
//! structure (global, defaults, frontends, a backend's own lines) differs ─► reload
//! server missing   ─► add server (+ enable health) (+ set state ready)   [dynamic LB, 2.6+]
//! server extra     ─► set state maint, del server                      [else maint + reload]
//! weight differs   ─► set server weight                                [dynamic LB, else reload]
//! maint/ready      ─► set server state
//! address differs  ─► set server addr .. port ..
//! server options, id differ ─► reload
//! ```
//!
//! Commands ([`RuntimeCommand`], in `plan/command.rs`) carry only validated types
//! ([`Name`], [`Word`], `IpAddr`, [`Port`], [`Weight`]); their text never holds a `;`, `\`
//! or line break. The commands a plan returns alongside a reload are still worth applying
//! at once (a removed server stops taking traffic now; the reload that also drops it may
//! wait for `restart_interval`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use common::{Port, Weight};

use super::answers::{Admin, Capabilities, LiveServer, LiveServers};
use super::model::{BackendModel, ConfigModel, Name, ServerModel, Word};

mod command;

pub use command::{RuntimeCommand, State};

/// What HAProxy runs now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunningState {
    pub caps: Capabilities,
    /// The config HAProxy loaded at its last (re)start or reload, with the servers
    /// added and deleted at runtime since: the structure, and each server's options.
    pub loaded: ConfigModel,
    /// `show backend`.
    pub backends: BTreeSet<String>,
    /// `show servers state`.
    pub servers: LiveServers,
}

/// What HAProxy should run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub config: ConfigModel,
    /// `dynamic_servers: auto`: `add server` / `del server` are allowed.
    pub dynamic_servers: bool,
}

/// Why a reload is needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadReason {
    /// global, defaults, a frontend or another non-backend section changed.
    Structure,
    BackendAdded(String),
    BackendRemoved(String),
    /// The backend's own lines (balance, options, default-server, ...) changed.
    BackendChanged(String),
    /// The config has the backend but the running HAProxy does not.
    BackendNotRunning(String),
    /// A server's options or id changed.
    ServerChanged {
        backend: String,
        server: String,
    },
    CannotAdd {
        backend: String,
        server: String,
        why: &'static str,
    },
    CannotRemove {
        backend: String,
        server: String,
        why: &'static str,
    },
    CannotChange {
        backend: String,
        server: String,
        why: &'static str,
    },
    /// The runtime API is off, or its socket did not answer.
    NoRuntimeApi,
    /// A runtime command was refused.
    CommandFailed {
        command: String,
        answer: String,
    },
    /// HAProxy runs nothing we know of yet (first start, or an unknown file).
    Initial,
}

impl fmt::Display for ReloadReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Structure => f.write_str("a section other than a backend changed"),
            Self::BackendAdded(b) => write!(f, "backend {b} added"),
            Self::BackendRemoved(b) => write!(f, "backend {b} removed"),
            Self::BackendChanged(b) => write!(f, "backend {b}'s settings changed"),
            Self::BackendNotRunning(b) => write!(f, "HAProxy does not run backend {b}"),
            Self::ServerChanged { backend, server } => {
                write!(f, "server {backend}/{server}'s options changed")
            }
            Self::CannotAdd {
                backend,
                server,
                why,
            } => write!(f, "cannot add {backend}/{server} at runtime: {why}"),
            Self::CannotRemove {
                backend,
                server,
                why,
            } => write!(f, "cannot delete {backend}/{server} at runtime: {why}"),
            Self::CannotChange {
                backend,
                server,
                why,
            } => write!(f, "cannot change {backend}/{server} at runtime: {why}"),
            Self::NoRuntimeApi => f.write_str("no runtime API (off, or its socket did not answer)"),
            Self::CommandFailed { command, answer } => {
                write!(f, "`{command}` failed: {answer}")
            }
            Self::Initial => f.write_str("first configuration"),
        }
    }
}

/// The plan: commands to apply now, and a reload if they do not reach the desired state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub commands: Vec<RuntimeCommand>,
    pub reload: Option<ReloadReason>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty() && self.reload.is_none()
    }

    fn need_reload(&mut self, why: ReloadReason) {
        self.reload.get_or_insert(why);
    }
}

/// What HAProxy runs, borrowed: [`RunningState`] without copying the loaded config.
#[derive(Debug, Clone, Copy)]
pub struct RunningView<'a> {
    pub caps: &'a Capabilities,
    pub loaded: &'a ConfigModel,
    /// `show backend`.
    pub backends: &'a BTreeSet<String>,
    /// `show servers state` (of at least the backends planned).
    pub servers: &'a LiveServers,
}

impl RunningState {
    pub fn view(&self) -> RunningView<'_> {
        RunningView {
            caps: &self.caps,
            loaded: &self.loaded,
            backends: &self.backends,
            servers: &self.servers,
        }
    }
}

/// Compares what runs with what should run.
pub fn plan(running: &RunningState, desired: &Desired) -> Plan {
    plan_view(&running.view(), desired)
}

/// [`plan`] on a borrowed running state.
pub fn plan_view(running: &RunningView<'_>, desired: &Desired) -> Plan {
    let mut plan = Plan::default();
    if running.loaded.base != desired.config.base {
        plan.need_reload(ReloadReason::Structure);
        return plan;
    }
    for name in running.loaded.backends.keys() {
        if !desired.config.backends.contains_key(name) {
            plan.need_reload(ReloadReason::BackendRemoved(name.clone()));
        }
    }
    for name in desired.config.backends.keys() {
        plan_one(&mut plan, running, desired, name);
    }
    plan
}

/// [`plan`] for some backends only (a change to some services): the sections outside
/// them are the caller's to compare. `running.servers` needs only these backends.
pub fn plan_backends<'a>(
    running: &RunningView<'_>,
    desired: &Desired,
    only: impl IntoIterator<Item = &'a String>,
) -> Plan {
    let mut plan = Plan::default();
    for name in only {
        if desired.config.backends.contains_key(name) {
            plan_one(&mut plan, running, desired, name);
        } else if running.loaded.backends.contains_key(name) {
            plan.need_reload(ReloadReason::BackendRemoved(name.clone()));
        }
    }
    plan
}

/// A slice of the periodic check: whole backends of `desired` after `after` (from the
/// first with `None`), in order, until they hold `servers` servers (an empty backend
/// counts as one). True when backends are left after it.
pub fn next_chunk(desired: &Desired, after: Option<&str>, servers: usize) -> (Vec<String>, bool) {
    use std::ops::Bound::{Excluded, Unbounded};
    let from = after.map_or(Unbounded, Excluded);
    let mut rest = desired.config.backends.range::<str, _>((from, Unbounded));
    let (mut chunk, mut count) = (Vec::new(), 0);
    for (name, backend) in rest.by_ref() {
        chunk.push(name.clone());
        count += backend.servers.len().max(1);
        if count >= servers {
            break;
        }
    }
    (chunk, rest.next().is_some())
}

/// The share of the periodic check's round that `chunk` is: its servers over all of
/// `desired`'s (an empty backend counts as one), in `0..=1`. The round's slices are
/// spread over its interval by this share.
pub fn chunk_share(desired: &Desired, chunk: &[String]) -> f64 {
    let this: usize = chunk
        .iter()
        .filter_map(|n| desired.config.backends.get(n))
        .map(check_weight)
        .sum();
    (this as f64 / servers_to_check(desired).max(1) as f64).min(1.0)
}

/// How many servers a round of the periodic check reads (an empty backend counts as
/// one).
pub fn servers_to_check(desired: &Desired) -> usize {
    desired.config.backends.values().map(check_weight).sum()
}

fn check_weight(b: &BackendModel) -> usize {
    b.servers.len().max(1)
}

fn plan_one(plan: &mut Plan, running: &RunningView<'_>, desired: &Desired, name: &String) {
    let no_servers = BTreeMap::new();
    let Some(want) = desired.config.backends.get(name) else {
        return;
    };
    let Some(loaded) = running.loaded.backends.get(name) else {
        plan.need_reload(ReloadReason::BackendAdded(name.clone()));
        return;
    };
    if loaded.lines != want.lines {
        plan.need_reload(ReloadReason::BackendChanged(name.clone()));
        return;
    }
    if !running.backends.contains(name) {
        plan.need_reload(ReloadReason::BackendNotRunning(name.clone()));
        return;
    }
    let live = running.servers.get(name).unwrap_or(&no_servers);
    plan_backend(plan, running.caps, desired, name, want, loaded, live);
}

fn plan_backend(
    plan: &mut Plan,
    caps: &Capabilities,
    desired: &Desired,
    name: &str,
    want: &BackendModel,
    loaded: &BackendModel,
    live: &BTreeMap<String, LiveServer>,
) {
    let can_add_or_del = desired.dynamic_servers && caps.dynamic_servers && want.dynamic;
    let add_or_del_why = if !desired.dynamic_servers {
        "dynamic_servers is off, or slots (then the backend grows)"
    } else if !caps.dynamic_servers {
        "HAProxy is older than 2.6"
    } else {
        "the backend's balance algorithm is not dynamic"
    };
    let reason = |server: &str, why| (name.to_owned(), server.to_owned(), why);
    let mut removals = Vec::new();
    // Extra servers first in the order, when a new one needs the id one of them holds.
    let wanted_ids: BTreeSet<u32> = want.servers.values().filter_map(|s| s.id).collect();
    let mut extra: Vec<(&String, &LiveServer)> = live
        .iter()
        .filter(|(s, _)| !want.servers.contains_key(*s))
        .collect();
    extra.sort_by_key(|(_, l)| !wanted_ids.contains(&l.id));
    for (server, l) in extra {
        let names = want.name.clone().zip(Name::new(server));
        let Some((b, s)) = names else {
            let (backend, server, why) = reason(server, "its name cannot be sent");
            plan.need_reload(ReloadReason::CannotRemove {
                backend,
                server,
                why,
            });
            continue;
        };
        let cmds = if wanted_ids.contains(&l.id) {
            &mut plan.commands
        } else {
            &mut removals
        };
        if l.admin != Admin::Maint {
            cmds.push(RuntimeCommand::SetState {
                backend: b.clone(),
                server: s.clone(),
                state: State::Maint,
            });
        }
        if can_add_or_del {
            cmds.push(RuntimeCommand::Del {
                backend: b,
                server: s,
            });
        } else {
            let (backend, server, why) = reason(server, add_or_del_why);
            plan.need_reload(ReloadReason::CannotRemove {
                backend,
                server,
                why,
            });
        }
    }
    for (server, w) in &want.servers {
        let names = want.name.clone().zip(Name::new(server));
        match (live.get(server), names) {
            (Some(l), Some((b, s))) => {
                if let Some(why) = change(plan, want, loaded.servers.get(server), w, l, b, s) {
                    let (backend, server, why) = reason(server, why);
                    plan.need_reload(ReloadReason::CannotChange {
                        backend,
                        server,
                        why,
                    });
                }
            }
            (Some(_), None) => {
                let (backend, server, why) = reason(server, "its name cannot be sent");
                plan.need_reload(ReloadReason::CannotChange {
                    backend,
                    server,
                    why,
                });
            }
            (None, names) => {
                let added = names.ok_or("its name cannot be sent").and_then(|(b, s)| {
                    if !can_add_or_del {
                        return Err(add_or_del_why);
                    }
                    add(want, w, caps, b, s)
                });
                match added {
                    Ok(cmds) => plan.commands.extend(cmds),
                    Err(why) => {
                        let (backend, server, why) = reason(server, why);
                        plan.need_reload(ReloadReason::CannotAdd {
                            backend,
                            server,
                            why,
                        });
                    }
                }
            }
        }
    }
    plan.commands.extend(removals);
}

/// The commands that bring live server `l` to `w`; `Err` when only a reload can.
fn change(
    plan: &mut Plan,
    backend: &BackendModel,
    loaded: Option<&ServerModel>,
    w: &ServerModel,
    l: &LiveServer,
    b: Name,
    s: Name,
) -> Option<&'static str> {
    if loaded.is_some_and(|loaded| loaded.fixed() != w.fixed()) {
        plan.need_reload(ReloadReason::ServerChanged {
            backend: b.to_string(),
            server: s.to_string(),
        });
        return None;
    }
    if w.id.is_some_and(|id| id != l.id) {
        plan.need_reload(ReloadReason::ServerChanged {
            backend: b.to_string(),
            server: s.to_string(),
        });
        return None;
    }
    let state = match (w.maint, l.admin) {
        (true, Admin::Maint) | (false, Admin::Ready) => None,
        (true, _) => Some(State::Maint),
        (false, _) => Some(State::Ready),
    };
    // Out of rotation before the address or weight changes; back in only after.
    if state == Some(State::Maint) {
        plan.commands.push(RuntimeCommand::SetState {
            backend: b.clone(),
            server: s.clone(),
            state: State::Maint,
        });
    }
    if let Some(addr) = w.addr {
        if l.addr != Some(addr) || l.port != w.port {
            let Some(port) = Port::new(w.port) else {
                return Some("no port");
            };
            plan.commands.push(RuntimeCommand::SetAddr {
                backend: b.clone(),
                server: s.clone(),
                addr,
                port,
            });
        }
    }
    if l.weight != w.weight {
        if !backend.dynamic {
            return Some("the balance algorithm takes no weight changes at runtime");
        }
        let Some(weight) = Weight::new(w.weight) else {
            return Some("weight out of range");
        };
        plan.commands.push(RuntimeCommand::SetWeight {
            backend: b.clone(),
            server: s.clone(),
            weight,
        });
    }
    if state == Some(State::Ready) {
        plan.commands.push(RuntimeCommand::SetState {
            backend: b,
            server: s,
            state: State::Ready,
        });
    }
    None
}

/// `add server` with exactly the file's settings, then health checks and readiness.
fn add(
    backend: &BackendModel,
    w: &ServerModel,
    caps: &Capabilities,
    b: Name,
    s: Name,
) -> Result<Vec<RuntimeCommand>, &'static str> {
    let addr = w.addr.ok_or("its address is a host name")?;
    let port = Port::new(w.port).ok_or("no port")?;
    let weight = Weight::new(w.weight).ok_or("weight out of range")?;
    let mut args = backend
        .default_args
        .clone()
        .ok_or("a default-server argument cannot be sent")?;
    args.extend(w.args.clone().ok_or("an argument cannot be sent")?);
    let word = |s: String| Word::new(&s).ok_or("an argument cannot be sent");
    if let Some(id) = w.id {
        args.push(word("id".into())?);
        args.push(word(id.to_string())?);
    }
    args.push(word("weight".into())?);
    args.push(word(weight.to_string())?);
    if let Some(cookie) = &w.cookie {
        if caps.dynamic_cookies {
            args.push(word("cookie".into())?);
            args.push(cookie.clone());
        } else if backend.cookie_directive {
            return Err("cookie persistence needs HAProxy 2.8 for dynamic servers");
        }
        // Without a `cookie` directive a server's cookie is never used: leaving it out
        // runs the same as the file.
    }
    let mut cmds = vec![RuntimeCommand::Add {
        backend: b.clone(),
        server: s.clone(),
        addr,
        port,
        args,
    }];
    if w.check {
        cmds.push(RuntimeCommand::EnableHealth {
            backend: b.clone(),
            server: s.clone(),
        });
    }
    if !w.maint {
        cmds.push(RuntimeCommand::SetState {
            backend: b,
            server: s,
            state: State::Ready,
        });
    }
    Ok(cmds)
}

/// What HAProxy would report after loading `config`: for a fresh start or a reload, and
/// for tests.
pub fn running_from(config: &ConfigModel, caps: Capabilities) -> RunningState {
    let mut servers = LiveServers::new();
    let mut backends = BTreeSet::new();
    for (b, model) in &config.backends {
        backends.insert(b.clone());
        let mut next_id = model
            .servers
            .values()
            .filter_map(|s| s.id)
            .max()
            .unwrap_or(0);
        for (name, s) in &model.servers {
            let id = s.id.unwrap_or_else(|| {
                next_id += 1;
                next_id
            });
            servers.entry(b.clone()).or_default().insert(
                name.clone(),
                LiveServer {
                    id,
                    addr: s.addr,
                    port: s.port,
                    admin: if s.maint { Admin::Maint } else { Admin::Ready },
                    weight: s.weight,
                },
            );
        }
    }
    RunningState {
        caps,
        loaded: config.clone(),
        backends,
        servers,
    }
}

#[cfg(test)]
mod tests;
