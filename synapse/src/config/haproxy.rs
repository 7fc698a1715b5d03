//! Validation of the top-level `haproxy` section: its lines (with the SmartStack-era
//! rewrites and the lines a hitless reload needs), paths, modes and the reload method.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::config::{join_path, ConfigErrors};

use super::check::{check_line, check_lines, check_word};
use super::upstream::{modernize_line, split_section_address};
use super::{defaults, HaproxyConfig, HaproxyFile, ManagedHaproxy, ReloadMethod, SocketPaths};

pub(super) fn validate_haproxy(h: &HaproxyFile, errors: &mut ConfigErrors) -> HaproxyConfig {
    let p = |k: &str| join_path("haproxy", k);
    let modern = |lines: Vec<String>| lines.into_iter().map(modernize_line).collect::<Vec<_>>();
    let mut global = modern(check_lines(&h.global, &p("global"), errors));
    let mut defaults_lines = modern(check_lines(&h.defaults, &p("defaults"), errors));
    if h.seamless_reload_lines.unwrap_or(true) {
        add_seamless_reload_lines(&mut global, &mut defaults_lines);
    }
    let mut extra_sections = BTreeMap::new();
    for (header, lines) in &h.extra_sections {
        let path = join_path(&p("extra_sections"), header);
        if !check_line(header, &path, errors) {
            continue;
        }
        let first = header.split_whitespace().next().unwrap_or("");
        if !matches!(
            first,
            "listen"
                | "frontend"
                | "backend"
                | "userlist"
                | "peers"
                | "resolvers"
                | "mailers"
                | "cache"
                | "ring"
                | "http-errors"
                | "program"
        ) {
            errors.push(
                &path,
                "must start with a section keyword (listen, frontend, backend, userlist, ...)",
            );
            continue;
        }
        let (header, bind) = split_section_address(header);
        let mut lines = modern(check_lines(lines, &path, errors));
        if let Some(bind) = bind {
            lines.insert(0, bind);
        }
        if extra_sections.insert(header, lines).is_some() {
            errors.push(
                &path,
                "names the same section as another extra_sections key",
            );
        }
    }
    let config_file_path = if h.do_writes {
        if h.config_file_path.is_none() {
            errors.push(p("config_file_path"), "is required when do_writes is true");
        }
        h.config_file_path.clone()
    } else {
        None
    };
    let reload_command = h.reload_command.clone().filter(|c| !c.trim().is_empty());
    let managed = h.managed.then(|| ManagedHaproxy {
        binary: h
            .haproxy_binary
            .clone()
            .unwrap_or_else(|| PathBuf::from(defaults::HAPROXY_BINARY)),
        stop_timeout: h
            .stop_timeout
            .map_or(defaults::STOP_TIMEOUT, Duration::from),
    });
    if h.managed && config_file_path.is_none() {
        errors.push(p("managed"), "needs do_writes and config_file_path");
    }
    if !h.managed && (h.haproxy_binary.is_some() || h.stop_timeout.is_some()) {
        errors.push(
            p(if h.haproxy_binary.is_some() {
                "haproxy_binary"
            } else {
                "stop_timeout"
            }),
            "applies only with managed: true",
        );
    }
    let master_socket_path = h.master_socket_path.clone().or_else(|| {
        let dir = config_file_path.as_ref()?.parent()?;
        h.managed.then(|| dir.join(defaults::MASTER_SOCKET_NAME))
    });
    let reload_method = validate_reload_method(
        h,
        reload_command.as_ref(),
        master_socket_path.is_some(),
        errors,
    );
    let dynamic_servers = match h.dynamic_servers.as_deref() {
        None | Some("auto") => true,
        Some("off" | "slots") => false,
        Some(_) => {
            errors.push(p("dynamic_servers"), "must be `auto`, `slots` or `off`");
            true
        }
    };
    let server_slots = match (h.dynamic_servers.as_deref(), h.server_slots) {
        (Some("slots"), None) => Some(defaults::SERVER_SLOTS),
        (Some("slots"), Some(0)) => {
            errors.push(p("server_slots"), "must be at least 1");
            None
        }
        (Some("slots"), Some(n)) => Some(n),
        (_, None) => None,
        (_, Some(_)) => {
            errors.push(
                p("server_slots"),
                "applies only with dynamic_servers: slots",
            );
            None
        }
    };
    if let Some(c) = &reload_command {
        check_line(c, &p("reload_command"), errors);
    }
    if let Some(c) = &h.check_command {
        check_line(c, &p("check_command"), errors);
    }
    let bind_address = h
        .bind_address
        .clone()
        .unwrap_or_else(|| defaults::BIND_ADDRESS.to_owned());
    // `*` is HAProxy's "every address", as upstream configs write it.
    if !bind_address.is_empty() && bind_address != "*" {
        check_word(&bind_address, &p("bind_address"), errors);
    }
    let restart_jitter = h.restart_jitter.unwrap_or(0.0);
    if !(0.0..=1.0).contains(&restart_jitter) {
        errors.push(p("restart_jitter"), "must be from 0.0 to 1.0");
    }
    let max_server_id = h.max_server_id.unwrap_or(defaults::MAX_SERVER_ID);
    if max_server_id == 0 {
        errors.push(p("max_server_id"), "must be at least 1");
    }
    let command_timeout = h
        .command_timeout
        .map_or(defaults::COMMAND_TIMEOUT, Duration::from);
    if command_timeout.is_zero() {
        errors.push(p("command_timeout"), "must be greater than 0");
    }
    let shared_frontend = h
        .shared_frontend
        .as_ref()
        .map(|l| check_lines(l, &p("shared_frontend"), errors));
    let socket_file_paths = match &h.socket_file_path {
        None => Vec::new(),
        Some(SocketPaths::One(p)) => vec![p.clone()],
        Some(SocketPaths::Many(ps)) => ps.clone(),
    };
    let config_file_mode = match h.config_file_mode.as_deref().map(parse_mode) {
        None => defaults::CONFIG_FILE_MODE,
        Some(Ok(mode)) => mode,
        Some(Err(why)) => {
            errors.push(p("config_file_mode"), why);
            defaults::CONFIG_FILE_MODE
        }
    };
    if h.server_state_lines.unwrap_or(true) && h.do_socket && !socket_file_paths.is_empty() {
        if let Some(cfg) = &config_file_path {
            add_server_state_lines(&mut global, &mut defaults_lines, cfg);
        }
    }
    let server_state_file = server_state_file(&global);
    HaproxyConfig {
        global,
        defaults: defaults_lines,
        extra_sections,
        config_file_path,
        candidate_config_file_path: h.candidate_config_file_path.clone(),
        config_file_mode,
        socket_file_paths,
        reload_command,
        check_command: h.check_command.clone().filter(|c| !c.trim().is_empty()),
        do_reloads: h.do_reloads,
        do_socket: h.do_socket,
        do_checks: h.do_checks,
        bind_address,
        restart_interval: h
            .restart_interval
            .map_or(defaults::RESTART_INTERVAL, Duration::from),
        restart_jitter,
        state_file_path: h.state_file_path.clone(),
        state_file_ttl: h
            .state_file_ttl
            .map_or(defaults::STATE_FILE_TTL, Duration::from),
        shared_frontend,
        use_nerve_weights: h.use_nerve_weights,
        server_order_seed: h.server_order_seed.unwrap_or_else(host_seed),
        max_server_id,
        command_timeout,
        reload_method,
        master_socket_path,
        pid_file_path: h.pid_file_path.clone(),
        managed,
        server_state_file,
        dynamic_servers,
        server_slots,
    }
}

/// `option idle-close-on-response` (HAProxy 2.6+): on a reload the old worker answers an
/// idle keep-alive client's next request with `Connection: close` instead of closing the
/// connection under it. HTTP mode only.
pub(super) const IDLE_CLOSE: &str = "option idle-close-on-response";
pub(super) const EXPOSE_FD: &str = "expose-fd listeners";

/// Whether `lines` set `option <name>` or `no option <name>` themselves.
fn sets_option(lines: &[String], option: &str) -> bool {
    lines.iter().any(|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        matches!(words.as_slice(), ["option", o, ..] | ["no", "option", o, ..] if *o == option)
    })
}

/// Whether the `defaults` lines put every proxy in HTTP mode (HAProxy's own default is
/// TCP).
fn defaults_http(defaults: &[String]) -> bool {
    defaults
        .iter()
        .rev()
        .find_map(|l| l.trim().strip_prefix("mode "))
        .is_some_and(|m| m.trim() == "http")
}

/// What a hitless reload needs, added where the operator has not decided either way:
/// `option idle-close-on-response` in HTTP-mode `defaults`, and `expose-fd listeners` on
/// admin-level stats sockets (listeners for a `-x` reload; master-worker mode passes them
/// anyway). `seamless_reload_lines: false` turns this off.
fn add_seamless_reload_lines(global: &mut [String], defaults: &mut Vec<String>) {
    if defaults_http(defaults) && !sets_option(defaults, "idle-close-on-response") {
        defaults.push(IDLE_CLOSE.to_owned());
    }
    for line in global.iter_mut() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let admin = words.windows(2).any(|w| w == ["level", "admin"]);
        if words.first() == Some(&"stats")
            && words.get(1) == Some(&"socket")
            && admin
            && !words.contains(&"expose-fd")
        {
            line.push(' ');
            line.push_str(EXPOSE_FD);
        }
    }
}

/// `server-state-file <haproxy.cfg>.server-state` in `global` unless it names one, and
/// `load-server-state-from-file global` in `defaults` unless it says where to load from:
/// synapse dumps `show servers state` there before every reload, so the new worker
/// starts with the old one's weights, maintenance and drain states, and health.
fn add_server_state_lines(global: &mut Vec<String>, defaults: &mut Vec<String>, cfg: &Path) {
    let has = |lines: &[String], kw: &str| {
        lines
            .iter()
            .any(|l| l.split_whitespace().next() == Some(kw))
    };
    if !has(global, "server-state-file") {
        let file = format!("{}.server-state", cfg.display());
        if file.contains(char::is_whitespace) {
            // HAProxy would read two words; the operator can name a file instead.
            return;
        }
        global.push(format!("server-state-file {file}"));
    }
    if !has(defaults, "load-server-state-from-file") {
        defaults.push("load-server-state-from-file global".to_owned());
    }
}

impl HaproxyConfig {
    /// Why a reload of this config can fail requests, each naming the missing line
    /// (for `--check-config` and the start-up log).
    pub fn hitless_warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.do_reloads {
            return out;
        }
        let idle_close = self.defaults.iter().any(|l| {
            l.split_whitespace().collect::<Vec<_>>() == ["option", "idle-close-on-response"]
        });
        if !idle_close {
            let why = if defaults_http(&self.defaults) {
                "it is switched off"
            } else {
                "`defaults` has no `mode http` (add it to each HTTP frontend instead)"
            };
            out.push(format!(
                "haproxy.defaults: no `{IDLE_CLOSE}` ({why}): a reload closes idle keep-alive \
                 client connections, and a client sending its next request at that moment \
                 gets an error"
            ));
        }
        let exposed = self
            .global
            .iter()
            .any(|l| l.starts_with("stats socket") && l.contains(EXPOSE_FD));
        let master_worker = self.managed.is_some()
            || matches!(
                self.reload_method,
                Some(ReloadMethod::MasterSocket | ReloadMethod::Signal)
            );
        if !exposed && !master_worker {
            out.push(format!(
                "haproxy.global: no admin-level `stats socket ... {EXPOSE_FD}`: unless HAProxy \
                 runs in master-worker mode (-W/-Ws), a reload refuses new connections \
                 while the listeners move"
            ));
        }
        out
    }
}

/// `reload_method`, or the one the other keys imply: `command` with a `reload_command`,
/// else `master_socket` with a master socket (managed mode has one), else `signal`
/// with a `pid_file_path`.
fn validate_reload_method(
    h: &HaproxyFile,
    reload_command: Option<&String>,
    master_socket: bool,
    errors: &mut ConfigErrors,
) -> Option<ReloadMethod> {
    let p = |k: &str| join_path("haproxy", k);
    let command = || reload_command.map(|c| ReloadMethod::Command(c.clone()));
    let method = match h.reload_method.as_deref() {
        None => command()
            .or_else(|| master_socket.then_some(ReloadMethod::MasterSocket))
            .or_else(|| (h.pid_file_path.is_some() || h.managed).then_some(ReloadMethod::Signal)),
        Some("command") => {
            if reload_command.is_none() {
                errors.push(
                    p("reload_command"),
                    "is required with reload_method command",
                );
            }
            command()
        }
        Some("master_socket") => {
            if !master_socket {
                errors.push(
                    p("master_socket_path"),
                    "is required with reload_method master_socket (unless managed)",
                );
            }
            Some(ReloadMethod::MasterSocket)
        }
        Some("signal") => {
            if h.pid_file_path.is_none() && !h.managed {
                errors.push(
                    p("pid_file_path"),
                    "is required with reload_method signal (unless managed)",
                );
            }
            Some(ReloadMethod::Signal)
        }
        Some(_) => {
            errors.push(
                p("reload_method"),
                "must be `command`, `master_socket` or `signal`",
            );
            None
        }
    };
    if h.do_reloads && method.is_none() && h.reload_method.is_none() {
        errors.push(
            p("reload_command"),
            "is required when do_reloads is true (or set master_socket_path, pid_file_path \
             or managed)",
        );
    }
    method.filter(|_| h.do_reloads)
}

/// An octal mode (`"0640"`, `"640"`): permission bits only, never writable by others.
fn parse_mode(text: &str) -> Result<u32, &'static str> {
    let mode = u32::from_str_radix(text.trim(), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or("must be an octal mode from 0000 to 0777, e.g. \"0640\"")?;
    if mode & 0o002 != 0 {
        return Err("must not be writable by others");
    }
    if mode & 0o400 == 0 {
        return Err("must be readable by its owner");
    }
    Ok(mode)
}

/// The `server-state-file` a `global` section names, resolved against its
/// `server-state-base`, if any.
fn server_state_file(global: &[String]) -> Option<PathBuf> {
    let value = |kw: &str| {
        global.iter().rev().find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some(kw))
                .then(|| words.next().map(|w| w.trim_matches('"').to_owned()))
                .flatten()
        })
    };
    let file = PathBuf::from(value("server-state-file")?);
    match value("server-state-base") {
        Some(base) if file.is_relative() => Some(PathBuf::from(base).join(file)),
        _ => Some(file),
    }
}

/// The default `server_order_seed`: stable on one host (so restarts render the same
/// file), different across hosts (so `balance first` does not pick the same server
/// everywhere).
fn host_seed() -> u64 {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    crate::hash::fnv1a(host.trim().as_bytes())
}
