//! Secrets: which names look secret, the set of values to hide, and the one function that hides them.
//!
//! A command is rendered once with its real values (the process needs them) and shown everywhere else
//! (plans, records, CSV, report, logs, error messages) through [`Secrets::redact`]. A secret is any value
//! that came from an environment variable whose name looks secret (`${HF_TOKEN}`), the value of an
//! `env` entry or an assignment whose name looks secret, the value of a secret-looking option
//! (`--api-key X`, `--api-key=X`, `--hf-token X`), and every engine's `api_key`.
//!
//! Invariants: redaction works on values, not positions, so a secret is hidden wherever it ends up in a
//! text; an [`ApiKey`] cannot be serialised and prints as `<redacted>`, so it can only leave the process
//! as the `Authorization` header it exists for.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;

/// What a hidden value is replaced with.
pub const REDACTED: &str = "<redacted>";

/// Whether a variable or option name looks like it holds a secret: one of its words (split at `_`, `-`
/// and other punctuation) ends in TOKEN, KEY, SECRET, PASSWORD, PASSWD or CREDENTIAL(S), starts with
/// AUTH, or is PASS. Whole words, so that `MAX_TOKENS` or `TOKENIZER_PATH` are not secrets (their values
/// would otherwise be hidden wherever they occur, numbers included).
pub fn looks_secret(name: &str) -> bool {
    const ENDINGS: &[&str] = &[
        "TOKEN",
        "KEY",
        "SECRET",
        "PASSWORD",
        "PASSWD",
        "CREDENTIAL",
        "CREDENTIALS",
    ];
    name.split(|c: char| !c.is_ascii_alphanumeric())
        .map(str::to_ascii_uppercase)
        .any(|w| ENDINGS.iter().any(|e| w.ends_with(e)) || w.starts_with("AUTH") || w == "PASS")
}

/// Values that must never be shown. Its `Debug` shows only how many there are.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets(BTreeSet<String>);

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secrets({} hidden)", self.0.len())
    }
}

impl Secrets {
    /// Adds a value to hide; an empty value hides nothing and is ignored.
    pub fn add(&mut self, value: &str) {
        if !value.trim().is_empty() {
            self.0.insert(value.to_string());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Length in bytes of the longest secret (0 without any).
    pub fn longest(&self) -> usize {
        self.0.iter().map(String::len).max().unwrap_or(0)
    }

    /// Adds the values that secret-looking options and assignments give among command words:
    /// `--api-key X`, `--api-key=X`, `HF_TOKEN=X`. The word after a secret-looking option is taken as its
    /// value unless it is itself an option.
    pub fn add_from_words<S: AsRef<str>>(&mut self, words: &[S]) {
        let mut words = words.iter().map(AsRef::as_ref).peekable();
        while let Some(word) = words.next() {
            if let Some((name, value)) = word.split_once('=') {
                if looks_secret(name) {
                    self.add(value);
                }
            } else if word.starts_with('-') && looks_secret(word) {
                if let Some(value) = words.next_if(|next| !next.starts_with('-')) {
                    self.add(value);
                }
            }
        }
    }

    /// `text` with every occurrence of every secret replaced by [`REDACTED`]. At each position the
    /// longest secret that starts there wins, so a secret that contains another is hidden whole.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if self.0.iter().all(|s| !text.contains(s.as_str())) {
            return Cow::Borrowed(text);
        }
        let mut by_length: Vec<&str> = self.0.iter().map(String::as_str).collect();
        by_length.sort_by_key(|s| std::cmp::Reverse(s.len()));
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            match by_length.iter().find(|s| rest.starts_with(**s)) {
                Some(s) => {
                    out.push_str(REDACTED);
                    rest = &rest[s.len()..];
                }
                None => {
                    out.push(c);
                    rest = &rest[c.len_utf8()..];
                }
            }
        }
        Cow::Owned(out)
    }
}

/// An API key for an engine: sent as `Authorization: Bearer …`, never written anywhere. It has no
/// `Serialize`, and `Debug` prints `ApiKey(<redacted>)`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> ApiKey {
        ApiKey(key.into())
    }

    /// The value of the `Authorization` header.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.0)
    }

    /// The key itself, for the secrets to hide.
    pub fn value(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({REDACTED})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_are_whole_words() {
        for name in [
            "HF_TOKEN",
            "OPENAI_API_KEY",
            "APIKEY",
            "hf-token",
            "--api-key",
            "--token",
            "AWS_SECRET_ACCESS_KEY",
            "DB_PASSWORD",
            "DB_PASS",
            "AUTH_HEADER",
            "GOOGLE_APPLICATION_CREDENTIALS",
        ] {
            assert!(looks_secret(name), "{name}");
        }
        for name in [
            "MAX_TOKENS",
            "--max-tokens",
            "TOKENIZER_PATH",
            "KV_CACHE_DTYPE",
            "PWD",
            "PASSES",
            "CUDA_VISIBLE_DEVICES",
        ] {
            assert!(!looks_secret(name), "{name}");
        }
    }

    #[test]
    fn option_and_assignment_values_are_found() {
        let mut s = Secrets::default();
        s.add_from_words(&[
            "srv",
            "--api-key",
            "k1",
            "--hf-token=k2",
            "HF_TOKEN=k3",
            "--token",
            "--port",
            "8000",
            "--max-tokens",
            "800",
        ]);
        let shown = s.redact("k1 k2 k3 8000 800");
        assert_eq!(shown, "<redacted> <redacted> <redacted> 8000 800");
    }

    #[test]
    fn redaction_hides_every_occurrence_longest_first() {
        let mut s = Secrets::default();
        s.add("abc");
        s.add("abcdef");
        s.add("");
        s.add("red");
        assert_eq!(
            s.redact("x abcdef y abc-abc"),
            "x <redacted> y <redacted>-<redacted>"
        );
        assert_eq!(s.redact("nothing here"), "nothing here");
        assert!(matches!(s.redact("plain"), Cow::Borrowed(_)));
        assert_eq!(format!("{s:?}"), "Secrets(3 hidden)");
    }

    #[test]
    fn api_keys_never_print() {
        let k = ApiKey::new("sk-123");
        assert_eq!(format!("{k:?}"), "ApiKey(<redacted>)");
        assert_eq!(k.bearer(), "Bearer sk-123");
    }
}
