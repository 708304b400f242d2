//! The batching model: one scheduler task runs engine steps back to back on an absolute timeline and fans
//! each step's tokens out to the requests' streams.
//!
//! A step works like vLLM's continuous batching with chunked prefill:
//! 1. every running sequence that has finished its prefill decodes one token (one token of budget each);
//! 2. sequences admitted earlier whose prefill is incomplete continue it, within the remaining token budget
//!    (`max_num_batched_tokens`);
//! 3. waiting requests are admitted in arrival order while fewer than `max_num_seqs` run, budget is left
//!    and the KV cache has room for the whole sequence (prompt + maximum output, in blocks of the block
//!    size: reserved at admission and freed when the sequence ends, so the model never preempts); on
//!    admission the prefix cache decides how many prompt tokens need computing.
//!
//! The step lasts `decode_step + decode_step_per_seq × (sequences in the step) + (prefill tokens in the
//! step) / prefill_tokens_per_s`. At its end, each decoding sequence and each sequence whose prefill just
//! completed receives one token, stamped with the step's scheduled end. The next step starts at that
//! scheduled end, not when the scheduler woke up, so lateness never accumulates into drift; a step that
//! admits a request starts no earlier than the request arrived.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use super::cache::PrefixCache;
use super::metrics::Counters;

/// The knobs of the batching model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchParams {
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    pub prefill_tokens_per_s: f64,
    pub decode_step: Duration,
    pub decode_step_per_seq: Duration,
    /// KV-cache capacity in tokens (rounded down to whole blocks).
    pub kv_cache_tokens: usize,
}

impl BatchParams {
    /// How long a step with `seqs` sequences and `prefill_tokens` prompt tokens to compute lasts.
    pub fn step_duration(&self, seqs: usize, prefill_tokens: usize) -> Duration {
        self.decode_step
            + self.decode_step_per_seq * seqs as u32
            + Duration::from_nanos(
                (prefill_tokens as f64 * 1e9 / self.prefill_tokens_per_s).round() as u64,
            )
    }
}

/// A request handed to the scheduler.
#[derive(Debug)]
pub struct Submission {
    pub arrival: Instant,
    pub prompt_len: usize,
    /// The prompt's prefix-cache block hashes.
    pub blocks: Vec<u64>,
    pub output_len: usize,
    /// Receives the scheduled instant of each generated token; dropped by the stream to abort.
    pub tx: UnboundedSender<Instant>,
}

#[derive(Debug)]
struct Seq {
    sub: Submission,
    to_prefill: usize,
    emitted: usize,
    /// KV blocks reserved for it.
    kv_blocks: usize,
}

/// One planned step.
#[derive(Debug)]
#[cfg_attr(not(test), allow(dead_code))] // `start`, `seqs` and `prefill_tokens` are read by tests
pub struct Step {
    pub start: Instant,
    pub end: Instant,
    /// Sequences in the step (decoding or prefilling).
    pub seqs: usize,
    pub prefill_tokens: usize,
    /// Indices into the running list of the sequences that get a token at the end.
    emitting: Vec<usize>,
    /// Of those, the ones whose prefill completes (their blocks enter the cache).
    prefilled: Vec<usize>,
}

/// The scheduler's state, free of I/O and clocks so that it can be tested step by step.
#[derive(Debug)]
pub struct Batcher {
    params: BatchParams,
    waiting: VecDeque<Submission>,
    running: Vec<Seq>,
    block_size: usize,
    kv_total: usize,
    kv_free: usize,
}

impl Batcher {
    /// `block_size`: the KV cache's block size in tokens (at least 1).
    pub fn new(params: BatchParams, block_size: usize) -> Self {
        let block_size = block_size.max(1);
        let kv_total = params.kv_cache_tokens / block_size;
        Batcher {
            params,
            waiting: VecDeque::new(),
            running: Vec::new(),
            block_size,
            kv_total,
            kv_free: kv_total,
        }
    }

    /// KV blocks a request holds while it runs: its prompt and its maximum output.
    fn kv_need(&self, sub: &Submission) -> usize {
        (sub.prompt_len + sub.output_len).div_ceil(self.block_size)
    }

    /// (blocks in use, blocks in all).
    pub fn kv_blocks(&self) -> (usize, usize) {
        (self.kv_total - self.kv_free, self.kv_total)
    }

    pub fn push(&mut self, sub: Submission) {
        self.waiting.push_back(sub);
    }

    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    pub fn running(&self) -> usize {
        self.running.len()
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Plans the next step, which starts at `clock` (the previous step's scheduled end) or, if it admits
    /// a request that arrived later, at that arrival. `None` when there is nothing to run.
    pub fn plan(
        &mut self,
        clock: Option<Instant>,
        cache: &Mutex<PrefixCache>,
        counters: &Counters,
    ) -> Option<Step> {
        let mut budget = self.params.max_num_batched_tokens;
        let mut emitting = Vec::new();
        let mut prefilled = Vec::new();
        let mut prefill_tokens = 0;
        let mut seqs = 0;
        for (i, seq) in self.running.iter().enumerate() {
            if seq.to_prefill == 0 {
                budget = budget.saturating_sub(1);
                emitting.push(i);
                seqs += 1;
            }
        }
        let mut prefill = |i: usize, seq: &mut Seq, budget: &mut usize| {
            let take = seq.to_prefill.min(*budget);
            seq.to_prefill -= take;
            *budget -= take;
            prefill_tokens += take;
            seqs += 1;
            if seq.to_prefill == 0 {
                emitting.push(i);
                prefilled.push(i);
            }
        };
        for (i, seq) in self.running.iter_mut().enumerate() {
            if seq.to_prefill > 0 && budget > 0 {
                prefill(i, seq, &mut budget);
            }
        }
        let mut start = clock;
        while self.running.len() < self.params.max_num_seqs && budget > 0 {
            let Some(front) = self.waiting.front() else {
                break;
            };
            if front.tx.is_closed() {
                self.waiting.pop_front(); // the client left while queued
                continue;
            }
            let kv_blocks = self.kv_need(front);
            if kv_blocks > self.kv_free {
                break; // first come, first served: it waits for running sequences to end
            }
            let Some(sub) = self.waiting.pop_front() else {
                break;
            };
            self.kv_free -= kv_blocks;
            let cached = cache.lock().unwrap().lookup(&sub.blocks, sub.prompt_len);
            counters.admitted(sub.prompt_len, cached);
            start = Some(start.map_or(sub.arrival, |s| s.max(sub.arrival)));
            let mut seq = Seq {
                to_prefill: sub.prompt_len - cached,
                emitted: 0,
                kv_blocks,
                sub,
            };
            prefill(self.running.len(), &mut seq, &mut budget);
            self.running.push(seq);
        }
        if seqs == 0 {
            return None;
        }
        let start = start.expect("a step with sequences has a start");
        let end = start + self.params.step_duration(seqs, prefill_tokens);
        Some(Step {
            start,
            end,
            seqs,
            prefill_tokens,
            emitting,
            prefilled,
        })
    }

    /// Ends a step: caches the blocks of completed prefills, sends one token to each emitting sequence and
    /// retires finished and abandoned ones. Returns the number of tokens generated.
    pub fn finish(&mut self, step: &Step, cache: &Mutex<PrefixCache>) -> usize {
        if !step.prefilled.is_empty() {
            let mut cache = cache.lock().unwrap();
            for &i in &step.prefilled {
                cache.insert(&self.running[i].sub.blocks);
            }
        }
        let mut retire = vec![false; self.running.len()];
        let mut generated = 0;
        for &i in &step.emitting {
            let seq = &mut self.running[i];
            generated += 1;
            seq.emitted += 1;
            if seq.sub.tx.send(step.end).is_err() || seq.emitted >= seq.sub.output_len {
                retire[i] = true;
            }
        }
        let mut i = 0;
        let mut freed = 0;
        self.running.retain(|seq| {
            i += 1;
            if retire[i - 1] {
                freed += seq.kv_blocks;
            }
            !retire[i - 1]
        });
        self.kv_free += freed;
        generated
    }
}

/// The scheduler task: steps while there is work, sleeps on the channel otherwise.
pub async fn run(
    params: BatchParams,
    block_size: usize,
    mut rx: UnboundedReceiver<Submission>,
    cache: Arc<Mutex<PrefixCache>>,
    counters: Arc<Counters>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut batcher = Batcher::new(params, block_size);
    let kv_gauge = |b: &Batcher| {
        let (used, total) = b.kv_blocks();
        counters.kv_blocks_used.store(used as u64, Relaxed);
        counters.kv_blocks_total.store(total as u64, Relaxed);
    };
    kv_gauge(&batcher);
    let mut clock: Option<Instant> = None;
    loop {
        if batcher.is_idle() {
            match rx.recv().await {
                Some(sub) => batcher.push(sub),
                None => return,
            }
        }
        while let Ok(sub) = rx.try_recv() {
            batcher.push(sub);
        }
        let step = batcher.plan(clock, &cache, &counters);
        counters.running.store(batcher.running() as u64, Relaxed);
        counters.waiting.store(batcher.waiting() as u64, Relaxed);
        kv_gauge(&batcher);
        let Some(step) = step else { continue };
        tokio::time::sleep_until(step.end.into()).await;
        let generated = batcher.finish(&step, &cache);
        counters.generated(generated);
        counters.running.store(batcher.running() as u64, Relaxed);
        kv_gauge(&batcher);
        clock = Some(step.end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc::unbounded_channel;

    const PARAMS: BatchParams = BatchParams {
        max_num_seqs: 2,
        max_num_batched_tokens: 100,
        prefill_tokens_per_s: 1000.0,
        decode_step: Duration::from_millis(10),
        decode_step_per_seq: Duration::from_millis(1),
        kv_cache_tokens: 1 << 20,
    };

    fn sub(
        arrival: Instant,
        prompt_len: usize,
        output_len: usize,
    ) -> (Submission, UnboundedReceiver<Instant>) {
        let (tx, rx) = unbounded_channel();
        let prompt: Vec<u32> = (0..prompt_len as u32).collect();
        let blocks = super::super::cache::block_hashes(&prompt, 4);
        (
            Submission {
                arrival,
                prompt_len,
                blocks,
                output_len,
                tx,
            },
            rx,
        )
    }

    fn fixture() -> (Batcher, Mutex<PrefixCache>, Counters) {
        (
            Batcher::new(PARAMS, 4),
            Mutex::new(PrefixCache::new(4, 1000)),
            Counters::default(),
        )
    }

    #[test]
    fn step_time_grows_with_sequences_and_prefill() {
        assert_eq!(PARAMS.step_duration(1, 0), Duration::from_millis(11));
        assert_eq!(PARAMS.step_duration(4, 0), Duration::from_millis(14));
        assert_eq!(PARAMS.step_duration(1, 50), Duration::from_millis(61));
    }

    #[test]
    fn prefill_is_chunked_by_the_token_budget_and_steps_are_back_to_back() {
        let (mut b, cache, counters) = fixture();
        let t0 = Instant::now();
        let (s, mut rx) = sub(t0, 150, 2);
        b.push(s);
        let step1 = b.plan(None, &cache, &counters).unwrap();
        assert_eq!((step1.start, step1.prefill_tokens), (t0, 100));
        assert_eq!(step1.end - step1.start, Duration::from_millis(111));
        b.finish(&step1, &cache);
        assert!(
            rx.try_recv().is_err(),
            "no token before the prefill completes"
        );
        let step2 = b.plan(Some(step1.end), &cache, &counters).unwrap();
        assert_eq!((step2.start, step2.prefill_tokens), (step1.end, 50));
        b.finish(&step2, &cache);
        assert_eq!(
            rx.try_recv().unwrap(),
            step2.end,
            "first token at the end of the prefill step"
        );
        let step3 = b.plan(Some(step2.end), &cache, &counters).unwrap();
        assert_eq!((step3.prefill_tokens, step3.seqs), (0, 1));
        b.finish(&step3, &cache);
        assert_eq!(rx.try_recv().unwrap(), step3.end);
        assert!(b.is_idle(), "retired after its last token");
        assert_eq!(
            counters
                .prompt_tokens
                .load(std::sync::atomic::Ordering::Relaxed),
            150
        );
    }

    #[test]
    fn requests_beyond_max_num_seqs_wait() {
        let (mut b, cache, counters) = fixture();
        let t0 = Instant::now();
        let mut rxs = Vec::new();
        for i in 0..3 {
            let (s, rx) = sub(t0, 8 + i, 3);
            b.push(s);
            rxs.push(rx);
        }
        let mut clock = None;
        let mut first_token = [None; 3];
        while !b.is_idle() {
            let step = b.plan(clock, &cache, &counters).unwrap();
            assert!(b.running() <= 2);
            b.finish(&step, &cache);
            for (rx, first) in rxs.iter_mut().zip(first_token.iter_mut()) {
                while let Ok(t) = rx.try_recv() {
                    first.get_or_insert(t);
                }
            }
            clock = Some(step.end);
        }
        let [a, bb, c] = first_token.map(Option::unwrap);
        assert_eq!(a, bb, "admitted together");
        assert!(
            c > a + Duration::from_millis(30),
            "the third waited for a slot"
        );
    }

    #[test]
    fn requests_wait_for_kv_blocks_and_free_them_when_done() {
        // Room for 10 blocks of 4 tokens: one 8 + 8 token sequence needs 4, so two fit and a third waits.
        let params = BatchParams {
            max_num_seqs: 8,
            kv_cache_tokens: 42,
            ..PARAMS
        };
        let (mut b, cache, counters) = (
            Batcher::new(params, 4),
            Mutex::new(PrefixCache::new(4, 0)),
            Counters::default(),
        );
        let t0 = Instant::now();
        let mut rxs = Vec::new();
        for i in 0..3 {
            let (s, rx) = sub(t0, 8 + i, 8);
            b.push(s);
            rxs.push(rx);
        }
        assert_eq!(b.kv_blocks(), (0, 10));
        let step = b.plan(None, &cache, &counters).unwrap();
        assert_eq!((b.running(), b.waiting()), (2, 1), "the third does not fit");
        assert_eq!(b.kv_blocks(), (9, 10), "4 + 5 blocks (8+8 and 9+8 tokens)");
        let mut clock = step.end;
        b.finish(&step, &cache);
        while b.waiting() == 1 {
            let step = b.plan(Some(clock), &cache, &counters).unwrap();
            b.finish(&step, &cache);
            clock = step.end;
        }
        assert_eq!(b.running(), 1, "admitted once both finished");
        assert_eq!(b.kv_blocks(), (5, 10));
        drop(rxs);
    }

    #[test]
    fn a_cached_prefix_shortens_the_prefill() {
        let (mut b, cache, counters) = fixture();
        let t0 = Instant::now();
        let (s, _rx1) = sub(t0, 41, 1);
        b.push(s);
        let cold = b.plan(None, &cache, &counters).unwrap();
        b.finish(&cold, &cache);
        let (s, _rx2) = sub(cold.end, 41, 1);
        b.push(s);
        let warm = b.plan(Some(cold.end), &cache, &counters).unwrap();
        assert_eq!(
            (cold.prefill_tokens, warm.prefill_tokens),
            (41, 1),
            "40 tokens = 10 full blocks hit"
        );
        assert!(warm.end - warm.start < cold.end - cold.start);
        assert_eq!(
            counters
                .cache_hits
                .load(std::sync::atomic::Ordering::Relaxed),
            40
        );
        assert_eq!(
            counters
                .cache_queries
                .load(std::sync::atomic::Ordering::Relaxed),
            82
        );
    }

    #[test]
    fn a_step_never_starts_before_its_newcomers_arrived_and_abandoned_requests_go() {
        let (mut b, cache, counters) = fixture();
        let t0 = Instant::now();
        let late = t0 + Duration::from_secs(1);
        let (s, rx) = sub(late, 4, 5);
        b.push(s);
        let step = b.plan(Some(t0), &cache, &counters).unwrap();
        assert_eq!(step.start, late);
        drop(rx);
        b.finish(&step, &cache);
        assert!(b.is_idle(), "a closed stream frees its slot");
        let (s, rx) = sub(t0, 4, 5);
        drop(rx);
        b.push(s);
        assert!(
            b.plan(Some(t0), &cache, &counters).is_none(),
            "a queued request whose client left is skipped"
        );
    }
}
