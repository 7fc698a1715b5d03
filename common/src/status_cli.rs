//! The shared part of the `nerve status` and `synapse status` subcommands: find the admin
//! endpoint, fetch a status document, print it as a table for people (the default), every
//! detail (`-o wide`) or the JSON as served (`-o json`), once or — with `--watch` — every
//! second, redrawn in place on a terminal. Each daemon supplies only its [`Render`].

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::time::Duration;

use crate::admin::StatusError;

/// How `status` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Output {
    /// A table, one line per service.
    #[default]
    Table,
    /// The table with more columns and one line per server.
    Wide,
    /// The document exactly as the endpoint serves it.
    Json,
}

impl std::str::FromStr for Output {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "table" => Ok(Self::Table),
            "wide" => Ok(Self::Wide),
            "json" => Ok(Self::Json),
            _ => Err(format!("`{s}`: expected table, wide or json")),
        }
    }
}

/// The options both `status` subcommands take.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// The admin endpoint, `address:port`. Default: the config's `admin_listen`, else the
    /// daemon's default (nerve 127.0.0.1:9101, synapse 127.0.0.1:9102).
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// `table`, `wide` (more columns; synapse: every server), or `json` (the document as
    /// served).
    #[arg(
        short = 'o',
        long = "output",
        value_name = "FORMAT",
        default_value = "table"
    )]
    pub output: Output,
    /// Refresh every second until interrupted.
    #[arg(short = 'w', long)]
    pub watch: bool,
}

impl StatusArgs {
    /// The request for `path` on the endpoint `--admin`, the config at `config` or
    /// `default` names.
    pub fn request(
        self,
        config: Option<&std::path::Path>,
        default: SocketAddr,
        path: String,
        render: Render,
    ) -> Request {
        Request {
            addr: crate::admin::status_address(self.admin, config, default),
            path,
            output: self.output,
            watch: self.watch,
            render,
        }
    }
}

/// Turns a status document into text for people: `wide` for every detail, `colour` for
/// ANSI colours. `Err` when the document is not what the renderer understands.
pub type Render = fn(&serde_json::Value, bool, bool) -> Result<String, String>;

/// One `status` invocation.
pub struct Request {
    /// Where to ask, or why there is nowhere to ask.
    pub addr: Result<SocketAddr, StatusError>,
    /// The admin endpoint's path, e.g. `/status`.
    pub path: String,
    pub output: Output,
    pub watch: bool,
    pub render: Render,
}

/// Runs a `status` subcommand; the process exit code: 0 answered, 1 unreachable (or an
/// answer that is not a status document), 64 nowhere to ask. `--watch` runs until
/// interrupted.
pub fn run(request: Request) -> u8 {
    let addr = match request.addr {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("error: {e}");
            return crate::EXIT_CONFIG as u8;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    let colour = crate::table::colour_wanted();
    let once = || runtime.block_on(show(addr, &request, colour));
    if !request.watch {
        return match once() {
            Ok(text) => {
                print!("{text}");
                0
            }
            Err(e) => {
                eprintln!("error: {e}");
                1
            }
        };
    }
    let terminal = std::io::stdout().is_terminal();
    loop {
        // On a terminal, redraw in place (home, clear); otherwise one frame after another.
        let frame = once().unwrap_or_else(|e| format!("error: {e}\n"));
        let mut out = std::io::stdout().lock();
        let written = if terminal {
            write!(out, "\x1b[H\x1b[2J{frame}")
        } else {
            writeln!(out, "{frame}")
        };
        if written.and_then(|()| out.flush()).is_err() {
            return 0; // stdout closed (e.g. `| head`): done.
        }
        drop(out);
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// One fetch, as text in the requested output.
async fn show(addr: SocketAddr, request: &Request, colour: bool) -> Result<String, String> {
    let body = crate::admin::status_at(addr, &request.path)
        .await
        .map_err(|e| e.to_string())?;
    if request.output == Output::Json {
        return Ok(body);
    }
    let doc: serde_json::Value = serde_json::from_str(&body)
        .map_err(|e| format!("the admin endpoint at {addr} sent no JSON document: {e}"))?;
    (request.render)(&doc, request.output == Output::Wide, colour)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_names() {
        assert_eq!("wide".parse(), Ok(Output::Wide));
        assert_eq!("json".parse(), Ok(Output::Json));
        assert_eq!("table".parse(), Ok(Output::Table));
        assert!("yaml".parse::<Output>().unwrap_err().contains("json"));
    }
}
