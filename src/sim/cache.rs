//! The prefix cache: block hashes chained over the prompt, with least-recently-used eviction.
//!
//! A prompt is cut into full blocks of `block_size` tokens; block `i`'s hash covers its tokens and the hash
//! of block `i - 1`, so a block hits only if the whole prefix up to it is the same. As in vLLM, at most
//! `prompt_len - 1` tokens can come from the cache (the last prompt token is always computed, it yields the
//! first output token), and only full blocks count. Blocks enter the cache when their prefill completes.
//! Capacity is counted in blocks; `0` disables caching. Eviction is least recently used, and a prompt's
//! leading blocks are touched last so that a shared prefix outlives the tails that hang off it. The cache
//! does not model memory held by running requests.

use std::collections::{BTreeMap, HashMap};

use super::tokens::mix;

/// The chained hashes of the prompt's full blocks.
pub fn block_hashes(prompt: &[u32], block_size: usize) -> Vec<u64> {
    let mut parent = 0x0b10_c4a5_u64;
    prompt
        .chunks_exact(block_size)
        .map(|block| {
            parent = block
                .iter()
                .fold(mix(parent), |h, &t| mix(h ^ u64::from(t)));
            parent
        })
        .collect()
}

/// How many prompt tokens the cache may serve at most: full blocks within the first `prompt_len - 1`.
pub fn cacheable_blocks(prompt_len: usize, block_size: usize) -> usize {
    prompt_len.saturating_sub(1) / block_size
}

#[derive(Debug)]
pub struct PrefixCache {
    block_size: usize,
    capacity: usize,
    /// hash → the tick of its last use
    last_use: HashMap<u64, u64>,
    /// tick → hash, oldest first
    by_age: BTreeMap<u64, u64>,
    tick: u64,
}

impl PrefixCache {
    pub fn new(block_size: usize, capacity: usize) -> Self {
        PrefixCache {
            block_size,
            capacity,
            last_use: HashMap::new(),
            by_age: BTreeMap::new(),
            tick: 0,
        }
    }

    /// The number of prompt tokens served from the cache: the leading run of hit blocks, within the
    /// cacheable part of the prompt. Hit blocks count as used now.
    pub fn lookup(&mut self, hashes: &[u64], prompt_len: usize) -> usize {
        let limit = cacheable_blocks(prompt_len, self.block_size).min(hashes.len());
        let hits = hashes[..limit]
            .iter()
            .take_while(|h| self.last_use.contains_key(h))
            .count();
        for &h in hashes[..hits].iter().rev() {
            self.touch(h);
        }
        hits * self.block_size
    }

    /// Adds the prompt's blocks (after its prefill), evicting the least recently used beyond capacity.
    pub fn insert(&mut self, hashes: &[u64]) {
        if self.capacity == 0 {
            return;
        }
        for &h in hashes.iter().rev() {
            self.touch(h);
        }
        while self.last_use.len() > self.capacity {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            self.last_use.remove(&oldest);
        }
    }

    pub fn reset(&mut self) {
        self.last_use.clear();
        self.by_age.clear();
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.last_use.len()
    }

    fn touch(&mut self, h: u64) {
        self.tick += 1;
        if let Some(old) = self.last_use.insert(h, self.tick) {
            self.by_age.remove(&old);
        }
        self.by_age.insert(self.tick, h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(start: u32, len: u32) -> Vec<u32> {
        (start..start + len).collect()
    }

    #[test]
    fn hashes_chain_over_the_prefix() {
        let a = block_hashes(&prompt(0, 40), 16);
        assert_eq!(a.len(), 2, "only full blocks");
        let mut b_prompt = prompt(0, 40);
        b_prompt[3] = 999; // differs in block 0: no later block can match either
        let b = block_hashes(&b_prompt, 16);
        assert_ne!(a[0], b[0]);
        assert_ne!(a[1], b[1]);
        let mut c_prompt = prompt(0, 40);
        c_prompt[20] = 999; // differs in block 1 only
        let c = block_hashes(&c_prompt, 16);
        assert_eq!(a[0], c[0]);
        assert_ne!(a[1], c[1]);
    }

    #[test]
    fn repeat_hits_full_blocks_but_never_the_last_token() {
        let mut cache = PrefixCache::new(16, 100);
        let p = prompt(0, 64);
        let h = block_hashes(&p, 16);
        assert_eq!(cache.lookup(&h, p.len()), 0);
        cache.insert(&h);
        // 64 tokens: at most 63 cacheable → 3 full blocks.
        assert_eq!(cache.lookup(&h, p.len()), 48);
        let longer = prompt(0, 100);
        assert_eq!(
            cache.lookup(&block_hashes(&longer, 16), 100),
            64,
            "a shared prefix hits"
        );
        cache.reset();
        assert_eq!(cache.lookup(&h, p.len()), 0);
    }

    #[test]
    fn evicts_least_recently_used_and_keeps_shared_prefixes() {
        let mut cache = PrefixCache::new(4, 4);
        let a = block_hashes(&prompt(0, 9), 4); // 2 blocks
        let b = block_hashes(&prompt(100, 9), 4); // 2 blocks
        cache.insert(&a);
        cache.insert(&b);
        assert_eq!(cache.len(), 4);
        assert_eq!(cache.lookup(&a, 9), 8); // a is now the most recent
        let c = block_hashes(&prompt(200, 9), 4);
        cache.insert(&c); // evicts b's two blocks
        assert_eq!(cache.len(), 4);
        assert_eq!(cache.lookup(&b, 9), 0);
        assert_eq!(cache.lookup(&a, 9), 8);
        // The leading block is touched last, so a tail goes before its prefix.
        cache.insert(&block_hashes(&prompt(300, 5), 4)); // one block: evicts c's tail first
        assert_eq!(cache.lookup(&c, 9), 4);
    }

    #[test]
    fn zero_capacity_disables_caching() {
        let mut cache = PrefixCache::new(16, 0);
        let h = block_hashes(&prompt(0, 64), 16);
        cache.insert(&h);
        assert_eq!(cache.lookup(&h, 64), 0);
    }
}
