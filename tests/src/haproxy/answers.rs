//! HAProxy's answers, parsed: the master CLI's `show proc` ([`ProcessList`]), and the
//! runtime API's `show servers state` ([`ServerState`], with its operational and admin
//! states) and `show stat` ([`StatRow`]).

use std::collections::BTreeMap;

/// `show proc` from the master CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessList {
    pub master_pid: u32,
    /// Reloads the master has done (failed ones included).
    pub reloads: u32,
    /// Consecutive failed reloads; a successful reload resets it to 0.
    pub failed_reloads: u32,
    /// The current workers' PIDs.
    pub workers: Vec<u32>,
    /// Workers of earlier generations still finishing their connections.
    pub old_workers: Vec<u32>,
}

impl ProcessList {
    /// Parses the master CLI's `show proc` output (HAProxy 2.6 to 2.8).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut master = None;
        let mut workers = Vec::new();
        let mut old_workers = Vec::new();
        let mut section = "";
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with("#<PID>") {
                continue;
            }
            if let Some(name) = line.strip_prefix('#') {
                section = match name.trim() {
                    "workers" => "workers",
                    "old workers" => "old workers",
                    _ => "other",
                };
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let pid = |f: &[&str]| {
                f.first()
                    .and_then(|p| p.parse::<u32>().ok())
                    .ok_or_else(|| format!("bad pid in {line:?}"))
            };
            match (fields.get(1).copied(), section) {
                (Some("master"), _) => {
                    let number = |i: usize| {
                        fields
                            .get(i)
                            .map(|f| f.trim_end_matches(']'))
                            .and_then(|f| f.parse::<u32>().ok())
                            .ok_or_else(|| format!("bad master line {line:?}"))
                    };
                    // `<pid> master <reloads> [failed: <n>] <uptime> <version>`
                    if fields.get(3) != Some(&"[failed:") {
                        return Err(format!("bad master line {line:?}"));
                    }
                    master = Some((pid(&fields)?, number(2)?, number(4)?));
                }
                (Some("worker"), "workers") => workers.push(pid(&fields)?),
                (Some("worker"), "old workers") => old_workers.push(pid(&fields)?),
                _ => {}
            }
        }
        let (master_pid, reloads, failed_reloads) =
            master.ok_or_else(|| format!("no master line in {text:?}"))?;
        Ok(Self {
            master_pid,
            reloads,
            failed_reloads,
            workers,
            old_workers,
        })
    }
}

/// A server's operational state (`srv_op_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpState {
    Stopped,
    Starting,
    Running,
    Stopping,
    Unknown(u8),
}

impl From<u8> for OpState {
    fn from(value: u8) -> Self {
        match value {
            0 => Self::Stopped,
            1 => Self::Starting,
            2 => Self::Running,
            3 => Self::Stopping,
            other => Self::Unknown(other),
        }
    }
}

/// A server's administrative state (`srv_admin_state`), a bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminState(pub u8);

impl AdminState {
    /// In maintenance for any reason (forced, inherited, DNS resolution): no traffic.
    /// (`SRV_ADMF_MAINT`; the config's `disabled` sets forced maintenance too.)
    pub fn is_maint(self) -> bool {
        self.0 & 0x23 != 0
    }

    /// Draining (forced or inherited): only persistent traffic.
    pub fn is_drain(self) -> bool {
        self.0 & 0x18 != 0
    }
}

/// One row of `show servers state <backend>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    pub backend: String,
    pub name: String,
    pub addr: String,
    pub port: u16,
    pub op_state: OpState,
    pub admin_state: AdminState,
    /// The user weight (`srv_uweight`).
    pub weight: u32,
}

impl ServerState {
    /// Parses the raw `show servers state` output (version line, `#` header, rows).
    pub fn parse_all(text: &str) -> Result<Vec<Self>, String> {
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        match lines.next() {
            Some("1") => {}
            other => {
                return Err(format!(
                    "expected version line \"1\", got {other:?} in {text:?}"
                ))
            }
        }
        let header = lines
            .next()
            .and_then(|h| h.strip_prefix('#'))
            .ok_or_else(|| format!("no header in {text:?}"))?;
        let columns: Vec<&str> = header.split_whitespace().collect();
        let column = |name: &str| {
            columns
                .iter()
                .position(|c| *c == name)
                .ok_or_else(|| format!("no column {name} in {header:?}"))
        };
        let idx = [
            column("be_name")?,
            column("srv_name")?,
            column("srv_addr")?,
            column("srv_port")?,
            column("srv_op_state")?,
            column("srv_admin_state")?,
            column("srv_uweight")?,
        ];
        lines
            .map(|line| {
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
                        .map_err(|_| format!("bad number in column {i} of {line:?}"))
                };
                let small = |i: usize| {
                    u8::try_from(num(i)?).map_err(|_| format!("state out of range in {line:?}"))
                };
                Ok(Self {
                    backend: get(0)?.to_owned(),
                    name: get(1)?.to_owned(),
                    addr: get(2)?.to_owned(),
                    port: u16::try_from(num(3)?).map_err(|_| format!("bad port in {line:?}"))?,
                    op_state: OpState::from(small(4)?),
                    admin_state: AdminState(small(5)?),
                    weight: num(6)?,
                })
            })
            .collect()
    }
}

/// One row of `show stat` (a frontend, backend or server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatRow {
    /// `pxname`: the frontend or backend.
    pub proxy: String,
    /// `svname`: `FRONTEND`, `BACKEND` or the server name.
    pub name: String,
    /// Every named column, by name (empty values included).
    pub fields: BTreeMap<String, String>,
}

impl StatRow {
    /// A column's value, if the column exists.
    pub fn get(&self, field: &str) -> Option<&str> {
        self.fields.get(field).map(String::as_str)
    }

    /// A numeric column (`stot`, `scur`, `weight`, ...), if present and non-empty.
    pub fn number(&self, field: &str) -> Option<u64> {
        self.get(field)?.parse().ok()
    }

    /// `status`: `UP`, `DOWN`, `MAINT`, `OPEN`, `no check`, ...
    pub fn status(&self) -> &str {
        self.get("status").unwrap_or_default()
    }

    /// A server row (neither `FRONTEND` nor `BACKEND`).
    pub fn is_server(&self) -> bool {
        self.get("type") == Some("2")
    }

    /// Parses `show stat` CSV output.
    pub fn parse_all(text: &str) -> Result<Vec<Self>, String> {
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let header = lines
            .next()
            .and_then(|h| h.strip_prefix("# "))
            .ok_or_else(|| format!("no CSV header in {text:?}"))?;
        let columns: Vec<&str> = header.split(',').collect();
        lines
            .map(|line| {
                let values: Vec<&str> = line.split(',').collect();
                let fields: BTreeMap<String, String> = columns
                    .iter()
                    .zip(values.iter())
                    .filter(|(c, _)| !c.is_empty())
                    .map(|(c, v)| ((*c).to_owned(), (*v).to_owned()))
                    .collect();
                let proxy = fields
                    .get("pxname")
                    .cloned()
                    .ok_or_else(|| format!("no pxname in {line:?}"))?;
                let name = fields
                    .get("svname")
                    .cloned()
                    .ok_or_else(|| format!("no svname in {line:?}"))?;
                Ok(Self {
                    proxy,
                    name,
                    fields,
                })
            })
            .collect()
    }
}
