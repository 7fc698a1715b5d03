//! The layering check (issue 24, `cargo run -p xtask -- layers`): inside each crate
//! (`common`, `nerve`, `synapse`) imports point only down the layers of the module map in
//! `docs/architecture.md`, and no two files import each other, directly or round a circle.
//!
//! A file depends on another through `use crate::…` (grouped trees too), an inline
//! `crate::a::b` path, or `super::…`/`self::…`/a child module's name, resolved relative to
//! the (inline) module it sits in; each is resolved to the file that defines the longest
//! existing module prefix, through a facade's (`lib.rs`, `mod.rs`) `pub use` re-exports.
//! `mod x;` declarations and those re-exports are not dependencies. Comments, doc comments
//! and string literals are blanked first. This reads tokens, not Rust's name resolution:
//! a name a file brings in with a re-export and then uses bare is not seen.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

mod source;
#[cfg(test)]
mod tests;

use source::{parse_file, Import};

/// The crates whose insides are checked.
pub const CRATES: [&str; 3] = ["common", "nerve", "synapse"];

/// One row of the module map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub krate: String,
    /// `lib.rs`, `main.rs`, or a module path such as `haproxy::config`.
    pub module: String,
    pub layer: u32,
    pub layer_name: String,
    /// The highest layer this module may import.
    pub max_import: u32,
    /// The line in the map, for messages about the map itself.
    pub line: usize,
}

/// Parses the "Module map" table: the first Markdown table after a heading named
/// "Module map", columns crate | module | layer | may import | what it is.
pub fn parse_map(doc: &str) -> anyhow::Result<Vec<Row>> {
    let mut lines = doc.lines().enumerate().skip_while(|(_, l)| {
        !(l.starts_with('#') && l.trim_start_matches('#').trim() == "Module map")
    });
    if lines.next().is_none() {
        bail!("no \"Module map\" heading");
    }
    let table = lines
        .skip_while(|(_, l)| !l.trim_start().starts_with('|'))
        .take_while(|(_, l)| l.trim_start().starts_with('|'));
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in table.skip(2) {
        let cells: Vec<String> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(|c| c.replace('`', "").trim().to_string())
            .collect();
        let n = i + 1;
        if cells.len() != 5 {
            errors.push(format!(
                "line {n}: expected 5 columns, found {}",
                cells.len()
            ));
            continue;
        }
        let (Some(layer), Some(max_import)) = (layer_number(&cells[2]), max_layer(&cells[3]))
        else {
            errors.push(format!(
                "line {n}: the layer ({:?}) and \"may import\" ({:?}) must name layers as L0, L1, …",
                cells[2], cells[3]
            ));
            continue;
        };
        if max_import > layer {
            errors.push(format!(
                "line {n}: {} {} (L{layer}) may not import above its own layer (L{max_import})",
                cells[0], cells[1]
            ));
            continue;
        }
        rows.push(Row {
            krate: cells[0].clone(),
            module: cells[1].clone(),
            layer,
            layer_name: cells[2].clone(),
            max_import,
            line: n,
        });
    }
    if !errors.is_empty() {
        bail!("the module map is malformed:\n  {}", errors.join("\n  "));
    }
    if rows.is_empty() {
        bail!("the module map has no rows");
    }
    Ok(rows)
}

/// `L2 I/O` → 2.
fn layer_number(cell: &str) -> Option<u32> {
    let digits: String = cell
        .strip_prefix('L')?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The highest `L<n>` in a cell such as `L0–L2`.
fn max_layer(cell: &str) -> Option<u32> {
    cell.match_indices('L')
        .filter_map(|(i, _)| layer_number(&cell[i..]))
        .max()
}

/// One source file of a crate.
#[derive(Debug)]
pub struct SourceFile {
    /// Shown in messages: `nerve/src/config/mod.rs`.
    pub display: String,
    /// `[]` for `lib.rs`, `["main"]` for `main.rs`, `["haproxy", "config"]`.
    pub module: Vec<String>,
    pub text: String,
}

impl SourceFile {
    fn module_name(&self) -> String {
        match self.module.as_slice() {
            [] => "lib.rs".to_string(),
            [m] if m == "main" => "main.rs".to_string(),
            m => m.join("::"),
        }
    }

    fn is_facade(&self) -> bool {
        self.display.ends_with("/lib.rs") || self.display.ends_with("/mod.rs")
    }
}

/// Reads `<root>/<krate>/src/**/*.rs`, sorted by path.
pub fn read_crate(root: &Path, krate: &str) -> anyhow::Result<Vec<SourceFile>> {
    let src = root.join(krate).join("src");
    let mut paths = Vec::new();
    collect_rs(&src, &mut paths)?;
    paths.sort();
    let mut files = Vec::new();
    for path in paths {
        let rel = path.strip_prefix(&src).expect("collected under src");
        let mut module: Vec<String> = rel
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        let last = module.pop().expect("a file name");
        // `lib.rs` is the root and `x/mod.rs` is `x`; any other file is a module of its own.
        let facade =
            (last == "lib.rs" && module.is_empty()) || (last == "mod.rs" && !module.is_empty());
        if !facade {
            module.push(last.trim_end_matches(".rs").to_string());
        }
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        files.push(SourceFile {
            display: format!("{krate}/src/{}", rel.display()),
            module,
            text,
        });
    }
    Ok(files)
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let entries = fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            collect_rs(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// A file → file dependency, at its first occurrence.
#[derive(Debug, Clone)]
struct Edge {
    line: usize,
    import: String,
}

/// Checks one crate's files against the map; returns every violation, one message each.
pub fn check_crate(krate: &str, files: &[SourceFile], map: &[Row]) -> Vec<String> {
    let mut problems = Vec::new();
    let index: BTreeMap<&[String], usize> = files
        .iter()
        .enumerate()
        .map(|(i, f)| (f.module.as_slice(), i))
        .collect();
    let parsed: Vec<Vec<Import>> = files
        .iter()
        .map(|f| parse_file(&f.text, &f.module, &|m: &[String]| index.contains_key(m)))
        .collect();
    // A facade's re-exports: name → the absolute path it stands for.
    let reexports: Vec<BTreeMap<String, Vec<String>>> = files
        .iter()
        .zip(&parsed)
        .map(|(f, imports)| {
            imports
                .iter()
                .filter(|i| f.is_facade() && i.public)
                .filter_map(|i| Some((i.name.clone()?, i.path.clone())))
                .collect()
        })
        .collect();
    let resolve = |path: &[String]| -> usize {
        let mut path = path.to_vec();
        for _ in 0..8 {
            let k = (0..=path.len())
                .rev()
                .find(|&k| index.contains_key(&path[..k]))
                .expect("lib.rs is the root");
            let file = index[&path[..k]];
            match path.get(k).and_then(|name| reexports[file].get(name)) {
                Some(target) if target.as_slice() != path.as_slice() => {
                    path = target.iter().chain(&path[k + 1..]).cloned().collect();
                }
                _ => return file,
            }
        }
        index[&[][..]]
    };

    let mut edges: BTreeMap<usize, BTreeMap<usize, Edge>> = BTreeMap::new();
    for (from, (file, imports)) in files.iter().zip(&parsed).enumerate() {
        for import in imports {
            if file.is_facade() && import.public {
                continue;
            }
            let to = resolve(&import.path);
            if to != from {
                edges.entry(from).or_default().entry(to).or_insert(Edge {
                    line: import.line,
                    import: import.text.clone(),
                });
            }
        }
    }

    let rows: Vec<Option<&Row>> = files.iter().map(|f| row_for(krate, f, map)).collect();
    for (file, row) in files.iter().zip(&rows) {
        if row.is_none() {
            problems.push(format!(
                "{}: module {} has no row in the module map (docs/architecture.md): add it to the module map",
                file.display,
                file.module_name()
            ));
        }
    }
    for (&from, targets) in &edges {
        for (&to, edge) in targets {
            let (Some(a), Some(b)) = (rows[from], rows[to]) else {
                continue;
            };
            if b.layer > a.max_import {
                problems.push(format!(
                    "{}:{}: upward import `{}`: {} ({}) may import up to L{}, but {} is {} ({})",
                    files[from].display,
                    edge.line,
                    edge.import,
                    files[from].module_name(),
                    a.layer_name,
                    a.max_import,
                    files[to].module_name(),
                    b.layer_name,
                    files[to].display,
                ));
            }
        }
    }
    for (component, cycle) in cycles(files.len(), &edges) {
        let mut msg = if component.len() == cycle.len() {
            format!("{krate}: import cycle between {} files:", cycle.len())
        } else {
            let mut names: Vec<&str> = component
                .iter()
                .map(|&f| files[f].display.as_str())
                .collect();
            names.sort_unstable();
            format!(
                "{krate}: {} files import each other round cycles ({}); the shortest through the first:",
                component.len(),
                names.join(", ")
            )
        };
        for (i, &from) in cycle.iter().enumerate() {
            let to = cycle[(i + 1) % cycle.len()];
            let edge = &edges[&from][&to];
            msg.push_str(&format!(
                "\n    {}:{}: `{}` → {}",
                files[from].display, edge.line, edge.import, files[to].display
            ));
        }
        problems.push(msg);
    }
    problems
}

/// The row for a file: `lib.rs`/`main.rs` by name, a module by its longest-prefix row.
fn row_for<'m>(krate: &str, file: &SourceFile, map: &'m [Row]) -> Option<&'m Row> {
    let name = file.module_name();
    let rows = map.iter().filter(|r| r.krate == krate);
    if name == "lib.rs" || name == "main.rs" {
        return rows.into_iter().find(|r| r.module == name);
    }
    rows.filter(|r| {
        let prefix: Vec<&str> = r.module.split("::").collect();
        file.module.len() >= prefix.len() && file.module.iter().zip(&prefix).all(|(a, b)| a == b)
    })
    .max_by_key(|r| r.module.split("::").count())
}

/// Each strongly connected component of more than one file (Tarjan), with a shortest
/// cycle through its first file, in import order.
fn cycles(
    n: usize,
    edges: &BTreeMap<usize, BTreeMap<usize, Edge>>,
) -> Vec<(BTreeSet<usize>, Vec<usize>)> {
    struct Tarjan<'e> {
        edges: &'e BTreeMap<usize, BTreeMap<usize, Edge>>,
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        components: Vec<Vec<usize>>,
    }
    impl Tarjan<'_> {
        fn visit(&mut self, v: usize) {
            self.index[v] = Some(self.next);
            self.low[v] = self.next;
            self.next += 1;
            self.stack.push(v);
            self.on_stack[v] = true;
            let targets: Vec<usize> = self
                .edges
                .get(&v)
                .map(|t| t.keys().copied().collect())
                .unwrap_or_default();
            for w in targets {
                match self.index[w] {
                    None => {
                        self.visit(w);
                        self.low[v] = self.low[v].min(self.low[w]);
                    }
                    Some(i) if self.on_stack[w] => self.low[v] = self.low[v].min(i),
                    Some(_) => {}
                }
            }
            if Some(self.low[v]) == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack[w] = false;
                    component.push(w);
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    self.components.push(component);
                }
            }
        }
    }
    let mut t = Tarjan {
        edges,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        components: Vec::new(),
    };
    for v in 0..n {
        if t.index[v].is_none() {
            t.visit(v);
        }
    }
    t.components
        .into_iter()
        .map(|c| {
            let component: BTreeSet<usize> = c.into_iter().collect();
            let cycle = shortest_cycle(&component, edges);
            (component, cycle)
        })
        .collect()
}

/// A shortest cycle through the component's smallest file (breadth-first).
fn shortest_cycle(
    component: &BTreeSet<usize>,
    edges: &BTreeMap<usize, BTreeMap<usize, Edge>>,
) -> Vec<usize> {
    let start = *component.first().expect("a component has files");
    let mut parent: BTreeMap<usize, usize> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for &w in edges.get(&v).into_iter().flat_map(|t| t.keys()) {
            if !component.contains(&w) {
                continue;
            }
            if w == start {
                let mut cycle = vec![v];
                while let Some(&p) = parent.get(cycle.last().expect("non-empty")) {
                    cycle.push(p);
                }
                cycle.reverse();
                return cycle;
            }
            if w != start && !parent.contains_key(&w) {
                parent.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    component.iter().copied().collect()
}

/// Checks the workspace at `root` against its module map; every violation, all crates.
pub fn check_workspace(root: &Path, crates: &[&str]) -> anyhow::Result<Vec<String>> {
    let doc_path = root.join("docs/architecture.md");
    let doc = fs::read_to_string(&doc_path)
        .with_context(|| format!("cannot read {}", doc_path.display()))?;
    let map = parse_map(&doc).with_context(|| format!("in {}", doc_path.display()))?;
    let mut problems = Vec::new();
    for krate in crates {
        let files = read_crate(root, krate)?;
        problems.extend(check_crate(krate, &files, &map));
    }
    Ok(problems)
}
