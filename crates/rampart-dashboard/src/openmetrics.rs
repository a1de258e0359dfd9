//! Reads the Prometheus / OpenMetrics text the admin API's `/metrics` and the flow tracer's
//! `/metrics` expose: one sample per line, `name{label="value",...} number`. Comments,
//! blank lines and lines that do not parse are skipped (a scrape is advisory: the dashboard
//! shows what it can read). Never panics, whatever the input.

/// One sample: the metric's name, its labels in order, its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, if present.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Every sample in `text`.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(body)?;
        labels = parsed;
        rest = after;
    }
    // The value, then an optional timestamp (and an exemplar after '#', ignored).
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Labels up to the closing brace; returns them and what follows the brace.
fn parse_labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim();
        if key.is_empty() {
            return None;
        }
        s = s[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        };
        labels.push((key.to_owned(), value));
        s = s[end + 1..].trim_start();
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        }
    }
}

/// Escapes a label value as the text format writes it.
#[cfg(test)]
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn reads_counters_histograms_and_skips_the_rest() {
        let text = "# HELP rampart_requests Downstream requests\n\
                    # TYPE rampart_requests counter\n\
                    rampart_requests_total{listener=\"main\",route=\"a\",class=\"2xx\"} 7\n\
                    rampart_request_duration_seconds_bucket{route=\"a\",le=\"+Inf\"} 7\n\
                    rampart_config_version 3 1700000000\n\
                    garbage line {\n\
                    # EOF\n";
        let s = parse(text);
        assert_eq!(s.len(), 3, "{s:?}");
        assert_eq!(s[0].name, "rampart_requests_total");
        assert_eq!(s[0].label("route"), Some("a"));
        assert_eq!(s[0].value, 7.0);
        assert_eq!(s[1].label("le"), Some("+Inf"));
        assert_eq!(s[2].value, 3.0);
    }

    #[test]
    fn label_values_keep_escaped_quotes_commas_and_braces() {
        let s = parse("m{a=\"x\\\"y,}z\",b=\"\"} 1.5\n");
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].label("a"), Some("x\"y,}z"));
        assert_eq!(s[0].label("b"), Some(""));
        assert_eq!(s[0].value, 1.5);
    }

    proptest! {
        /// What the text format writes, the parser reads back.
        #[test]
        fn round_trips_what_is_written(
            name in "[a-z_][a-z0-9_]{0,20}",
            labels in proptest::collection::vec(("[a-z_][a-z0-9_]{0,8}", "\\PC{0,16}"), 0..5),
            value in -1e12f64..1e12,
        ) {
            let body: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let line = if labels.is_empty() {
                format!("{name} {value}")
            } else {
                format!("{name}{{{}}} {value}", body.join(","))
            };
            let got = parse(&line);
            prop_assert_eq!(got.len(), 1);
            prop_assert_eq!(&got[0].name, &name);
            prop_assert_eq!(&got[0].labels, &labels);
            prop_assert_eq!(got[0].value, value);
        }

        /// Arbitrary text never panics the parser.
        #[test]
        fn never_panics(text in "\\PC{0,200}") {
            let _ = parse(&text);
        }
    }
}
