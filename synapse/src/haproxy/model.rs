//! A rendered haproxy.cfg as the plan sees it: the structure (everything that only a
//! reload can change) apart from the servers of each backend (what the runtime API can
//! change). Pure.
//!
//! The model is read back from the text the renderer produced (and checked against its
//! line grammar), so the servers added at runtime are exactly the ones the file
//! declares: same arguments, same `id`, same `default-server` settings. Words that
//! could not be sent over the runtime API unchanged (a `;`, a `\`, a quote, a `$`) make
//! a server or backend "reload only"; they are never escaped.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

/// A proxy or server name as HAProxy allows it: `[A-Za-z0-9_.:-]+`. The only names a
/// runtime command carries.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

impl Name {
    pub fn new(s: &str) -> Option<Self> {
        let ok = !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
        ok.then(|| Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One argument word of a server line that can go over the runtime API as it is:
/// printable ASCII without whitespace, `;`, `\`, `#`, quotes or `$`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Word(String);

impl Word {
    pub fn new(s: &str) -> Option<Self> {
        let ok = !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_graphic() && !b";\\#\"'$".contains(&b));
        ok.then(|| Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Word {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The whole config, split for the plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigModel {
    /// Every line outside `backend` sections (global, defaults, frontends, listen and
    /// other sections), in order: any difference needs a reload.
    pub base: Vec<String>,
    pub backends: BTreeMap<String, BackendModel>,
}

/// One `backend` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendModel {
    /// The section's lines other than `server` lines, in order.
    pub lines: Vec<String>,
    /// The runtime name, if the backend's name is a valid one.
    pub name: Option<Name>,
    /// The balance algorithm takes servers and weight changes at runtime
    /// (roundrobin, leastconn, first, random, or a consistent hash).
    pub dynamic: bool,
    /// A `cookie` directive applies (in the backend or `defaults`): server cookies matter.
    pub cookie_directive: bool,
    /// `default-server` arguments (`defaults`, then the backend's), which a dynamic
    /// server does not inherit; `None` when one of them cannot be sent.
    pub default_args: Option<Vec<Word>>,
    pub servers: BTreeMap<String, ServerModel>,
}

/// One `server` line, with the `default-server` settings applied for the derived fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerModel {
    pub id: Option<u32>,
    /// `None` for a host name (the runtime API cannot set one).
    pub addr: Option<IpAddr>,
    pub port: u16,
    /// The effective weight (last `weight` of default-server and server; 1 if none).
    pub weight: u16,
    /// `disabled`: in maintenance.
    pub maint: bool,
    /// Health checks on (`check`, not undone by `no-check`).
    pub check: bool,
    pub cookie: Option<Word>,
    /// The server line's other arguments, in order; `None` if one cannot be sent.
    pub args: Option<Vec<Word>>,
    /// The server line's other arguments as text, for comparing servers.
    pub raw_args: Vec<String>,
}

impl ServerModel {
    /// What a server is besides its address, weight and state: if this differs, the
    /// server must be replaced.
    pub fn fixed(&self) -> (Option<u32>, &[String], Option<&Word>, bool) {
        (self.id, &self.raw_args, self.cookie.as_ref(), self.check)
    }
}

/// A config without its server lines: all that `haproxy -c` could object to when only
/// servers changed (and those HAProxy already accepted at runtime).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Structure {
    base: Vec<String>,
    backends: Vec<(String, Vec<String>)>,
}

impl ConfigModel {
    /// Everything but the server lines.
    pub fn structure(&self) -> Structure {
        Structure {
            base: self.base.clone(),
            backends: self
                .backends
                .iter()
                .map(|(name, b)| (name.clone(), b.lines.clone()))
                .collect(),
        }
    }

    /// Whether this config has `structure`, compared in place (no copy).
    pub fn has_structure(&self, structure: &Structure) -> bool {
        self.base == structure.base
            && self.backends.len() == structure.backends.len()
            && self
                .backends
                .iter()
                .zip(&structure.backends)
                .all(|((n1, b1), (n2, lines))| n1 == n2 && &b1.lines == lines)
    }

    /// The `defaults` sections' directives, which every backend inherits: the input to
    /// [`ConfigModel::parse_backend`].
    pub fn defaults_lines(&self) -> Vec<String> {
        let mut in_defaults = false;
        let mut out = Vec::new();
        for line in &self.base {
            if line.starts_with(char::is_whitespace) {
                if in_defaults {
                    out.push(line.trim().to_owned());
                }
            } else {
                in_defaults = line.split_whitespace().next() == Some("defaults");
            }
        }
        out
    }

    /// Reads the `backend` section of a part of a rendered file (one service's
    /// sections), as [`ConfigModel::parse`] reads it in the whole file: a change to one
    /// service is modelled without parsing the rest again.
    pub fn parse_backend(part: &str, defaults: &[String]) -> Option<(String, BackendModel)> {
        let mut name = None;
        let mut lines = Vec::new();
        for line in part.lines() {
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            if !line.starts_with(char::is_whitespace) {
                if name.is_some() {
                    break;
                }
                let mut words = trimmed.split_whitespace();
                if let (Some("backend"), Some(n), None) = (words.next(), words.next(), words.next())
                {
                    name = Some(n.to_owned());
                }
                continue;
            }
            if name.is_some() {
                lines.push(trimmed.to_owned());
            }
        }
        let name = name?;
        let model = BackendModel::parse(&name, defaults, &lines);
        Some((name, model))
    }

    /// Reads a haproxy.cfg (as rendered by synapse: sections at column 0, directives
    /// indented).
    pub fn parse(text: &str) -> Self {
        let mut model = Self::default();
        let mut defaults: Vec<String> = Vec::new();
        let mut in_defaults = false;
        let mut backend: Option<(String, Vec<String>)> = None;
        let mut backends: Vec<(String, Vec<String>)> = Vec::new();
        for line in text.lines() {
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            if !line.starts_with(char::is_whitespace) {
                backends.extend(backend.take());
                let mut words = trimmed.split_whitespace();
                let first = words.next().unwrap_or_default();
                in_defaults = first == "defaults";
                match (first, words.next(), words.next()) {
                    ("backend", Some(name), None) => backend = Some((name.to_owned(), vec![])),
                    _ => model.base.push(trimmed.to_owned()),
                }
                continue;
            }
            match &mut backend {
                Some((_, lines)) => lines.push(trimmed.to_owned()),
                None => {
                    if in_defaults {
                        defaults.push(trimmed.to_owned());
                    }
                    model.base.push(format!("    {trimmed}"));
                }
            }
        }
        backends.extend(backend.take());
        for (name, lines) in backends {
            let b = BackendModel::parse(&name, &defaults, &lines);
            model.backends.insert(name, b);
        }
        model
    }
}

impl BackendModel {
    fn parse(name: &str, defaults: &[String], lines: &[String]) -> Self {
        let directive = |kw: &str| {
            let find = |ls: &[String]| {
                ls.iter()
                    .rev()
                    .find(|l| l.split_whitespace().next() == Some(kw))
                    .cloned()
            };
            find(lines).or_else(|| find(defaults))
        };
        let balance = directive("balance");
        let hash_type = directive("hash-type");
        let consistent = hash_type
            .as_deref()
            .is_some_and(|h| h.split_whitespace().nth(1) == Some("consistent"));
        let algo = balance
            .as_deref()
            .and_then(|b| b.split_whitespace().nth(1))
            .unwrap_or("roundrobin");
        let dynamic = match algo {
            "roundrobin" | "leastconn" | "first" | "random" => true,
            "static-rr" => false,
            // source, uri, url_param, hdr(..), rdp-cookie(..): map-based unless consistent.
            _ => consistent,
        };
        let cookie_directive = directive("cookie").is_some();
        let default_words: Vec<&str> = defaults
            .iter()
            .chain(lines)
            .filter_map(|l| l.strip_prefix("default-server "))
            .flat_map(str::split_whitespace)
            .collect();
        let default_args = strip_state_words(&default_words)
            .into_iter()
            .map(Word::new)
            .collect::<Option<Vec<_>>>();
        let mut servers = BTreeMap::new();
        let mut others = Vec::new();
        for line in lines {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["server", name, addr, args @ ..] => {
                    servers.insert(
                        (*name).to_owned(),
                        ServerModel::parse(addr, &default_words, args),
                    );
                }
                _ => others.push(line.clone()),
            }
        }
        Self {
            lines: others,
            name: Name::new(name),
            dynamic,
            cookie_directive,
            default_args,
            servers,
        }
    }
}

/// Drops the words the plan sets itself (`weight N`, `disabled`, `enabled`, `id N`,
/// `cookie X`) and `init-addr X`, which dynamic servers refuse and which means nothing
/// for an IP address.
fn strip_state_words<'a>(words: &[&'a str]) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut it = words.iter();
    while let Some(w) = it.next() {
        match *w {
            "weight" | "id" | "cookie" | "init-addr" => {
                it.next();
            }
            "disabled" | "enabled" => {}
            other => out.push(other),
        }
    }
    out
}

impl ServerModel {
    fn parse(addr: &str, default_words: &[&str], args: &[&str]) -> Self {
        let (host, port) = match addr.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().unwrap_or(0)),
            None => (addr, 0),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let mut weight = 1;
        let mut maint = false;
        let mut check = false;
        let mut id = None;
        let mut cookie = None;
        let all: Vec<&str> = default_words.iter().chain(args).copied().collect();
        let own_start = default_words.len();
        let mut i = 0;
        while i < all.len() {
            let next = all.get(i + 1).copied();
            match all[i] {
                "weight" => {
                    weight = next.and_then(|n| n.parse().ok()).unwrap_or(weight);
                    i += 1;
                }
                "id" if i >= own_start => {
                    id = next.and_then(|n| n.parse().ok());
                    i += 1;
                }
                "cookie" if i >= own_start => {
                    cookie = next.and_then(Word::new);
                    i += 1;
                }
                "disabled" => maint = true,
                "enabled" => maint = false,
                "check" => check = true,
                "no-check" => check = false,
                _ => {}
            }
            i += 1;
        }
        let raw: Vec<&str> = strip_state_words(args);
        Self {
            id,
            addr: host.parse().ok(),
            port,
            weight,
            maint,
            check,
            cookie,
            args: raw.iter().copied().map(Word::new).collect(),
            raw_args: raw.into_iter().map(str::to_owned).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# Generated by synapse.\n\nglobal\n    stats socket /s level admin\n\n\
        defaults\n    mode http\n    default-server inter 2s weight 4 init-addr last,libc,none\n\n\
        frontend web\n    bind 127.0.0.1:80\n    default_backend web\n\n\
        backend web\n    balance roundrobin\n    \
        server a_10.0.0.1:80 10.0.0.1:80 id 1 cookie a_10.0.0.1:80 check maxconn 5\n    \
        server b_[::1]:81 [::1]:81 id 2 weight 7 disabled\n\n\
        backend hashed\n    balance source\n    server h_x:1 db.internal:1 id 1\n\n\
        backend chash\n    balance uri\n    hash-type consistent\n    cookie SRV insert\n\n\
        listen stats\n    bind :1\n";

    #[test]
    fn splits_structure_from_servers() {
        let m = ConfigModel::parse(TEXT);
        assert_eq!(
            m.base,
            [
                "global",
                "    stats socket /s level admin",
                "defaults",
                "    mode http",
                "    default-server inter 2s weight 4 init-addr last,libc,none",
                "frontend web",
                "    bind 127.0.0.1:80",
                "    default_backend web",
                "listen stats",
                "    bind :1",
            ]
        );
        let web = &m.backends["web"];
        assert_eq!(web.lines, ["balance roundrobin"]);
        assert!(web.dynamic && !web.cookie_directive);
        let words = |ws: &[Word]| ws.iter().map(|w| w.as_str().to_owned()).collect::<Vec<_>>();
        assert_eq!(words(web.default_args.as_ref().unwrap()), ["inter", "2s"]);
        let a = &web.servers["a_10.0.0.1:80"];
        assert_eq!(
            (a.id, a.addr, a.port, a.weight, a.maint, a.check),
            (
                Some(1),
                Some("10.0.0.1".parse().unwrap()),
                80,
                4,
                false,
                true
            )
        );
        assert_eq!(a.cookie.as_ref().unwrap().as_str(), "a_10.0.0.1:80");
        assert_eq!(words(a.args.as_ref().unwrap()), ["check", "maxconn", "5"]);
        let b = &web.servers["b_[::1]:81"];
        assert_eq!(
            (b.addr, b.port, b.weight, b.maint, b.check),
            (Some("::1".parse().unwrap()), 81, 7, true, false)
        );
        assert!(!m.backends["hashed"].dynamic);
        assert_eq!(m.backends["hashed"].servers["h_x:1"].addr, None);
        assert!(m.backends["chash"].dynamic && m.backends["chash"].cookie_directive);
        assert!(!m.backends.contains_key("stats"));
    }

    #[test]
    fn a_backend_parsed_from_its_part_equals_the_one_parsed_from_the_file() {
        let whole = ConfigModel::parse(TEXT);
        let defaults = whole.defaults_lines();
        assert_eq!(
            defaults,
            [
                "mode http",
                "default-server inter 2s weight 4 init-addr last,libc,none"
            ]
        );
        for (name, backend) in &whole.backends {
            let start = TEXT.find(&format!("\nbackend {name}\n")).unwrap();
            // The part runs to the end: parsing stops at the next section.
            let (parsed, model) = ConfigModel::parse_backend(&TEXT[start..], &defaults).unwrap();
            assert_eq!(&parsed, name);
            assert_eq!(&model, backend, "{name}");
        }
        assert!(ConfigModel::parse_backend("frontend f\n    bind :1\n", &defaults).is_none());
    }

    #[test]
    fn words_that_cannot_be_sent_make_a_server_reload_only() {
        let m = ConfigModel::parse(
            "backend b\n    server s 10.0.0.1:1 check \"${X}\"\n    server t 10.0.0.1:2 a;b\n",
        );
        assert!(m.backends["b"].servers["s"].args.is_none());
        assert!(m.backends["b"].servers["t"].args.is_none());
        assert!(Name::new("web/x").is_none() && Name::new("a_10.0.0.1:80").is_some());
    }
}
