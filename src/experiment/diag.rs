//! Diagnostics for the experiment file: every problem names the file, the key (with line and column when
//! the key is in the file) and the fix. Problems are collected, not thrown, so that one run of
//! `runner plan` shows all of them at once.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

/// One problem in the experiment file.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    /// Dotted key path, e.g. `engines.vllm.ready_timeout`; empty for whole-file problems.
    pub key: String,
    /// 1-based line and column of the key (or value) in the file, when known.
    pub position: Option<(usize, usize)>,
    pub message: String,
    /// What to do about it.
    pub help: Option<String>,
}

/// All problems found in one file; displayed as one error with one paragraph per problem.
#[derive(Debug)]
pub struct Diagnostics {
    pub file: PathBuf,
    pub items: Vec<Diagnostic>,
    /// The source line of each positioned item, for the snippet.
    source: String,
}

impl Diagnostics {
    pub fn new(file: &Path, source: &str) -> Self {
        Diagnostics {
            file: file.to_path_buf(),
            items: Vec::new(),
            source: source.to_string(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn push(&mut self, diagnostic: Diagnostic) {
        if !self.items.contains(&diagnostic) {
            self.items.push(diagnostic);
        }
    }

    /// Hides every secret value in the messages and fixes (the file's own text, shown in snippets, has
    /// `${VAR}`, never the value).
    pub fn redact(&mut self, secrets: &crate::secret::Secrets) {
        for d in &mut self.items {
            d.message = secrets.redact(&d.message).into_owned();
            if let Some(help) = &mut d.help {
                *help = secrets.redact(help).into_owned();
            }
        }
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.items.len();
        if n > 1 {
            writeln!(f, "{} problems in {}:", n, self.file.display())?;
        }
        for (i, d) in self.items.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            let location = match d.position {
                Some((line, col)) => format!("{}:{}:{}", self.file.display(), line, col),
                None => self.file.display().to_string(),
            };
            if d.key.is_empty() {
                write!(f, "{location}: {}", d.message)?;
            } else {
                write!(f, "{location}: `{}`: {}", d.key, d.message)?;
            }
            if let Some((line, col)) = d.position
                && let Some(text) = self.source.lines().nth(line - 1)
            {
                let gutter = line.to_string().len();
                write!(
                    f,
                    "\n {:gutter$} |\n {line} | {text}\n {:gutter$} | {:>col$}",
                    "", "", "^"
                )?;
            }
            if let Some(help) = &d.help {
                write!(f, "\n  help: {help}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// 1-based (line, column) of a byte offset; columns count characters, not bytes.
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = &source[..floor_char_boundary(source, offset)];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Finds where a key path sits in the file, so that problems found after deserialisation can still
/// point at a line. Built once from the spanned parse of the same text.
pub struct Locator<'a> {
    source: &'a str,
    root: Option<toml::Spanned<DeTable<'a>>>,
}

impl<'a> Locator<'a> {
    pub fn new(source: &'a str) -> Self {
        Locator {
            source,
            root: DeTable::parse(source).ok(),
        }
    }

    /// The (line, column) of the deepest key of `path` that exists in the file: for a missing key this is
    /// its table, which is where the user will add it. Path segments that are array indices are numbers.
    pub fn position(&self, path: &[&str]) -> Option<(usize, usize)> {
        self.span(path)
            .map(|span| line_col(self.source, span.start))
    }

    fn span(&self, path: &[&str]) -> Option<Range<usize>> {
        let root = self.root.as_ref()?;
        let mut table: &DeTable = root.get_ref();
        let mut best: Option<Range<usize>> = None;
        let mut value: Option<&DeValue> = None;
        for segment in path {
            if let Some(v) = value.take() {
                match v {
                    DeValue::Table(t) => table = t,
                    DeValue::Array(items) => {
                        let index: usize = segment.parse().ok()?;
                        let item = items.get(index)?;
                        best = Some(item.span());
                        value = Some(item.get_ref());
                        continue;
                    }
                    _ => return best,
                }
            }
            let Some((key, v)) = table.iter().find(|(k, _)| k.get_ref().as_ref() == *segment)
            else {
                return best;
            };
            best = Some(key.span());
            value = Some(v.get_ref());
        }
        best
    }
}

/// "did you mean `x`?" for the closest candidate, if it is close enough to be a plausible typo.
pub fn did_you_mean<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<String> {
    // Short names need an edit-distance rule (`svr` → `srv`); long ones are judged by similarity.
    candidates
        .into_iter()
        .filter(|c| {
            let edits = strsim::damerau_levenshtein(word, c);
            let len = c.chars().count();
            (edits <= (len / 3).max(1) && edits < len) || strsim::jaro_winkler(word, c) > 0.85
        })
        .min_by_key(|c| strsim::damerau_levenshtein(word, c))
        .map(|c| format!("did you mean `{c}`?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters() {
        let src = "a = 1\nb = \"中文\"\nc = 3";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        let c = src.find('c').unwrap();
        assert_eq!(line_col(src, c), (3, 1));
    }

    #[test]
    fn locator_finds_nested_keys_and_array_items() {
        let src =
            "title = 'x'\n[engines.vllm]\nready_timeout = '3x'\n[[matrix.include]]\nengine = 'a'\n";
        let loc = Locator::new(src);
        assert_eq!(
            loc.position(&["engines", "vllm", "ready_timeout"]),
            Some((3, 1))
        );
        assert_eq!(
            loc.position(&["matrix", "include", "0", "engine"]),
            Some((5, 1))
        );
        // A missing key points at its nearest existing parent.
        assert_eq!(
            loc.position(&["engines", "vllm", "nope"]).map(|p| p.0),
            Some(2)
        );
    }

    #[test]
    fn suggestions_only_for_near_misses() {
        assert_eq!(
            did_you_mean("concurrancy", ["model", "concurrency"]),
            Some("did you mean `concurrency`?".into())
        );
        assert_eq!(did_you_mean("zzz", ["model", "concurrency"]), None);
    }
}
