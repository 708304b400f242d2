//! The pseudo-tokenizer and the output generator.
//!
//! Text is tokenized as one token per whitespace-separated word; a word's id is a stable hash of its bytes,
//! folded into `0..vocab_size - 1` (the last id, `vocab_size - 1`, is the end-of-sequence token and never
//! comes out of text). Generated tokens are drawn from a ChaCha generator seeded by the `--seed` and the
//! prompt's token ids, so the same prompt gives the same output (like greedy decoding), and each token's
//! text is a leading space plus a pronounceable pseudo-word derived from its id. Output text therefore
//! re-tokenizes into exactly as many tokens as were generated (minus the end-of-sequence token, whose text
//! is empty).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Why generation ended, as the OpenAI wire format names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// `max_tokens` reached.
    Length,
    /// The simulated end-of-sequence token (or a truncated output, see `--emit-fewer`).
    Stop,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Length => "length",
            Finish::Stop => "stop",
        }
    }
}

/// What a request will produce: the token ids, in order, and why it ends. Decided up front so that the
/// timing model only needs the count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputPlan {
    pub tokens: Vec<u32>,
    pub finish: Finish,
    /// The last token is the end-of-sequence token (its text is empty, but it counts in `usage`).
    pub ends_with_eos: bool,
}

/// The request's knobs that decide the output.
#[derive(Debug, Clone, Copy)]
pub struct OutputRequest {
    pub max_tokens: usize,
    pub min_tokens: usize,
    pub ignore_eos: bool,
}

/// The engine's knobs that decide the output.
#[derive(Debug, Clone, Copy)]
pub struct OutputModel {
    pub seed: u64,
    pub vocab_size: u32,
    pub eos_probability: f64,
    pub emit_fewer: usize,
}

/// Splits text into words and maps each to a token id below `vocab_size - 1`.
pub fn tokenize(text: &str, vocab_size: u32) -> Vec<u32> {
    text.split_whitespace()
        .map(|w| word_id(w, vocab_size))
        .collect()
}

fn word_id(word: &str, vocab_size: u32) -> u32 {
    // FNV-1a: stable across runs and platforms, unlike the standard library's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in word.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(vocab_size - 1)) as u32
}

const CONSONANTS: &[u8] = b"bdfgklmnprstvz";
const VOWELS: &[u8] = b"aeiou";

/// The text of a generated token: a space and a pseudo-word spelled from the id in base 70 syllables.
pub fn token_text(id: u32, out: &mut String) {
    out.push(' ');
    let base = (CONSONANTS.len() * VOWELS.len()) as u32;
    let mut n = id;
    loop {
        let syllable = (n % base) as usize;
        out.push(CONSONANTS[syllable / VOWELS.len()] as char);
        out.push(VOWELS[syllable % VOWELS.len()] as char);
        n /= base;
        if n == 0 {
            break;
        }
    }
}

/// A 64-bit mixer (SplitMix64's finalizer): turns structured inputs into well-spread seeds.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A deterministic draw in `[0, 1)` for request number `index` and a purpose `salt` (fault decisions).
pub fn unit_draw(seed: u64, index: u64, salt: u64) -> f64 {
    let x = mix(mix(seed ^ salt) ^ index);
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// A hash of the whole prompt, to seed its output.
pub fn prompt_hash(prompt: &[u32]) -> u64 {
    prompt
        .iter()
        .fold(0x5eed_u64, |h, &t| mix(h ^ u64::from(t)))
}

/// Decides the output of one request.
///
/// Without `ignore_eos`, each token from position `min_tokens` on is the end-of-sequence token with
/// probability `eos_probability`; the end-of-sequence token counts as an output token (as in vLLM) and
/// ends the request with `stop`. `emit_fewer` then removes that many tokens (keeping at least one) and
/// reports `stop`, like an engine that does not honour the requested length.
pub fn plan_output(model: &OutputModel, prompt: &[u32], req: &OutputRequest) -> OutputPlan {
    let mut rng = ChaCha8Rng::seed_from_u64(mix(model.seed) ^ prompt_hash(prompt));
    let eos = model.vocab_size - 1;
    let mut tokens = Vec::with_capacity(req.max_tokens);
    let mut finish = Finish::Length;
    let mut ends_with_eos = false;
    for i in 0..req.max_tokens {
        let eos_now = !req.ignore_eos
            && i >= req.min_tokens
            && model.eos_probability > 0.0
            && rng.random::<f64>() < model.eos_probability;
        if eos_now {
            tokens.push(eos);
            finish = Finish::Stop;
            ends_with_eos = true;
            break;
        }
        tokens.push(rng.random_range(0..eos));
    }
    if model.emit_fewer > 0 {
        let keep = tokens.len().saturating_sub(model.emit_fewer).max(1);
        if keep < tokens.len() {
            tokens.truncate(keep);
            finish = Finish::Stop;
            ends_with_eos = false;
        }
    }
    OutputPlan {
        tokens,
        finish,
        ends_with_eos,
    }
}

impl OutputPlan {
    /// The text of tokens `range` (the end-of-sequence token has none).
    pub fn text(&self, range: std::ops::Range<usize>) -> String {
        let mut s = String::with_capacity(range.len() * 6);
        for i in range {
            if !(self.ends_with_eos && i + 1 == self.tokens.len()) {
                token_text(self.tokens[i], &mut s);
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: OutputModel = OutputModel {
        seed: 7,
        vocab_size: 1000,
        eos_probability: 0.0,
        emit_fewer: 0,
    };

    #[test]
    fn one_token_per_word_and_stable_ids() {
        let ids = tokenize("  the quick\tbrown\nfox the ", 1000);
        assert_eq!(ids.len(), 5);
        assert_eq!(ids[0], ids[4], "the same word maps to the same id");
        assert_ne!(ids[0], ids[1]);
        assert!(
            ids.iter().all(|&t| t < 999),
            "text never produces the end-of-sequence id"
        );
        assert_eq!(ids, tokenize("the quick brown fox the", 1000));
    }

    #[test]
    fn output_text_retokenizes_to_the_same_count() {
        let req = OutputRequest {
            max_tokens: 40,
            min_tokens: 0,
            ignore_eos: true,
        };
        let plan = plan_output(&MODEL, &[1, 2, 3], &req);
        assert_eq!(plan.tokens.len(), 40);
        assert_eq!(tokenize(&plan.text(0..40), 1000).len(), 40);
        // Distinct ids give distinct words.
        let (mut a, mut b) = (String::new(), String::new());
        token_text(69, &mut a);
        token_text(70, &mut b);
        assert_ne!(a, b);
    }

    #[test]
    fn same_prompt_same_output_other_prompt_other_output() {
        let req = OutputRequest {
            max_tokens: 20,
            min_tokens: 0,
            ignore_eos: true,
        };
        let a = plan_output(&MODEL, &[1, 2, 3], &req);
        assert_eq!(a, plan_output(&MODEL, &[1, 2, 3], &req));
        assert_ne!(a.tokens, plan_output(&MODEL, &[1, 2, 4], &req).tokens);
        let other_seed = OutputModel { seed: 8, ..MODEL };
        assert_ne!(a.tokens, plan_output(&other_seed, &[1, 2, 3], &req).tokens);
    }

    #[test]
    fn eos_respects_min_tokens_and_ignore_eos() {
        let model = OutputModel {
            eos_probability: 0.5,
            ..MODEL
        };
        let mut stopped_early = 0;
        for p in 0..200u32 {
            let req = OutputRequest {
                max_tokens: 30,
                min_tokens: 5,
                ignore_eos: false,
            };
            let plan = plan_output(&model, &[p], &req);
            assert!(
                plan.tokens.len() > 5,
                "the end-of-sequence token comes after min_tokens"
            );
            if plan.finish == Finish::Stop {
                stopped_early += 1;
                assert!(plan.ends_with_eos);
                assert_eq!(*plan.tokens.last().unwrap(), 999);
            } else {
                assert_eq!(plan.tokens.len(), 30);
            }
            let ignore = OutputRequest {
                ignore_eos: true,
                ..req
            };
            assert_eq!(plan_output(&model, &[p], &ignore).tokens.len(), 30);
        }
        assert!(
            stopped_early > 150,
            "with p=0.5 nearly all stop early, got {stopped_early}"
        );
    }

    #[test]
    fn emit_fewer_truncates_and_says_stop() {
        let model = OutputModel {
            emit_fewer: 3,
            ..MODEL
        };
        let req = OutputRequest {
            max_tokens: 10,
            min_tokens: 10,
            ignore_eos: true,
        };
        let plan = plan_output(&model, &[1], &req);
        assert_eq!(plan.tokens.len(), 7);
        assert_eq!(plan.finish, Finish::Stop);
        let tiny = OutputRequest {
            max_tokens: 2,
            ..req
        };
        assert_eq!(
            plan_output(&model, &[1], &tiny).tokens.len(),
            1,
            "at least one token"
        );
    }

    #[test]
    fn unit_draws_are_uniform_enough_and_deterministic() {
        let draws: Vec<f64> = (0..10_000).map(|i| unit_draw(3, i, 1)).collect();
        assert!(draws.iter().all(|&d| (0.0..1.0).contains(&d)));
        let below = draws.iter().filter(|&&d| d < 0.25).count();
        assert!((2000..3000).contains(&below), "{below}");
        assert_eq!(unit_draw(3, 5, 1), unit_draw(3, 5, 1));
        assert_ne!(unit_draw(3, 5, 1), unit_draw(3, 5, 2));
    }
}
