//! The layering check on small synthetic crates, and on this workspace.

use std::path::Path;

use super::source::{blank, parse_file};
use super::*;

const MAP: &str = "\
# Architecture

## Module map

| crate | module | layer | may import | what it is |
|---|---|---|---|---|
| demo | `lib.rs` | L2 top | L0–L2 | run |
| demo | `config` | L0 data | L0 | plain data |
| demo | `config::checked` | L1 decisions | L0–L1 | a sub-module one layer up |
| demo | `plan` | L1 decisions | L0–L1 | pure |
| demo | `io` | L2 I/O | L0–L2 | the edge |

## After
";

fn file(path: &str, text: &str) -> SourceFile {
    let module = match path {
        "lib.rs" => Vec::new(),
        p => p
            .trim_end_matches(".rs")
            .trim_end_matches("/mod")
            .split('/')
            .map(str::to_string)
            .collect(),
    };
    SourceFile {
        display: format!("demo/src/{path}"),
        module,
        text: text.to_string(),
    }
}

fn check(files: &[SourceFile]) -> Vec<String> {
    check_crate("demo", files, &parse_map(MAP).unwrap())
}

fn lib() -> SourceFile {
    file(
        "lib.rs",
        "pub mod config;\npub mod plan;\npub mod io;\npub use config::Config;\n",
    )
}

#[test]
fn the_map_parses_layers_and_limits() {
    let rows = parse_map(MAP).unwrap();
    assert_eq!(rows.len(), 5);
    assert_eq!(rows[0].module, "lib.rs");
    assert_eq!(
        (rows[2].module.as_str(), rows[2].layer, rows[2].max_import),
        ("config::checked", 1, 1)
    );
    assert_eq!(rows[4].layer_name, "L2 I/O");
    assert_eq!(rows[1].line, 8);
}

#[test]
fn a_malformed_map_is_an_error() {
    let bad = MAP.replace(
        "| demo | `plan` | L1 decisions | L0–L1 | pure |",
        "| demo | `plan` | L1 | L2 | up |",
    );
    let err = parse_map(&bad).unwrap_err().to_string();
    assert!(
        err.contains("line 10") && err.contains("above its own layer"),
        "{err}"
    );
    assert!(parse_map("# nothing here").is_err());
}

#[test]
fn a_clean_crate_passes() {
    let files = [
        lib(),
        file("config.rs", "pub struct Config;\n"),
        file(
            "plan.rs",
            "use crate::config::Config;\npub fn plan(_: &Config) {}\n",
        ),
        file("io.rs", "use crate::{plan::plan, Config};\n"),
    ];
    assert_eq!(check(&files), Vec::<String>::new());
}

#[test]
fn an_upward_import_names_the_file_line_import_and_both_layers() {
    let files = [
        lib(),
        file(
            "config.rs",
            "pub struct Config;\n\nfn f() { crate::io::write(); }\n",
        ),
        file("plan.rs", ""),
        file("io.rs", "pub fn write() {}\n"),
    ];
    let problems = check(&files);
    assert_eq!(problems.len(), 1, "{problems:?}");
    let p = &problems[0];
    assert!(
        p.starts_with("demo/src/config.rs:3: upward import `crate::io::write`"),
        "{p}"
    );
    assert!(
        p.contains("config (L0 data) may import up to L0") && p.contains("io is L2 I/O"),
        "{p}"
    );
}

#[test]
fn a_grouped_use_is_every_path_in_the_group() {
    let files = [
        lib(),
        file(
            "config.rs",
            "use crate::{plan::{self, Step}, io::{write as w}};\n",
        ),
        file("plan.rs", ""),
        file("io.rs", ""),
    ];
    let problems = check(&files);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].contains("`crate::plan`") || problems[1].contains("`crate::plan`"),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("`crate::io::write`")),
        "{problems:?}"
    );
}

#[test]
fn comments_doc_comments_and_strings_are_not_imports() {
    let files = [
        lib(),
        file(
            "config.rs",
            "//! See crate::io::write.\n/// Unlike `crate::io`.\n/* use crate::io; /* nested */ crate::io */\n\
             const A: &str = \"crate::io::x\";\nconst B: &str = r#\"use crate::io;\"#;\nconst C: char = '\"';\n\
             fn f<'a>(x: &'a str) -> &'a str { x }\n",
        ),
        file("plan.rs", ""),
        file("io.rs", ""),
    ];
    assert_eq!(check(&files), Vec::<String>::new());
}

#[test]
fn a_facade_reexport_is_not_a_dependency_but_is_followed() {
    // plan/mod.rs re-exports its child and its child imports the facade: no cycle. io
    // imports through the re-export and lands on plan/step.rs.
    let files = [
        lib(),
        file("config.rs", ""),
        file(
            "plan/mod.rs",
            "mod step;\npub use step::Step;\npub(crate) use self::step::run;\npub struct Plan;\n",
        ),
        file("plan/step.rs", "use super::Plan;\npub struct Step;\n"),
        file("io.rs", "use crate::plan::Step;\n"),
    ];
    assert_eq!(check(&files), Vec::<String>::new());
    let parsed = parse_file(&files[4].text, &files[4].module, &|m: &[String]| {
        files.iter().any(|f| f.module == m)
    });
    assert_eq!(parsed[0].path, ["plan", "Step"]);
}

#[test]
fn a_cycle_between_files_names_its_files() {
    let files = [
        lib(),
        file("config.rs", "use crate::config::checked::Checked;\n"),
        file("config/checked.rs", "use super::Raw;\n"),
        file("plan.rs", "use crate::io::Out;\n"),
        file("io.rs", "\n\nfn f() -> crate::plan::Plan { todo() }\n"),
    ];
    let problems = check(&files);
    // config → config::checked is upward too (L0 → L1); plan → io is upward.
    let cycles: Vec<&String> = problems
        .iter()
        .filter(|p| p.contains("import cycle"))
        .collect();
    assert_eq!(cycles.len(), 2, "{problems:?}");
    let config = cycles.iter().find(|p| p.contains("config.rs")).unwrap();
    assert!(
        config.contains(
            "demo/src/config.rs:1: `crate::config::checked::Checked` → demo/src/config/checked.rs"
        ),
        "{config}"
    );
    assert!(
        config.contains("demo/src/config/checked.rs:1: `super::Raw` → demo/src/config.rs"),
        "{config}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("demo/src/plan.rs:1: upward import")),
        "{problems:?}"
    );
}

#[test]
fn super_in_an_inline_test_module_is_the_file_itself() {
    let files = [
        lib(),
        file(
            "config.rs",
            "#[cfg(test)]\nmod tests {\n    use super::*;\n    use super::super::plan;\n}\n",
        ),
        file("plan.rs", ""),
        file("io.rs", ""),
    ];
    let problems = check(&files);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("demo/src/config.rs:4: upward import `super::super::plan`"),
        "{problems:?}"
    );
}

#[test]
fn a_file_without_a_row_fails() {
    let files = [
        lib(),
        file("config.rs", ""),
        file("plan.rs", ""),
        file("io.rs", ""),
        file("extra.rs", ""),
    ];
    let problems = check(&files);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("demo/src/extra.rs: module extra has no row")
            && problems[0].contains("add it to the module map")
    );
}

#[test]
fn blanking_keeps_lines_and_code() {
    let src = "a // b\n/* c\n d */ e \"f\\\"g\" 'h' i";
    let out = blank(src);
    assert_eq!(out.lines().count(), 3);
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["a", "e", "i"]);
}

fn workspace_problems(krate: &str) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    check_workspace(&root, &[krate]).unwrap()
}

#[test]
fn common_is_layered() {
    let problems = workspace_problems("common");
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn nerve_is_layered() {
    let problems = workspace_problems("nerve");
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn synapse_is_layered() {
    let problems = workspace_problems("synapse");
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn a_tangle_of_cycles_names_every_file_in_it() {
    // config ↔ plan, and plan → io → config: one tangle of three files.
    let files = [
        lib(),
        file("config.rs", "fn f() -> crate::plan::P {}\n"),
        file("plan.rs", "use crate::{config::C, io::X};\n"),
        file("io.rs", "use crate::config::Y;\n"),
    ];
    let problems = check(&files);
    let cycles: Vec<&String> = problems
        .iter()
        .filter(|p| p.contains("round cycles"))
        .collect();
    assert_eq!(cycles.len(), 1, "{problems:?}");
    assert!(
        cycles[0].contains("3 files import each other round cycles (demo/src/config.rs, demo/src/io.rs, demo/src/plan.rs)"),
        "{}",
        cycles[0]
    );
    assert!(
        cycles[0].contains("demo/src/config.rs:1: `crate::plan::P` → demo/src/plan.rs"),
        "{}",
        cycles[0]
    );
}
