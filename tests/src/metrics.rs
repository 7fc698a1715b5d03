//! Scraping a daemon's `/metrics` (Prometheus / OpenMetrics text) the way Prometheus
//! would, so tests assert on the exposed series, not on in-process counters.

use std::collections::BTreeMap;
use std::net::SocketAddr;

/// One scrape: every sample, by metric name and label set.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    samples: Vec<Sample>,
    text: String,
}

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Scrape {
    /// Parses exposition text. Comment lines (`# HELP`, `# TYPE`, `# EOF`) are skipped;
    /// a malformed sample line is an error naming it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut samples = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            samples.push(parse_line(line).ok_or_else(|| format!("bad sample line: {line}"))?);
        }
        Ok(Self {
            samples,
            text: text.to_owned(),
        })
    }

    /// The sample `name` whose labels include every pair of `labels`; `None` if there is
    /// none. With several matches (a subset of the labels given), the first.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }

    /// Like [`Scrape::get`], 0 when the series is absent (a counter not yet incremented).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// Every sample named `name`.
    pub fn all(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }

    /// Whether a `# HELP` or `# TYPE` line describes `family`.
    pub fn describes(&self, family: &str) -> bool {
        self.text
            .lines()
            .any(|l| l.starts_with(&format!("# TYPE {family} ")))
    }

    /// The text as scraped, for failure messages.
    pub fn text(&self) -> &str {
        &self.text
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let (name, labels, rest) = match line.find('{') {
        Some(open) if line[..open].find(' ').is_none() => {
            let (labels, after) = parse_labels(&line[open + 1..])?;
            (&line[..open], labels, after)
        }
        _ => {
            let (name, rest) = line.split_once(' ')?;
            (name, BTreeMap::new(), rest)
        }
    };
    // `value [timestamp]`, or an exemplar after ` # `.
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// `k="v",k2="v2"} rest` → the labels and `rest`.
fn parse_labels(s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let mut chars = s.char_indices().peekable();
    loop {
        while chars.peek().is_some_and(|(_, c)| *c == ',' || *c == ' ') {
            chars.next();
        }
        let (start, c) = *chars.peek()?;
        if c == '}' {
            return Some((labels, &s[start + 1..]));
        }
        let eq = s[start..].find('=')? + start;
        let key = s[start..eq].to_owned();
        while chars.peek().is_some_and(|(i, _)| *i <= eq) {
            chars.next();
        }
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()?.1 {
                '"' => break,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                other => value.push(other),
            }
        }
        labels.insert(key, value);
    }
}

/// GETs `/metrics` from `addr` and parses it.
pub async fn scrape(addr: SocketAddr) -> Result<Scrape, String> {
    let (code, body) = common::admin::fetch(addr, "/metrics")
        .await
        .map_err(|e| format!("scrape {addr}: {e}"))?;
    if code != 200 {
        return Err(format!("scrape {addr}: HTTP {code}: {body}"));
    }
    Scrape::parse(&body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_values_and_skips_comments() {
        let text =
            "# HELP a_total Things.\n# TYPE a counter\na_total{service=\"web\",result=\"ok\"} 3\n\
                    b 1.5\nc{x=\"q\\\"uote\\\\d\"} +Inf\nh_bucket{le=\"0.1\"} 2\n# EOF\n";
        let s = Scrape::parse(text).unwrap();
        assert_eq!(s.get("a_total", &[("service", "web")]), Some(3.0));
        assert_eq!(
            s.get("a_total", &[("service", "web"), ("result", "ok")]),
            Some(3.0)
        );
        assert_eq!(s.get("a_total", &[("service", "api")]), None);
        assert_eq!(s.value("a_total", &[("service", "api")]), 0.0);
        assert_eq!(s.get("b", &[]), Some(1.5));
        assert_eq!(s.get("c", &[("x", "q\"uote\\d")]), Some(f64::INFINITY));
        assert_eq!(s.get("h_bucket", &[("le", "0.1")]), Some(2.0));
        assert!(s.describes("a"));
        assert!(!s.describes("b"));
        assert!(Scrape::parse("a{x=\"1\" 2").is_err());
    }
}
