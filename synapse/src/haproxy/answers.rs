//! What HAProxy's runtime API and master CLI answer, parsed, and the pure rules about
//! what may be sent: the decisions layer's view of HAProxy (the plan and the renderer
//! read [`Admin`], [`LiveServers`] and [`Capabilities`]), with no socket in sight. The
//! socket client that asks is [`super::runtime`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Whether `text` is safe to send as one runtime-API command: no `;` (the command
/// separator), no `\` (its escape), no newline or other control character.
pub fn is_safe_command(text: &str) -> bool {
    !text
        .bytes()
        .any(|b| b == b';' || b == b'\\' || b.is_ascii_control())
}

/// What the running HAProxy can do at runtime, from its version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    pub version: (u32, u32),
    /// `add server` / `del server` without experimental mode: 2.6+.
    pub dynamic_servers: bool,
    /// `cookie` on `add server`: refused by 2.6, accepted by 2.8 (2.7 not assumed).
    pub dynamic_cookies: bool,
}

impl Capabilities {
    pub fn for_version(major: u32, minor: u32) -> Self {
        let v = (major, minor);
        Self {
            version: v,
            dynamic_servers: v >= (2, 6),
            dynamic_cookies: v >= (2, 8),
        }
    }

    /// From `show info`'s `Version: 2.6.12-1+deb12u4` line.
    pub fn from_show_info(text: &str) -> Option<Self> {
        let version = text
            .lines()
            .find_map(|l| l.strip_prefix("Version:"))?
            .trim();
        let (major, minor) = parse_version(version)?;
        Some(Self::for_version(major, minor))
    }
}

/// `2.6.12-1+deb12u4` → `(2, 6)`.
pub fn parse_version(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

pub fn parse_show_backend(text: &str) -> Option<BTreeSet<String>> {
    let mut lines = text.lines();
    if !lines.next()?.starts_with("# name") {
        return None;
    }
    Some(
        lines
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
    )
}

/// A server's administrative state, from `srv_admin_state`'s bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admin {
    Ready,
    /// Forced or inherited drain: only persistent traffic.
    Drain,
    /// Any maintenance (forced, from the config's `disabled`, inherited, DNS).
    Maint,
}

impl Admin {
    pub fn from_bits(bits: u32) -> Self {
        if bits & 0x23 != 0 {
            Self::Maint
        } else if bits & 0x18 != 0 {
            Self::Drain
        } else {
            Self::Ready
        }
    }
}

/// One server as HAProxy runs it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveServer {
    pub id: u32,
    /// `None` when HAProxy has no address for it (`-`).
    pub addr: Option<IpAddr>,
    pub port: u16,
    pub admin: Admin,
    /// The current (user) weight.
    pub weight: u16,
}

/// Backend → server name → state.
pub type LiveServers = BTreeMap<String, BTreeMap<String, LiveServer>>;

/// Parses `show servers state` (version line `1`, a `#` header naming the columns, one
/// row per server).
pub fn parse_servers_state(text: &str) -> Result<LiveServers, String> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    if lines.next() != Some("1") {
        return Err("no version line".into());
    }
    let header = lines
        .next()
        .and_then(|h| h.strip_prefix('#'))
        .ok_or("no header")?;
    let columns: Vec<&str> = header.split_whitespace().collect();
    let col = |name: &str| {
        columns
            .iter()
            .position(|c| *c == name)
            .ok_or_else(|| format!("no column {name}"))
    };
    let idx = [
        col("be_name")?,
        col("srv_id")?,
        col("srv_name")?,
        col("srv_addr")?,
        col("srv_admin_state")?,
        col("srv_uweight")?,
        col("srv_port")?,
    ];
    let mut out = LiveServers::new();
    for line in lines {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let get = |i: usize| {
            fields
                .get(idx[i])
                .copied()
                .ok_or_else(|| format!("short row {line:?}"))
        };
        let num = |i: usize| {
            get(i)?
                .parse::<u32>()
                .map_err(|_| format!("bad number in {line:?}"))
        };
        let server = LiveServer {
            id: num(1)?,
            addr: get(3)?.parse().ok(),
            port: u16::try_from(num(6)?).map_err(|_| format!("bad port in {line:?}"))?,
            admin: Admin::from_bits(num(4)?),
            weight: u16::try_from(num(5)?).map_err(|_| format!("bad weight in {line:?}"))?,
        };
        out.entry(get(0)?.to_owned())
            .or_default()
            .insert(get(2)?.to_owned(), server);
    }
    Ok(out)
}

/// `show proc` on the master CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessList {
    pub master_pid: u32,
    /// Reloads the master has done, failed ones included.
    pub reloads: u32,
    /// Consecutive failed reloads; a successful one resets it.
    pub failed_reloads: u32,
    pub workers: Vec<u32>,
}

impl ProcessList {
    /// Parses `show proc` (HAProxy 2.6 to 2.8).
    pub fn parse(text: &str) -> Option<Self> {
        let mut master = None;
        let mut workers = Vec::new();
        let mut section = "";
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with("#<PID>") {
                continue;
            }
            if let Some(name) = line.strip_prefix('#') {
                section = if name.trim() == "workers" {
                    "workers"
                } else {
                    "other"
                };
                continue;
            }
            let f: Vec<&str> = line.split_whitespace().collect();
            let num = |i: usize| -> Option<u32> { f.get(i)?.trim_end_matches(']').parse().ok() };
            match f.get(1).copied() {
                // `<pid> master <reloads> [failed: <n>] <uptime> <version>`
                Some("master") if f.get(3) == Some(&"[failed:") => {
                    master = Some((num(0)?, num(2)?, num(4)?));
                }
                Some("worker") if section == "workers" => workers.push(num(0)?),
                _ => {}
            }
        }
        let (master_pid, reloads, failed_reloads) = master?;
        Some(Self {
            master_pid,
            reloads,
            failed_reloads,
            workers,
        })
    }
}

/// An answer for an error message: one line, at most 500 characters.
pub fn summarize(text: &str) -> String {
    summarize_to(text, 500)
}

/// `text` on one line, cut after `max` characters (with `...`).
pub fn summarize_to(text: &str, max: usize) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &one_line[..i]),
        None => one_line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_capabilities() {
        let info = "Name: HAProxy\nVersion: 2.6.12-1+deb12u4\nRelease_date: 2026/10/17\n";
        let c = Capabilities::from_show_info(info).unwrap();
        assert_eq!(c.version, (2, 6));
        assert!(c.dynamic_servers && !c.dynamic_cookies);
        assert!(Capabilities::for_version(2, 8).dynamic_cookies);
        assert!(!Capabilities::for_version(2, 4).dynamic_servers);
        assert_eq!(parse_version("2.8.25-5cf5d0683"), Some((2, 8)));
        assert_eq!(parse_version("x"), None);
        assert!(Capabilities::from_show_info("Unknown command").is_none());
    }

    #[test]
    fn parses_servers_state_and_backends() {
        let text = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n\
            3 be 1 s1 127.0.0.1 2 0 1 1 0 1 0 2 0 0 0 0 - 28081 - 0 0 - - 0\n\
            3 be 4 web-01_2001:db8::7:8080 2001:db8::7 0 1 3 1 19 1 0 0 0 0 0 0 - 8080 - 0 0 - - 0\n\
            3 be 5 n5 127.0.0.1 0 8 1 1 19 1 0 0 8 0 0 0 - 28082 - 0 0 - - 0\n";
        let s = parse_servers_state(text).unwrap();
        let be = &s["be"];
        assert_eq!(be["s1"].admin, Admin::Ready);
        let v6 = &be["web-01_2001:db8::7:8080"];
        assert_eq!(
            (v6.id, v6.addr, v6.port, v6.admin, v6.weight),
            (
                4,
                Some("2001:db8::7".parse().unwrap()),
                8080,
                Admin::Maint,
                3
            )
        );
        assert_eq!(be["n5"].admin, Admin::Drain);
        assert!(parse_servers_state("No such backend.").is_err());
        assert_eq!(
            parse_servers_state("1\n# be_id be_name srv_id srv_name srv_addr srv_admin_state srv_uweight srv_port\n")
                .unwrap()
                .len(),
            0
        );
        assert_eq!(
            parse_show_backend("# name\nbe\nstats\n").unwrap(),
            BTreeSet::from(["be".to_owned(), "stats".to_owned()])
        );
        assert!(parse_show_backend("Permission denied").is_none());
    }

    #[test]
    fn parses_show_proc() {
        let text = "#<PID>          <type>          <reloads>       <uptime>        <version>\n\
            11155           master          2 [failed: 1]   0d00h00m03s     2.6.12-1+deb12u4\n\
            # workers\n\
            11171           worker          1               0d00h00m03s     2.6.12-1+deb12u4\n\
            # old workers\n\
            11158           worker          2               0d00h00m09s     2.6.12-1+deb12u4\n\
            # programs\n\n";
        let p = ProcessList::parse(text).unwrap();
        assert_eq!(
            p,
            ProcessList {
                master_pid: 11155,
                reloads: 2,
                failed_reloads: 1,
                workers: vec![11171],
            }
        );
        assert!(ProcessList::parse("Unknown command.").is_none());
    }

    #[test]
    fn unsafe_commands_are_refused() {
        assert!(is_safe_command("set server be/s1 weight 3"));
        for bad in ["a;b", "a\\;b", "a\nb", "a\rb", "a\0b"] {
            assert!(!is_safe_command(bad), "{bad:?}");
        }
    }
}
