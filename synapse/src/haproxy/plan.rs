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
//! Commands carry only validated types ([`Name`], [`Word`], `IpAddr`, [`Port`],
//! [`Weight`]); their text never holds a `;`, `\` or line break. The commands a plan
//! returns alongside a reload are still worth applying at once (a removed server stops
//! taking traffic now; the reload that also drops it may wait for `restart_interval`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use common::{Port, Weight};

use super::model::{BackendModel, ConfigModel, Name, ServerModel, Word};
use super::runtime::{Admin, Capabilities, LiveServer, LiveServers};

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

/// `set server <b>/<s> state ...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Ready,
    Maint,
}

/// One runtime-API command, from validated parts only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeCommand {
    /// `add server b/s addr:port args...`: the server starts in maintenance.
    Add {
        backend: Name,
        server: Name,
        addr: IpAddr,
        port: Port,
        args: Vec<Word>,
    },
    EnableHealth {
        backend: Name,
        server: Name,
    },
    SetState {
        backend: Name,
        server: Name,
        state: State,
    },
    SetWeight {
        backend: Name,
        server: Name,
        weight: Weight,
    },
    SetAddr {
        backend: Name,
        server: Name,
        addr: IpAddr,
        port: Port,
    },
    /// `del server b/s`: only a server in maintenance without connections.
    Del {
        backend: Name,
        server: Name,
    },
}

impl RuntimeCommand {
    pub fn backend(&self) -> &Name {
        match self {
            Self::Add { backend, .. }
            | Self::EnableHealth { backend, .. }
            | Self::SetState { backend, .. }
            | Self::SetWeight { backend, .. }
            | Self::SetAddr { backend, .. }
            | Self::Del { backend, .. } => backend,
        }
    }

    pub fn server(&self) -> &Name {
        match self {
            Self::Add { server, .. }
            | Self::EnableHealth { server, .. }
            | Self::SetState { server, .. }
            | Self::SetWeight { server, .. }
            | Self::SetAddr { server, .. }
            | Self::Del { server, .. } => server,
        }
    }

    /// Whether `answer` is this command's success message.
    pub fn succeeded(&self, answer: &str) -> bool {
        let answer = answer.trim();
        match self {
            Self::Add { .. } => answer == "New server registered.",
            Self::Del { .. } => answer == "Server deleted.",
            Self::SetAddr { .. } => {
                answer.is_empty()
                    || answer.contains("changed from")
                    || answer.starts_with("no need to change")
            }
            _ => answer.is_empty(),
        }
    }
}

fn addr_port(addr: &IpAddr, port: Port) -> String {
    match addr {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

impl fmt::Display for RuntimeCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (b, s) = (self.backend(), self.server());
        match self {
            Self::Add {
                addr, port, args, ..
            } => {
                write!(f, "add server {b}/{s} {}", addr_port(addr, *port))?;
                for a in args {
                    write!(f, " {a}")?;
                }
                Ok(())
            }
            Self::EnableHealth { .. } => write!(f, "enable health {b}/{s}"),
            Self::SetState { state, .. } => {
                let state = match state {
                    State::Ready => "ready",
                    State::Maint => "maint",
                };
                write!(f, "set server {b}/{s} state {state}")
            }
            Self::SetWeight { weight, .. } => write!(f, "set server {b}/{s} weight {weight}"),
            Self::SetAddr { addr, port, .. } => {
                write!(f, "set server {b}/{s} addr {addr} port {port}")
            }
            Self::Del { .. } => write!(f, "del server {b}/{s}"),
        }
    }
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
mod tests {
    use super::*;
    use proptest::prelude::*;

    use crate::haproxy::runtime::is_safe_command;

    fn caps26() -> Capabilities {
        Capabilities::for_version(2, 6)
    }

    fn desired(text: &str) -> Desired {
        Desired {
            config: ConfigModel::parse(text),
            dynamic_servers: true,
        }
    }

    const HEAD: &str =
        "global\n    maxconn 10\ndefaults\n    mode http\nfrontend web\n    bind :80\n";

    fn cfg(backend_lines: &str, servers: &[&str]) -> String {
        let mut t = format!("{HEAD}backend web\n    {backend_lines}\n");
        for s in servers {
            t.push_str(&format!("    server {s}\n"));
        }
        t
    }

    fn texts(plan: &Plan) -> Vec<String> {
        plan.commands.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn the_periodic_check_goes_through_every_backend_in_bounded_chunks() {
        let mut text = HEAD.to_owned();
        for (b, n) in [("a", 3), ("b", 0), ("c", 1), ("d", 4), ("e", 2)] {
            text.push_str(&format!("backend {b}\n    balance roundrobin\n"));
            for s in 0..n {
                text.push_str(&format!("    server s{s} 10.0.0.{s}:80\n"));
            }
        }
        let desired = desired(&text);
        let mut after: Option<String> = None;
        let mut chunks = Vec::new();
        loop {
            let (chunk, more) = next_chunk(&desired, after.as_deref(), 4);
            after = chunk.last().cloned();
            chunks.push(chunk);
            if !more {
                break;
            }
        }
        // Whole backends, each once, a chunk ending once it holds 4 servers.
        assert_eq!(chunks, [vec!["a", "b"], vec!["c", "d"], vec!["e"]]);
        assert_eq!(
            next_chunk(&desired, None, 1_000),
            (
                vec!["a".into(), "b".into(), "c".into(), "d".into(), "e".into()],
                false
            )
        );
    }

    #[test]
    fn adds_removes_reweights_and_toggles_at_runtime() {
        let before = cfg(
            "balance roundrobin",
            &[
                "a_10.0.0.1:80 10.0.0.1:80 id 1 check",
                "b_10.0.0.2:80 10.0.0.2:80 id 2 check",
            ],
        );
        let after = cfg(
            "balance roundrobin",
            &[
                "a_10.0.0.1:80 10.0.0.1:80 id 1 check weight 5 disabled",
                "c_10.0.0.3:80 10.0.0.3:80 id 3 cookie c check inter 1s",
            ],
        );
        let running = running_from(&ConfigModel::parse(&before), caps26());
        let p = plan(&running, &desired(&after));
        assert_eq!(p.reload, None);
        assert_eq!(
            texts(&p),
            [
                "set server web/a_10.0.0.1:80 state maint",
                "set server web/a_10.0.0.1:80 weight 5",
                "add server web/c_10.0.0.3:80 10.0.0.3:80 check inter 1s id 3 weight 1",
                "enable health web/c_10.0.0.3:80",
                "set server web/c_10.0.0.3:80 state ready",
                "set server web/b_10.0.0.2:80 state maint",
                "del server web/b_10.0.0.2:80",
            ]
        );
    }

    #[test]
    fn a_freed_id_is_deleted_before_it_is_reused() {
        let running = running_from(
            &ConfigModel::parse(&cfg(
                "balance leastconn",
                &["a_10.0.0.1:80 10.0.0.1:80 id 1"],
            )),
            caps26(),
        );
        let p = plan(
            &running,
            &desired(&cfg(
                "balance leastconn",
                &["b_10.0.0.2:80 10.0.0.2:80 id 1"],
            )),
        );
        assert_eq!(
            texts(&p),
            [
                "set server web/a_10.0.0.1:80 state maint",
                "del server web/a_10.0.0.1:80",
                "add server web/b_10.0.0.2:80 10.0.0.2:80 id 1 weight 1",
                "set server web/b_10.0.0.2:80 state ready",
            ]
        );
    }

    #[test]
    fn default_server_settings_go_with_added_servers() {
        let text = |servers: &[&str]| {
            format!(
                "{}backend web\n    default-server rise 3\n{}",
                HEAD.replace(
                    "    mode http\n",
                    "    mode http\n    default-server inter 2s init-addr last,libc,none\n"
                ),
                servers
                    .iter()
                    .map(|s| format!("    server {s}\n"))
                    .collect::<String>()
            )
        };
        let running = running_from(&ConfigModel::parse(&text(&[])), caps26());
        let p = plan(&running, &desired(&text(&["a_::1:80 [::1]:80 id 4"])));
        assert_eq!(p.reload, None, "{p:?}");
        assert_eq!(
            texts(&p)[0],
            "add server web/a_::1:80 [::1]:80 inter 2s rise 3 id 4 weight 1"
        );
    }

    #[test]
    fn what_the_runtime_api_cannot_do_needs_a_reload() {
        let base = cfg("balance source", &["a_10.0.0.1:80 10.0.0.1:80 id 1"]);
        let running = running_from(&ConfigModel::parse(&base), caps26());
        // A static algorithm: no adds, no weights; a removal is put in maintenance now.
        let p = plan(
            &running,
            &desired(&cfg("balance source", &["b_10.0.0.2:80 10.0.0.2:80 id 2"])),
        );
        assert!(
            matches!(
                p.reload,
                Some(ReloadReason::CannotAdd { .. } | ReloadReason::CannotRemove { .. })
            ),
            "{p:?}"
        );
        assert_eq!(texts(&p), ["set server web/a_10.0.0.1:80 state maint"]);
        let p = plan(
            &running,
            &desired(&cfg(
                "balance source",
                &["a_10.0.0.1:80 10.0.0.1:80 id 1 weight 3"],
            )),
        );
        assert!(matches!(p.reload, Some(ReloadReason::CannotChange { .. })));
        // Structure.
        let p = plan(
            &running,
            &desired(&base.replace("maxconn 10", "maxconn 11")),
        );
        assert_eq!(p.reload, Some(ReloadReason::Structure));
        let p = plan(
            &running,
            &desired(&base.replace("balance source", "balance first")),
        );
        assert_eq!(p.reload, Some(ReloadReason::BackendChanged("web".into())));
        let p = plan(&running, &desired(&format!("{base}backend api\n")));
        assert_eq!(p.reload, Some(ReloadReason::BackendAdded("api".into())));
        // Changed options of a server.
        let p = plan(
            &running,
            &desired(&cfg(
                "balance source",
                &["a_10.0.0.1:80 10.0.0.1:80 id 1 maxconn 3"],
            )),
        );
        assert!(matches!(p.reload, Some(ReloadReason::ServerChanged { .. })));
        // 2.4: no dynamic servers.
        let rr = cfg("balance roundrobin", &[]);
        let old = running_from(&ConfigModel::parse(&rr), Capabilities::for_version(2, 4));
        let p = plan(
            &old,
            &desired(&cfg(
                "balance roundrobin",
                &["b_10.0.0.2:80 10.0.0.2:80 id 2"],
            )),
        );
        assert!(matches!(p.reload, Some(ReloadReason::CannotAdd { .. })));
        // A backend the running HAProxy lacks.
        let mut gone = running_from(&ConfigModel::parse(&rr), caps26());
        gone.backends.clear();
        assert_eq!(
            plan(&gone, &desired(&rr)).reload,
            Some(ReloadReason::BackendNotRunning("web".into()))
        );
    }

    #[test]
    fn cookies_need_28_only_when_a_cookie_directive_uses_them() {
        let text = |line: &str, servers: &[&str]| cfg(line, servers);
        let s = ["a_10.0.0.1:80 10.0.0.1:80 id 1 cookie a_10.0.0.1:80"];
        let running = running_from(
            &ConfigModel::parse(&text("balance roundrobin", &[])),
            caps26(),
        );
        let p = plan(&running, &desired(&text("balance roundrobin", &s)));
        assert_eq!(p.reload, None);
        assert!(!texts(&p)[0].contains("cookie"));
        let with = "cookie SRV insert";
        let running = running_from(&ConfigModel::parse(&text(with, &[])), caps26());
        let p = plan(&running, &desired(&text(with, &s)));
        assert!(matches!(p.reload, Some(ReloadReason::CannotAdd { .. })));
        let running = running_from(
            &ConfigModel::parse(&text(with, &[])),
            Capabilities::for_version(2, 8),
        );
        let p = plan(&running, &desired(&text(with, &s)));
        assert_eq!(p.reload, None);
        assert!(texts(&p)[0].ends_with("cookie a_10.0.0.1:80"));
    }

    // === property tests ===

    /// Applies `cmd` to a model of HAProxy, as HAProxy does (or refuses it).
    fn apply(running: &mut RunningState, desired: &Desired, cmd: &RuntimeCommand) {
        let b = cmd.backend().to_string();
        let s = cmd.server().to_string();
        let servers = running.servers.entry(b.clone()).or_default();
        match cmd {
            RuntimeCommand::Add {
                addr, port, args, ..
            } => {
                let words: Vec<&str> = args.iter().map(Word::as_str).collect();
                let arg = |kw: &str| -> Option<u32> {
                    words
                        .iter()
                        .rposition(|w| *w == kw)
                        .and_then(|i| words.get(i + 1))
                        .and_then(|v| v.parse().ok())
                };
                let id = arg("id").expect("ids are always given");
                assert!(
                    servers.values().all(|l| l.id != id),
                    "id {id} in use: {cmd}"
                );
                assert!(servers
                    .insert(
                        s.clone(),
                        LiveServer {
                            id,
                            addr: Some(*addr),
                            port: port.get(),
                            admin: Admin::Maint,
                            weight: arg("weight").map_or(1, |w| w as u16),
                        },
                    )
                    .is_none());
                let model = desired.config.backends[&b].servers[&s].clone();
                running
                    .loaded
                    .backends
                    .get_mut(&b)
                    .expect("backend")
                    .servers
                    .insert(s, model);
            }
            RuntimeCommand::EnableHealth { .. } => assert!(servers.contains_key(&s)),
            RuntimeCommand::SetState { state, .. } => {
                servers.get_mut(&s).expect("server").admin = match state {
                    State::Ready => Admin::Ready,
                    State::Maint => Admin::Maint,
                };
            }
            RuntimeCommand::SetWeight { weight, .. } => {
                servers.get_mut(&s).expect("server").weight = weight.get();
            }
            RuntimeCommand::SetAddr { addr, port, .. } => {
                let l = servers.get_mut(&s).expect("server");
                l.addr = Some(*addr);
                l.port = port.get();
            }
            RuntimeCommand::Del { .. } => {
                let l = servers.remove(&s).expect("server");
                assert_eq!(l.admin, Admin::Maint, "deleting a live server: {cmd}");
                if let Some(m) = running.loaded.backends.get_mut(&b) {
                    m.servers.remove(&s);
                }
            }
        }
    }

    #[derive(Debug, Clone)]
    struct Srv {
        name: u8,
        ip: u8,
        port: u16,
        weight: Option<u16>,
        disabled: bool,
        check: bool,
        maxconn: Option<u8>,
    }

    fn srv() -> impl Strategy<Value = Srv> {
        (
            0u8..12,
            1u8..4,
            1u16..4,
            proptest::option::of(0u16..=256),
            any::<bool>(),
            any::<bool>(),
            proptest::option::of(1u8..3),
        )
            .prop_map(|(name, ip, port, weight, disabled, check, maxconn)| Srv {
                name,
                ip,
                port,
                weight,
                disabled,
                check,
                maxconn,
            })
    }

    /// A config with backends `web` (roundrobin) and `api` (leastconn); server ids are
    /// assigned as the renderer does (stable, lowest free), from `prev` ids.
    fn render(servers: &[(bool, Srv)], ids: &mut BTreeMap<(bool, String), u32>) -> String {
        let mut by_backend: BTreeMap<bool, BTreeMap<String, &Srv>> = BTreeMap::new();
        for (web, s) in servers {
            let name = format!("s{}_10.0.0.{}:{}", s.name, s.ip, s.port);
            by_backend.entry(*web).or_default().insert(name, s);
        }
        ids.retain(|(web, name), _| by_backend.get(web).is_some_and(|m| m.contains_key(name)));
        let mut text = String::from(HEAD);
        for web in [true, false] {
            let (b, algo) = if web {
                ("web", "roundrobin")
            } else {
                ("api", "leastconn")
            };
            text.push_str(&format!("backend {b}\n    balance {algo}\n"));
            for (name, s) in by_backend.get(&web).into_iter().flatten() {
                let id = match ids.get(&(web, name.clone())) {
                    Some(id) => *id,
                    None => {
                        let used: BTreeSet<u32> = ids
                            .iter()
                            .filter(|((w, _), _)| *w == web)
                            .map(|(_, id)| *id)
                            .collect();
                        let id = (1..).find(|i| !used.contains(i)).expect("free id");
                        ids.insert((web, name.clone()), id);
                        id
                    }
                };
                text.push_str(&format!(
                    "    server {name} 10.0.0.{}:{} id {id}",
                    s.ip, s.port
                ));
                if s.check {
                    text.push_str(" check");
                }
                if let Some(m) = s.maxconn {
                    text.push_str(&format!(" maxconn {m}"));
                }
                if let Some(w) = s.weight {
                    text.push_str(&format!(" weight {w}"));
                }
                if s.disabled {
                    text.push_str(" disabled");
                }
                text.push('\n');
            }
        }
        text
    }

    fn live_view(r: &RunningState) -> LiveServers {
        r.servers
            .iter()
            .filter(|(_, s)| !s.is_empty())
            .map(|(b, s)| (b.clone(), s.clone()))
            .collect()
    }

    proptest! {
        #[test]
        fn plan_of_the_same_state_is_empty(servers in proptest::collection::vec((any::<bool>(), srv()), 0..10)) {
            let text = render(&servers, &mut BTreeMap::new());
            let model = ConfigModel::parse(&text);
            let running = running_from(&model, caps26());
            let p = plan(&running, &Desired { config: model, dynamic_servers: true });
            prop_assert!(p.is_empty(), "{:?}", p);
        }

        #[test]
        fn planning_each_backend_alone_gives_the_whole_plans_commands(
            before in proptest::collection::vec((any::<bool>(), srv()), 0..10),
            after in proptest::collection::vec((any::<bool>(), srv()), 0..10),
        ) {
            let mut ids = BTreeMap::new();
            let old = ConfigModel::parse(&render(&before, &mut ids));
            let new = ConfigModel::parse(&render(&after, &mut ids));
            let running = running_from(&old, caps26());
            let desired = Desired { config: new, dynamic_servers: true };
            let whole = plan(&running, &desired);
            let mut apart = Plan::default();
            for name in ["api".to_owned(), "web".to_owned()] {
                let p = plan_backends(&running.view(), &desired, [&name]);
                apart.commands.extend(p.commands);
                if let Some(why) = p.reload {
                    apart.need_reload(why);
                }
            }
            prop_assert_eq!(whole, apart);
        }

        #[test]
        fn applying_the_plan_yields_the_desired_state(
            before in proptest::collection::vec((any::<bool>(), srv()), 0..10),
            after in proptest::collection::vec((any::<bool>(), srv()), 0..10),
        ) {
            let mut ids = BTreeMap::new();
            let old = ConfigModel::parse(&render(&before, &mut ids));
            let new = ConfigModel::parse(&render(&after, &mut ids));
            let mut running = running_from(&old, caps26());
            let desired = Desired { config: new.clone(), dynamic_servers: true };
            let p = plan(&running, &desired);
            for cmd in &p.commands {
                let text = cmd.to_string();
                prop_assert!(is_safe_command(&text), "{}", text);
                apply(&mut running, &desired, cmd);
            }
            if p.reload.is_none() {
                let want = running_from(&new, caps26());
                prop_assert_eq!(live_view(&running), live_view(&want));
                let again = plan(&running, &desired);
                prop_assert!(again.is_empty(), "{:?}", again);
            } else {
                // Only a changed server (options) may force a reload here.
                prop_assert!(matches!(p.reload, Some(ReloadReason::ServerChanged { .. })), "{:?}", p.reload);
            }
        }
    }
}
