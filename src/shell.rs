//! How a POSIX shell would see a command, without running one: split a command line into words and quote
//! a word for a line a person can paste. The one place for both, so that the plan, the server records and
//! the pre-flight agree on what a command is (finding the program is [`crate::tool::find_program`]).
//!
//! Splitting and quoting are `shlex`'s (tested against real shells); this module adds the runner's own
//! rules on top: a line that needs a shell (pipes, redirections, `&&`) is refused with a pointer to
//! `shell = true`, and display quoting leaves common option characters (`=`, `,`, `%`) and the
//! `$PORT` placeholder of plans bare, so a command reads as it was written. A command is shown only
//! through [`shown_command`], which hides secrets first.

use std::borrow::Cow;

use crate::secret::Secrets;

/// Splits a command line into words like a POSIX shell would (quotes, backslashes, line continuations),
/// without globbing, variables or pipes.
pub fn split(line: &str) -> Result<Vec<String>, String> {
    // shlex treats these as ordinary characters; a shell would not, so running the words directly would
    // silently do something else than the line says.
    if let Some(c) = unquoted_operator(line) {
        return Err(format!(
            "`{c}` needs a shell; set `shell = true` on the engine to run the command through `sh -c`"
        ));
    }
    let words =
        words(line).ok_or_else(|| "unclosed quote or trailing backslash in command".to_string())?;
    if words.is_empty() {
        return Err("the command renders to nothing".into());
    }
    Ok(words)
}

/// The words of a shell script, for inspection only (finding its program or its secret options): shell
/// operators stay words of their own. `None` for an unclosed quote.
pub fn words(script: &str) -> Option<Vec<String>> {
    shlex::split(&join_continuations(script))
}

/// Removes line continuations (a backslash before a newline, outside single quotes), as a shell does
/// before splitting; shlex would leave an empty word in their place.
fn join_continuations(line: &str) -> Cow<'_, str> {
    if !line.contains("\\\n") {
        return Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), _) if q == c => quote = None,
            (None | Some('"'), '\\') => match chars.next() {
                Some('\n') => continue,
                Some(next) => {
                    out.push(c);
                    out.push(next);
                    continue;
                }
                None => {}
            },
            _ => {}
        }
        out.push(c);
    }
    Cow::Owned(out)
}

/// The first shell operator (`|`, `&`, `;`, `<`, `>`, a backquote) outside quotes, if any.
fn unquoted_operator(line: &str) -> Option<char> {
    let mut chars = line.chars();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some('\''), '\'') | (Some('"'), '"') => quote = None,
            (Some('"'), '\\') | (None, '\\') => {
                chars.next();
            }
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '|' | '&' | ';' | '<' | '>' | '`') => return Some(c),
            (None, _) => {}
        }
    }
    None
}

/// The placeholder plans show for a port the runner has not picked yet; kept bare when quoting so that
/// a pasted plan line works with `PORT` set.
pub const PORT_PLACEHOLDER: &str = "$PORT";

/// Quotes one word for display when a shell would split or interpret it.
pub fn quote(word: &str) -> Cow<'_, str> {
    if word.contains(PORT_PLACEHOLDER) {
        let parts: Vec<Cow<'_, str>> = word
            .split(PORT_PLACEHOLDER)
            .map(|p| {
                if p.is_empty() {
                    Cow::Borrowed("")
                } else {
                    quote_plain(p)
                }
            })
            .collect();
        return Cow::Owned(parts.join(PORT_PLACEHOLDER));
    }
    quote_plain(word)
}

fn quote_plain(word: &str) -> Cow<'_, str> {
    // Characters that are literal in any word after the first: shlex quotes them too, to be safe in
    // every position, which makes `--x=1` read as `'--x=1'`.
    let bare = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c) || !c.is_ascii());
    if bare {
        return Cow::Borrowed(word);
    }
    match shlex::try_quote(word) {
        Ok(q) => q,
        // Only a NUL byte cannot be quoted; no program could receive it as an argument anyway.
        Err(_) => Cow::Owned(format!("{word:?}")),
    }
}

/// Words joined into one line a person could paste into a shell.
pub fn join<'a>(words: impl IntoIterator<Item = &'a str>) -> String {
    words.into_iter().map(quote).collect::<Vec<_>>().join(" ")
}

/// A command as one line a person could paste into a shell, with `secrets` hidden: each word (or, with
/// `shell`, the whole `sh -c` script) is redacted before it is quoted, so quoting cannot disguise a
/// secret. The one way the runner shows a command.
pub fn shown_command(argv: &[String], shell: bool, secrets: &Secrets) -> String {
    if shell {
        format!("sh -c {}", quote(&secrets.redact(&argv.join(" "))))
    } else {
        let words: Vec<Cow<'_, str>> = argv.iter().map(|a| secrets.redact(a)).collect();
        join(words.iter().map(|w| w.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_a_shell() {
        assert_eq!(
            split(r#"a "b c" 'd e' f\ g"#).unwrap(),
            ["a", "b c", "d e", "f g"]
        );
        assert_eq!(split("a \\\n  b").unwrap(), ["a", "b"]);
        assert_eq!(split("a\\\nb 'c\\\nd'").unwrap(), ["ab", "c\\\nd"]);
        assert_eq!(split(r"a\\ b").unwrap(), [r"a\", "b"]);
        assert_eq!(split("\"it's\" \\\n b").unwrap(), ["it's", "b"]);
        assert_eq!(split(r#"a "x|y" 'p;q'"#).unwrap(), ["a", "x|y", "p;q"]);
        assert!(split("a 'b").is_err());
        assert!(split("   ").unwrap_err().contains("renders to nothing"));
        for line in ["a | b", "a && b", "a > log", "a; b", "echo `x`"] {
            assert!(split(line).unwrap_err().contains("shell = true"), "{line}");
        }
    }

    #[test]
    fn quotes_what_a_shell_would_split_and_nothing_else() {
        assert_eq!(
            join(["vllm", "serve", "/m/My Model", "--x=1", "a,b"]),
            "vllm serve '/m/My Model' --x=1 a,b"
        );
        assert_eq!(quote("cd /x && exec it's"), r#""cd /x && exec it's""#);
        assert_eq!(quote(""), "''");
        assert_eq!(quote("--port=$PORT"), "--port=$PORT");
        assert_eq!(quote("http://h:$PORT/a b"), "http://h:$PORT'/a b'");
        // Every quoted word splits back into itself.
        let words = [
            "it's",
            "a \"b\"",
            "$HOME",
            "x\\y",
            "<redacted>",
            "--port=$PORT",
        ];
        let line = join(words);
        let back = shlex::split(&line).unwrap();
        assert_eq!(back[..5], words[..5]);
    }

    #[test]
    fn shown_commands_hide_secrets_before_quoting() {
        let mut secrets = Secrets::default();
        secrets.add("it's-secret");
        let argv: Vec<String> = ["srv", "--api-key", "it's-secret", "/m/My Model"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            shown_command(&argv, false, &secrets),
            "srv --api-key '<redacted>' '/m/My Model'"
        );
        let script = vec!["K=it's-secret exec srv --x=1".to_string()];
        assert_eq!(
            shown_command(&script, true, &secrets),
            "sh -c 'K=<redacted> exec srv --x=1'"
        );
    }
}
