//! Build-time tasks, run by `scripts/package` (`cargo run -p xtask -- dist-assets DIR`):
//! renders, from the clap definitions the binaries parse (`nerve::cli`, `synapse::cli`),
//! a man page per command and subcommand and the bash, zsh and fish completions, into
//! `DIR/<binary>/{man,completions}`. Nothing generated is committed.
//!
//! `cargo run -p xtask -- layers [ROOT]`: the layering check (issue 24, `layers.rs`), in
//! CI after clippy: every import cycle and upward import against the module map in
//! `docs/architecture.md`, all at once.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Command, CommandFactory};
use clap_complete::Shell;

mod layers;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [task, dir] if task == "dist-assets" => {
            let dir = PathBuf::from(dir);
            for cmd in [nerve::cli::Cli::command(), synapse::cli::Cli::command()] {
                dist_assets(cmd, &dir)?;
            }
            Ok(())
        }
        [task, rest @ ..] if task == "layers" && rest.len() <= 1 => {
            let root = match rest {
                [root] => PathBuf::from(root),
                _ => Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
            };
            let problems = layers::check_workspace(&root, &layers::CRATES)?;
            if problems.is_empty() {
                println!(
                    "layers: {} crates, no upward import, no cycle",
                    layers::CRATES.len()
                );
                return Ok(());
            }
            for p in &problems {
                eprintln!("{p}");
            }
            eprintln!(
                "layers: {} problems (the map: docs/architecture.md, \"Module map\")",
                problems.len()
            );
            std::process::exit(1)
        }
        _ => bail!("usage: xtask dist-assets <DIR> | xtask layers [ROOT]"),
    }
}

/// Man pages (`<name>.1`, `<name>-<sub>.1`) and completions for one binary.
fn dist_assets(mut cmd: Command, dir: &Path) -> anyhow::Result<()> {
    let name = cmd.get_name().to_string();
    let man = dir.join(&name).join("man");
    let completions = dir.join(&name).join("completions");
    for d in [&man, &completions] {
        fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    cmd.build();
    write_man(&cmd, &man)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let path = clap_complete::generate_to(shell, &mut cmd, &name, &completions)
            .with_context(|| format!("cannot write the {shell} completion for {name}"))?;
        println!("{}", path.display());
    }
    Ok(())
}

/// `cmd`'s page, then one per subcommand: `<parent>-<sub>.1`, as `man git-commit` (the
/// display name `Command::build` gives a subcommand, which the page's title uses too).
fn write_man(cmd: &Command, dir: &Path) -> anyhow::Result<()> {
    let page = cmd.get_display_name().unwrap_or_else(|| cmd.get_name());
    let path = dir.join(format!("{page}.1"));
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut out)
        .with_context(|| format!("cannot render {page}.1"))?;
    fs::write(&path, out).with_context(|| format!("cannot write {}", path.display()))?;
    println!("{}", path.display());
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        write_man(sub, dir)?;
    }
    Ok(())
}
