//! Config errors carry the file, line and column, and a plain sentence.
//!
//! serde reports positions for type errors itself. For semantic errors found
//! after parsing (an unknown key id, an invalid address), `locate` finds where
//! a path such as `routes[1].upstream` is written in block-style YAML.

use std::fmt;
use std::path::{Path, PathBuf};

/// One thing wrong with a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line and column, when known.
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((l, c)) => write!(f, "{}:{l}:{c}: {}", self.file.display(), self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// All errors found in one file; `Display` prints one per line.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects semantic errors for one source text, positioning each by path.
pub(crate) struct Collector<'a> {
    file: &'a Path,
    src: &'a str,
    pub(crate) errors: Vec<ConfigError>,
    /// Files to generate (`generate_if_missing`); the compiler never writes.
    pub(crate) new_files: Vec<crate::durable::NewFile>,
}

impl<'a> Collector<'a> {
    pub(crate) fn new(file: &'a Path, src: &'a str) -> Self {
        Collector {
            file,
            src,
            errors: Vec::new(),
            new_files: Vec::new(),
        }
    }

    pub(crate) fn file(&self) -> &Path {
        self.file
    }

    pub(crate) fn position(&self, path: &str) -> Option<(usize, usize)> {
        locate(self.src, path)
    }

    /// Records `message` at `path` (dotted, with `[i]` for list items).
    pub(crate) fn at(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            position: locate(self.src, path),
            message: message.into(),
        });
    }
}

/// Converts a serde_yaml error into a positioned `ConfigError`.
pub(crate) fn from_yaml(file: &Path, e: &serde_yaml::Error) -> ConfigError {
    let position = e.location().map(|l| (l.line(), l.column()));
    // serde_yaml appends " at line X column Y"; we print positions ourselves.
    let mut message = e.to_string();
    if let Some(i) = message.find(" at line ") {
        message.truncate(i);
    }
    ConfigError {
        file: file.to_path_buf(),
        position,
        message,
    }
}

enum Seg<'p> {
    Key(&'p str),
    Index(usize),
}

fn parse_path(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Seg::Key(key));
        }
        for idx in rest.split('[').filter(|s| !s.is_empty()) {
            if let Ok(n) = idx.trim_end_matches(']').parse() {
                out.push(Seg::Index(n));
            }
        }
    }
    out
}

/// One meaningful line: the column of a leading `- ` (if any) and of its key.
struct Line<'s> {
    dash: Option<usize>,
    col: usize,
    key: Option<&'s str>,
}

fn scan(src: &str) -> Vec<Option<Line<'_>>> {
    src.lines()
        .map(|raw| {
            let trimmed = raw.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                return None;
            }
            let mut col = raw.len() - trimmed.len();
            let mut rest = trimmed;
            let mut dash = None;
            if rest == "-" || rest.starts_with("- ") {
                dash = Some(col);
                let after = rest[1..].trim_start();
                col += rest.len() - after.len();
                rest = after;
            }
            let key = rest
                .find(':')
                .map(|i| rest[..i].trim_matches(|c| c == '"' || c == '\''))
                .filter(|k| !k.contains(' ') || k.starts_with('"'));
            Some(Line { dash, col, key })
        })
        .collect()
}

/// Finds the 1-based (line, column) where `path` is written, if it can.
pub fn locate(src: &str, path: &str) -> Option<(usize, usize)> {
    let lines = scan(src);
    let raw: Vec<&str> = src.lines().collect();
    let (mut lo, mut hi) = (0usize, lines.len());
    let mut found: Option<(usize, usize)> = None;
    for seg in parse_path(path) {
        let block: Vec<usize> = (lo..hi).filter(|&i| lines[i].is_some()).collect();
        match seg {
            Seg::Key(k) => {
                let col = block
                    .first()
                    .and_then(|&f| lines[f].as_ref())
                    .map(|l| l.col);
                let at = block.iter().copied().find(|&i| {
                    let l = lines[i].as_ref().unwrap();
                    Some(l.col) == col && l.key == Some(k)
                });
                let Some(at) = at else {
                    // Maybe a flow mapping on the parent's line: `match: { path_prefix: x }`.
                    return found
                        .and_then(|(line, _)| flow_key(raw[line - 1], k).map(|c| (line, c + 1)));
                };
                let col = lines[at].as_ref().unwrap().col;
                found = Some((at + 1, col + 1));
                let end = block
                    .iter()
                    .copied()
                    .find(|&i| i > at && lines[i].as_ref().unwrap().col <= col)
                    .unwrap_or(hi);
                // The value may sit on the key's own line; keep it in range.
                lo = at;
                hi = end;
                // Skip the key line itself when descending into a nested block.
                if end > at + 1 {
                    lo = at + 1;
                }
            }
            Seg::Index(n) => {
                block.first()?;
                let dash_col = block
                    .iter()
                    .filter_map(|&i| lines[i].as_ref().unwrap().dash)
                    .min()?;
                let items: Vec<usize> = block
                    .iter()
                    .copied()
                    .filter(|&i| lines[i].as_ref().unwrap().dash == Some(dash_col))
                    .collect();
                let at = *items.get(n)?;
                found = Some((at + 1, lines[at].as_ref().unwrap().col + 1));
                lo = at;
                hi = items.get(n + 1).copied().unwrap_or(hi);
            }
        }
    }
    found
}

/// Column of `key:` inside a flow mapping on `line`.
fn flow_key(line: &str, key: &str) -> Option<usize> {
    let brace = line.find('{')?;
    let mut from = brace;
    while let Some(i) = line[from..].find(key) {
        let at = from + i;
        let before = line[..at].trim_end().chars().last();
        if matches!(before, Some('{' | ',')) && line[at + key.len()..].starts_with(':') {
            return Some(at);
        }
        from = at + key.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::locate;

    const SRC: &str = "\
listeners:
  - name: a
    address: 1.2.3.4:1
  - name: b
    address: bad
routes:
  # a comment
  - name: r0
    upstream: http://x
  - name: r1
    match:
      path_prefix: /y
    upstream: nope
  - name: r2
    match: { host: h, path_prefix: z }
";

    #[test]
    fn locates_keys_inside_list_items() {
        assert_eq!(locate(SRC, "listeners[1].address"), Some((5, 5)));
        assert_eq!(locate(SRC, "routes[1].upstream"), Some((13, 5)));
        assert_eq!(locate(SRC, "routes[1].match.path_prefix"), Some((12, 7)));
        assert_eq!(locate(SRC, "routes[0]"), Some((8, 5)));
        assert_eq!(locate(SRC, "routes[3]"), None);
        assert_eq!(locate(SRC, "routes[2].match.path_prefix"), Some((15, 23)));
    }
}
