//! Plain-text tables for people, as `nerve status` and `synapse status` print them, in
//! the style of `kubectl get`: upper-case column names, each column as wide as its widest
//! cell, two spaces between columns. A cell may carry a [`Tone`]; colour is applied only
//! when asked (on a terminal, without `NO_COLOR`: [`colour_wanted`]), and padding is
//! measured on the text alone so columns stay aligned either way.

use std::io::IsTerminal;

/// What a cell's value means to an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Plain,
    /// As it should be (green).
    Good,
    /// Worth a look (yellow).
    Warn,
    /// Wrong (red).
    Bad,
    /// Secondary (dim).
    Dim,
}

impl Tone {
    fn ansi(self) -> Option<&'static str> {
        match self {
            Self::Plain => None,
            Self::Good => Some("32"),
            Self::Warn => Some("33"),
            Self::Bad => Some("31"),
            Self::Dim => Some("2"),
        }
    }

    /// `text` in this tone, coloured if `colour`.
    pub fn paint(self, text: &str, colour: bool) -> String {
        match self.ansi() {
            Some(code) if colour => format!("\x1b[{code}m{text}\x1b[0m"),
            _ => text.to_owned(),
        }
    }
}

/// One cell: its text and tone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub text: String,
    pub tone: Tone,
}

impl Cell {
    pub fn new(text: impl Into<String>, tone: Tone) -> Self {
        Self {
            text: text.into(),
            tone,
        }
    }
}

impl From<String> for Cell {
    fn from(text: String) -> Self {
        Self::new(text, Tone::Plain)
    }
}

impl From<&str> for Cell {
    fn from(text: &str) -> Self {
        Self::new(text, Tone::Plain)
    }
}

/// A table: a header and rows of cells.
#[derive(Debug, Clone)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<Cell>>,
}

impl Table {
    pub fn new<S: AsRef<str>>(header: &[S]) -> Self {
        Self {
            header: header.iter().map(|h| h.as_ref().to_uppercase()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<Cell>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, one line per row, each ending in `\n`; no trailing spaces.
    pub fn render(&self, colour: bool) -> String {
        let columns = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.header.len()])
            .max()
            .unwrap_or(0);
        let mut widths = vec![0; columns];
        let header: Vec<Cell> = self.header.iter().map(|h| Cell::from(h.as_str())).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.text.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(&cell.tone.paint(&cell.text, colour));
                if i + 1 < row.len() {
                    let pad = widths[i] - cell.text.chars().count();
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Colour on standard output: only on a terminal, and not when `NO_COLOR` is set to
/// anything non-empty (<https://no-color.org>).
pub fn colour_wanted() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// A duration for people: `850ms`, `42s`, `3m05s`, `2h10m`, `3d4h`.
pub fn duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "-".to_owned();
    }
    if seconds < 1.0 {
        return format!("{}ms", (seconds * 1000.0).round() as u64);
    }
    let s = seconds.round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_with_or_without_colour() {
        let mut t = Table::new(&["service", "health"]);
        t.row(vec!["web".into(), Cell::new("healthy", Tone::Good)]);
        t.row(vec!["checkout".into(), Cell::new("down", Tone::Bad)]);
        assert_eq!(
            t.render(false),
            "SERVICE   HEALTH\nweb       healthy\ncheckout  down\n"
        );
        let coloured = t.render(true);
        assert!(
            coloured.contains("web       \x1b[32mhealthy\x1b[0m\n"),
            "{coloured:?}"
        );
        assert!(
            coloured.contains("checkout  \x1b[31mdown\x1b[0m\n"),
            "{coloured:?}"
        );
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration(0.25), "250ms");
        assert_eq!(duration(42.4), "42s");
        assert_eq!(duration(185.0), "3m05s");
        assert_eq!(duration(7800.0), "2h10m");
        assert_eq!(duration(273_600.0), "3d4h");
        assert_eq!(duration(-1.0), "-");
    }
}
