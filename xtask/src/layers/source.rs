//! Reading one Rust file for the layering check: blank comments and literals, cut the
//! rest into identifiers, `::` and punctuation, and pull out the paths into the crate.

/// A path into the crate that a file names, resolved to an absolute module path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Import {
    /// Absolute, without `crate`: `["config", "ServiceConfig"]`.
    pub path: Vec<String>,
    /// As written, for messages: `crate::config::ServiceConfig`.
    pub text: String,
    pub line: usize,
    /// A `pub`/`pub(…)` `use` (a re-export when the file is a facade).
    pub public: bool,
    /// The name a `use` binds (its alias, or its last segment); `None` for a glob or an
    /// inline path.
    pub name: Option<String>,
}

/// Comments (line, nested block, doc) and string, byte-string, raw-string and char
/// literals replaced by spaces; newlines kept, so lines still count.
pub fn blank(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let keep = |out: &mut String, ch: char| out.push(if ch == '\n' { '\n' } else { ' ' });
    while i < c.len() {
        let prev_ident = i > 0 && ident(c[i - 1]);
        if c[i] == '/' && c.get(i + 1) == Some(&'/') {
            while i < c.len() && c[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c[i] == '/' && c.get(i + 1) == Some(&'*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    keep(&mut out, c[i]);
                    i += 1;
                }
            }
        } else if let Some(len) = raw_string_len(&c[i..]).filter(|_| !prev_ident) {
            for &ch in &c[i..i + len] {
                keep(&mut out, ch);
            }
            i += len;
        } else if c[i] == '"' {
            out.push(' ');
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < c.len() {
                    keep(&mut out, c[i]);
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c[i] == '\'' {
            // A char literal ('x', '\n', '\u{1F600}'); otherwise a lifetime or label.
            let end = if c.get(i + 1) == Some(&'\\') {
                (i + 3..c.len()).find(|&j| c[j] == '\'')
            } else if c.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match end {
                Some(end) => {
                    for _ in i..=end {
                        out.push(' ');
                    }
                    i = end + 1;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// The length of a raw (byte) string literal starting here: `r"…"`, `br#"…"#`.
fn raw_string_len(c: &[char]) -> Option<usize> {
    let start = match c {
        ['r', ..] => 1,
        ['b', 'r', ..] => 2,
        _ => return None,
    };
    let hashes = c[start..].iter().take_while(|&&ch| ch == '#').count();
    if c.get(start + hashes) != Some(&'"') {
        return None;
    }
    let body = start + hashes + 1;
    (body..c.len())
        .find(|&j| {
            c[j] == '"'
                && c[j + 1..]
                    .iter()
                    .take(hashes)
                    .filter(|&&h| h == '#')
                    .count()
                    == hashes
        })
        .map(|j| j + 1 + hashes)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    /// `::`
    Sep,
    Punct(char),
}

fn tokens(blanked: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = blanked.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch.is_alphanumeric() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            let mut word: String = c[start..i].iter().collect();
            // A raw identifier: r#static.
            if word == "r"
                && c.get(i) == Some(&'#')
                && c.get(i + 1).is_some_and(|n| n.is_alphabetic())
            {
                let start = i + 1;
                i = start;
                while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                    i += 1;
                }
                word = c[start..i].iter().collect();
            }
            out.push((Tok::Ident(word), line));
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            out.push((Tok::Sep, line));
            i += 2;
        } else {
            out.push((Tok::Punct(ch), line));
            i += 1;
        }
    }
    out
}

fn is(tok: Option<&(Tok, usize)>, want: &str) -> bool {
    match tok {
        Some((Tok::Ident(s), _)) => s == want,
        Some((Tok::Sep, _)) => want == "::",
        Some((Tok::Punct(p), _)) => want.len() == 1 && want.starts_with(*p),
        None => false,
    }
}

/// Every path into the crate that `text` (the file of module `module`) names.
/// `is_module` says whether an absolute module path has a file.
pub fn parse_file(
    text: &str,
    module: &[String],
    is_module: &dyn Fn(&[String]) -> bool,
) -> Vec<Import> {
    let toks = tokens(&blank(text));
    let mut imports = Vec::new();
    let mut depth = 0usize;
    // Inline modules (`mod tests { … }`) and the depth their body opens at.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let current = |inline: &[(String, usize)]| -> Vec<String> {
        module
            .iter()
            .cloned()
            .chain(inline.iter().map(|(m, _)| m.clone()))
            .collect()
    };
    let mut i = 0;
    while i < toks.len() {
        match &toks[i].0 {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            Tok::Ident(w) if w == "mod" => {
                if let (Some((Tok::Ident(name), _)), true) =
                    (toks.get(i + 1).cloned(), is(toks.get(i + 2), "{"))
                {
                    inline.push((name, depth));
                    i += 2;
                    continue;
                }
            }
            Tok::Ident(w) if w == "use" => {
                let public = is_public(&toks[..i]);
                let line = toks[i].1;
                let end = (i..toks.len())
                    .find(|&j| is(toks.get(j), ";"))
                    .unwrap_or(toks.len());
                let mut leaves = Vec::new();
                let mut j = i + 1;
                use_tree(&toks[..end], &mut j, Vec::new(), &mut leaves);
                let here = current(&inline);
                for (written, name) in leaves {
                    if let Some(path) = resolve(&written, &here, is_module) {
                        imports.push(Import {
                            text: written.join("::"),
                            path,
                            line,
                            public,
                            name,
                        });
                    }
                }
                i = end + 1;
                continue;
            }
            Tok::Ident(w)
                if is(toks.get(i + 1), "::")
                    && !(i > 0 && (is(toks.get(i - 1), "::") || is(toks.get(i - 1), "$"))) =>
            {
                let line = toks[i].1;
                let mut written = vec![w.clone()];
                let mut j = i + 1;
                while is(toks.get(j), "::") {
                    match toks.get(j + 1) {
                        Some((Tok::Ident(s), _)) => written.push(s.clone()),
                        _ => break,
                    }
                    j += 2;
                }
                if let Some(path) = resolve(&written, &current(&inline), is_module) {
                    imports.push(Import {
                        text: written.join("::"),
                        path,
                        line,
                        public: false,
                        name: None,
                    });
                }
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    imports
}

/// Whether the `use` after `before` is `pub` or `pub(…)`.
fn is_public(before: &[(Tok, usize)]) -> bool {
    let n = before.len();
    if is(before.last(), "pub") {
        return true;
    }
    if is(before.last(), ")") {
        if let Some(open) = before.iter().rposition(|t| t.0 == Tok::Punct('(')) {
            return open > 0 && is(before.get(open - 1), "pub") && n - open <= 8;
        }
    }
    false
}

/// The leaves of a use tree: each path as written, with the name it binds.
fn use_tree(
    toks: &[(Tok, usize)],
    i: &mut usize,
    mut path: Vec<String>,
    out: &mut Vec<(Vec<String>, Option<String>)>,
) {
    while let Some((tok, _)) = toks.get(*i) {
        match tok {
            Tok::Ident(s) => {
                *i += 1;
                // `a::{self, b}` names `a` itself.
                if s != "self" || path.is_empty() {
                    path.push(s.clone());
                }
                if is(toks.get(*i), "::") {
                    *i += 1;
                    continue;
                }
                let mut name = path.last().cloned();
                if is(toks.get(*i), "as") {
                    if let Some((Tok::Ident(alias), _)) = toks.get(*i + 1) {
                        name = Some(alias.clone());
                    }
                    *i += 2;
                }
                out.push((path, name));
                return;
            }
            Tok::Punct('{') => {
                *i += 1;
                while *i < toks.len() && !is(toks.get(*i), "}") {
                    use_tree(toks, i, path.clone(), out);
                    if is(toks.get(*i), ",") {
                        *i += 1;
                    }
                }
                *i += 1;
                return;
            }
            Tok::Punct('*') => {
                *i += 1;
                out.push((path, None));
                return;
            }
            _ => {
                *i += 1;
                return;
            }
        }
    }
}

/// A written path, relative to module `here`, as an absolute path in the crate; `None`
/// for a path outside it (`std::…`, another crate).
fn resolve(
    written: &[String],
    here: &[String],
    is_module: &dyn Fn(&[String]) -> bool,
) -> Option<Vec<String>> {
    let (first, rest) = written.split_first()?;
    match first.as_str() {
        "crate" => Some(rest.to_vec()),
        "self" => Some(here.iter().chain(rest).cloned().collect()),
        "super" => {
            let mut base = here.to_vec();
            base.pop()?;
            let mut rest = rest;
            while let Some(("super", more)) = rest.split_first().map(|(s, m)| (s.as_str(), m)) {
                base.pop()?;
                rest = more;
            }
            Some(base.into_iter().chain(rest.iter().cloned()).collect())
        }
        _ => {
            let child: Vec<String> = here.iter().chain([first]).cloned().collect();
            is_module(&child).then(|| here.iter().chain(written).cloned().collect())
        }
    }
}
