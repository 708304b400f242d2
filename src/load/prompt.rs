//! Prompts of exact length, deterministic from a seed.
//!
//! Invariants:
//! - The same (seed, salt, index) always gives the same prompt, on any machine: token ids are drawn with
//!   ChaCha8 (a portable generator), one independent stream per request, so prompts are generated lazily
//!   in any order and never held in memory all at once (200 × 20K tokens would be large).
//! - Token-id prompts have exactly `input_tokens` ids, drawn from the model's vocabulary without special or
//!   added tokens (or from a configured id range when no tokenizer is given).
//! - Unique mode: request `i`'s first token is the `(offset + i)`-th vocabulary entry, so no two requests of
//!   a point share even their first token and a block-level prefix cache cannot serve any of them.
//!   Shared-prefix mode: the first `N` tokens are identical for every request, then the same distinct token
//!   follows. `offset` and the shared block come from the seed and the salt (the caller salts with the load
//!   point, so two points on one server do not hit each other's cache either).
//! - Text prompts (for the chat API) are checked with the tokenizer when one is given; without one their
//!   token length is unknown and recorded as such.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use crate::experiment::load::{LoadSpec, PromptMode, Vocab};

/// One request's prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Token ids, sent as the `prompt` array of `/v1/completions`: the exact input length.
    Ids(Vec<u32>),
    /// Text (chat API). `tokens` is its length by the model's tokenizer, when one was given.
    Text { text: String, tokens: Option<u32> },
}

impl Prompt {
    /// The input length we know we sent, if we know it exactly.
    pub fn known_tokens(&self) -> Option<u32> {
        match self {
            Prompt::Ids(ids) => u32::try_from(ids.len()).ok(),
            Prompt::Text { tokens, .. } => *tokens,
        }
    }
}

/// Where token ids come from.
#[derive(Debug, Clone)]
enum Pool {
    /// Half-open range of ids.
    Range { start: u32, len: u32 },
    /// Sorted ids of a tokenizer's vocabulary minus special/added tokens.
    List(Arc<[u32]>),
}

impl Pool {
    fn len(&self) -> u64 {
        match self {
            Pool::Range { len, .. } => u64::from(*len),
            Pool::List(ids) => ids.len() as u64,
        }
    }

    fn get(&self, i: u64) -> u32 {
        let i = i % self.len();
        match self {
            Pool::Range { start, .. } => start + i as u32,
            Pool::List(ids) => ids[i as usize],
        }
    }
}

/// Generates every request's prompt for one load point.
#[derive(Clone)]
pub struct PromptSource {
    pool: Pool,
    key: [u8; 32],
    input_tokens: u32,
    shared: Vec<u32>,
    offset: u64,
    text: bool,
    tokenizer: Option<Arc<tokenizers::Tokenizer>>,
}

/// Attempts at trimming or extending a text prompt until the tokenizer counts exactly the target.
const TEXT_FIT_ROUNDS: usize = 8;

impl PromptSource {
    /// `text` asks for text prompts (the chat API); `salt` separates load points that share a seed.
    pub fn new(spec: &LoadSpec, salt: u64, text: bool) -> anyhow::Result<PromptSource> {
        let (pool, tokenizer) = load_pool(&spec.vocab)?;
        let mut hasher = Sha256::new();
        hasher.update(b"runner prompts v1");
        hasher.update(spec.seed.to_le_bytes());
        hasher.update(salt.to_le_bytes());
        let key: [u8; 32] = hasher.finalize().into();

        // Stream 0 holds the point-wide draws; request i uses stream i + 1.
        let mut rng = ChaCha8Rng::from_seed(key);
        let offset = rng.random_range(0..pool.len());
        let shared_len = match spec.prompt {
            PromptMode::Unique => 0,
            PromptMode::SharedPrefix { tokens } => tokens.min(spec.input_tokens.saturating_sub(1)),
        };
        let shared = (0..shared_len)
            .map(|_| pool.get(rng.random_range(0..pool.len())))
            .collect();
        Ok(PromptSource {
            pool,
            key,
            input_tokens: spec.input_tokens,
            shared,
            offset,
            text,
            tokenizer,
        })
    }

    /// Exactly `input_tokens` ids for request `index`.
    pub fn ids(&self, index: u32) -> Vec<u32> {
        let n = self.input_tokens as usize;
        let mut rng = ChaCha8Rng::from_seed(self.key);
        rng.set_stream(u64::from(index) + 1);
        let mut ids = Vec::with_capacity(n);
        ids.extend_from_slice(&self.shared);
        if ids.len() < n {
            ids.push(self.pool.get(self.offset + u64::from(index)));
        }
        while ids.len() < n {
            ids.push(self.pool.get(rng.random_range(0..self.pool.len())));
        }
        ids
    }

    /// The prompt of request `index`.
    pub fn prompt(&self, index: u32) -> Prompt {
        let ids = self.ids(index);
        if !self.text {
            return Prompt::Ids(ids);
        }
        match &self.tokenizer {
            Some(tok) => fit_text(tok, ids, self.input_tokens),
            None => Prompt::Text {
                text: ids
                    .iter()
                    .map(|&id| pseudo_word(id))
                    .collect::<Vec<_>>()
                    .join(" "),
                tokens: None,
            },
        }
    }
}

/// Decodes `ids` to text and checks its length by re-encoding: decode → encode rarely round-trips
/// exactly (tokens merge across boundaries), so trim or extend the ids until the text counts exactly
/// `target` tokens. If that fails, the measured length is recorded, never the target.
fn fit_text(tok: &tokenizers::Tokenizer, mut ids: Vec<u32>, target: u32) -> Prompt {
    let mut best = None;
    for _ in 0..TEXT_FIT_ROUNDS {
        let Ok(text) = tok.decode(&ids, true) else {
            break;
        };
        let Ok(enc) = tok.encode(text.as_str(), false) else {
            break;
        };
        let got = enc.get_ids().len() as u32;
        best = Some((text, got));
        if got == target {
            break;
        }
        if got > target {
            let drop = (got - target) as usize;
            ids.truncate(ids.len().saturating_sub(drop).max(1));
        } else {
            // Re-use the encoder's own ids (a stable tokenisation) and repeat its tail to grow.
            let mut grown: Vec<u32> = enc.get_ids().to_vec();
            let missing = (target - got) as usize;
            let tail: Vec<u32> = ids.iter().rev().take(missing).rev().copied().collect();
            grown.extend(tail);
            ids = grown;
        }
    }
    match best {
        Some((text, got)) => Prompt::Text {
            text,
            tokens: Some(got),
        },
        None => Prompt::Text {
            text: String::new(),
            tokens: Some(0),
        },
    }
}

/// A short lowercase word per id, for text prompts without a tokenizer (length then unknown).
fn pseudo_word(id: u32) -> String {
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
    let mut n = id;
    let mut w = String::new();
    loop {
        w.push(LETTERS[(n % 26) as usize] as char);
        n /= 26;
        if n == 0 {
            break;
        }
    }
    w
}

fn load_pool(vocab: &Vocab) -> anyhow::Result<(Pool, Option<Arc<tokenizers::Tokenizer>>)> {
    match &vocab.tokenizer {
        Some(path) => {
            let tok = load_tokenizer(path)?;
            let special: std::collections::HashSet<u32> =
                tok.get_added_tokens_decoder().keys().copied().collect();
            // HashMap order is random per process: sort for determinism.
            let mut ids: Vec<u32> = tok
                .get_vocab(false)
                .into_values()
                .filter(|id| !special.contains(id))
                .collect();
            ids.sort_unstable();
            ids.dedup();
            if ids.is_empty() {
                bail!("{}: the vocabulary has no ordinary tokens", path.display());
            }
            Ok((Pool::List(ids.into()), Some(Arc::new(tok))))
        }
        None => {
            let [start, end] = vocab.id_range;
            if end <= start {
                bail!("the token id range [{start}, {end}) is empty");
            }
            Ok((
                Pool::Range {
                    start,
                    len: end - start,
                },
                None,
            ))
        }
    }
}

fn load_tokenizer(path: &Path) -> anyhow::Result<tokenizers::Tokenizer> {
    tokenizers::Tokenizer::from_file(path)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("reading the tokenizer {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::load::{Api, Slo};
    use std::time::Duration;

    fn spec(prompt: PromptMode, input: u32, vocab: Vocab) -> LoadSpec {
        LoadSpec {
            concurrency: 1,
            requests: 1,
            warmup: 0,
            max_inflight: None,
            request_rate: None,
            prompt,
            input_tokens: input,
            output_tokens: 4,
            timeout: Duration::from_secs(5),
            seed: 7,
            api: Api::Completions,
            slo: Slo::default(),
            vocab,
            save_prompts: false,
            connections: Default::default(),
            repeats: 1,
            repeat: 1,
        }
    }

    fn range(start: u32, end: u32) -> Vocab {
        Vocab {
            tokenizer: None,
            id_range: [start, end],
        }
    }

    #[test]
    fn exact_length_in_range_and_deterministic() {
        let s = spec(PromptMode::Unique, 1000, range(100, 5000));
        let a = PromptSource::new(&s, 1, false).unwrap();
        let b = PromptSource::new(&s, 1, false).unwrap();
        for i in [0, 1, 57] {
            let ids = a.ids(i);
            assert_eq!(ids.len(), 1000);
            assert!(ids.iter().all(|&id| (100..5000).contains(&id)));
            assert_eq!(ids, b.ids(i), "same seed, same prompt");
        }
        // Another salt (load point) or seed gives other prompts.
        let c = PromptSource::new(&s, 2, false).unwrap();
        assert_ne!(a.ids(0), c.ids(0));
        let mut s2 = s.clone();
        s2.seed = 8;
        assert_ne!(a.ids(0), PromptSource::new(&s2, 1, false).unwrap().ids(0));
    }

    #[test]
    fn unique_prompts_differ_from_the_first_token() {
        let s = spec(PromptMode::Unique, 32, range(0, 50_000));
        let src = PromptSource::new(&s, 0, false).unwrap();
        let firsts: std::collections::HashSet<u32> = (0..3000).map(|i| src.ids(i)[0]).collect();
        assert_eq!(firsts.len(), 3000);
    }

    #[test]
    fn shared_prefix_is_identical_then_distinct() {
        let s = spec(
            PromptMode::SharedPrefix { tokens: 64 },
            100,
            range(10, 20_000),
        );
        let src = PromptSource::new(&s, 0, false).unwrap();
        let (a, b) = (src.ids(0), src.ids(1));
        assert_eq!(a.len(), 100);
        assert_eq!(a[..64], b[..64]);
        assert_ne!(a[64], b[64]);
    }

    const TOKENIZER: &str = r#"{"version":"1.0","truncation":null,"padding":null,
      "added_tokens":[{"id":0,"content":"<s>","single_word":false,"lstrip":false,"rstrip":false,
        "normalized":false,"special":true}],
      "normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
      "model":{"type":"WordLevel","vocab":{"<s>":0,"alpha":1,"beta":2,"gamma":3,"delta":4,"eps":5},
        "unk_token":"<s>"}}"#;

    #[test]
    fn tokenizer_vocabulary_without_special_tokens_and_exact_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, TOKENIZER).unwrap();
        let vocab = Vocab {
            tokenizer: Some(path),
            id_range: [0, 1],
        };
        let s = spec(PromptMode::Unique, 40, vocab);
        let src = PromptSource::new(&s, 0, false).unwrap();
        let ids = src.ids(3);
        assert_eq!(ids.len(), 40);
        assert!(ids.iter().all(|&id| (1..=5).contains(&id)), "{ids:?}");

        let text = PromptSource::new(&s, 0, true).unwrap().prompt(3);
        match text {
            Prompt::Text { text, tokens } => {
                assert_eq!(tokens, Some(40));
                assert_eq!(text.split_whitespace().count(), 40);
                assert!(!text.contains("<s>"));
            }
            other => panic!("expected text, got {other:?}"),
        }
    }

    #[test]
    fn text_without_tokenizer_has_unknown_length() {
        let s = spec(PromptMode::Unique, 10, range(0, 1000));
        let p = PromptSource::new(&s, 0, true).unwrap().prompt(0);
        assert_eq!(p.known_tokens(), None);
        assert!(matches!(p, Prompt::Text { ref text, .. } if text.split(' ').count() == 10));
    }

    #[test]
    fn empty_range_is_an_error() {
        let s = spec(PromptMode::Unique, 10, range(5, 5));
        assert!(PromptSource::new(&s, 0, false).is_err());
    }
}
