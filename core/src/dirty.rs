//! Which parts of the map changed since the last flush: one bit per region of
//! [`REGION_WORDS`] words, so that a checkpoint writes only those
//! ([`crate::mapfile::delta`]).
//!
//! The protocol between a process that stores into a word and the flusher
//! is the one invariant here: **a store that the flusher's read of a region
//! missed leaves that region's bit set for the next flush.**
//!
//! * A writer stores into the word, then loads the region's bit and sets it
//!   if it is clear ([`DirtyRegions::note`]).
//! * The flusher clears a bitmap word ([`DirtyRegions::take_word`]), then
//!   reads the regions whose bits it took.
//!
//! Every one of these four accesses is `SeqCst`, so they fall in one total
//! order. If the writer's bit load comes before the flusher's clear, its
//! store comes before too, and the flusher's read after the clear sees it.
//! Otherwise the load sees the clear (or a later set) and the bit is set for
//! the next flush. On x86 this costs no fence: the slot raise is already a
//! locked instruction, and `SeqCst` loads are plain loads.

use std::sync::atomic::{AtomicU64, Ordering};

/// Words per region: one cache line. Small regions keep a checkpoint's
/// write close to what changed (a random mark dirties one line, 64 bytes);
/// the bitmap is then 1/512 of the map.
pub const REGION_WORDS: usize = 8;
const REGIONS_PER_BIT_WORD: usize = 64;

/// A view of the dirty bitmap of a map's words. An empty bitmap tracks
/// nothing: every note is a no-op (a map that is only ever read).
#[derive(Clone, Copy, Debug)]
pub struct DirtyRegions<'a> {
    bits: &'a [AtomicU64],
}

impl<'a> DirtyRegions<'a> {
    /// Bitmap words for `word_count` map words.
    pub fn words_for(word_count: usize) -> usize {
        word_count
            .div_ceil(REGION_WORDS)
            .div_ceil(REGIONS_PER_BIT_WORD)
    }

    pub fn new(bits: &'a [AtomicU64]) -> Self {
        DirtyRegions { bits }
    }

    /// Records that the map word `word_index` was just stored into (see the
    /// module documentation for the ordering). The load first keeps the
    /// common case, a region already dirty, free of a locked instruction.
    #[inline(always)]
    pub fn note(&self, word_index: usize) {
        let region = word_index / REGION_WORDS;
        if let Some(bits) = self.bits.get(region / REGIONS_PER_BIT_WORD) {
            let bit = 1u64 << (region % REGIONS_PER_BIT_WORD);
            if bits.load(Ordering::SeqCst) & bit == 0 {
                bits.fetch_or(bit, Ordering::SeqCst);
            }
        }
    }

    /// Number of bitmap words.
    pub fn len(&self) -> usize {
        self.bits.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bits.is_empty()
    }

    /// Takes bitmap word `index`, leaving it clear: the regions whose bits it
    /// returns must be read after this call. A word seen clear is left
    /// alone: a writer's bit load that the look preceded sees it clear too
    /// and sets it, for the next flush. Most words of a big map are clear,
    /// and a look costs no locked instruction.
    pub fn take_word(&self, index: usize) -> u64 {
        let bits = &self.bits[index];
        if bits.load(Ordering::SeqCst) == 0 {
            return 0;
        }
        bits.swap(0, Ordering::SeqCst)
    }

    /// Dirty regions counted without taking them: to size a flush before
    /// choosing how to write it.
    pub fn count(&self) -> u64 {
        self.bits
            .iter()
            .map(|bits| u64::from(bits.load(Ordering::Relaxed).count_ones()))
            .sum()
    }

    /// Clears every bit, before a flush that reads every word anyway.
    pub fn take_all(&self) {
        for index in 0..self.bits.len() {
            self.take_word(index);
        }
    }

    /// Takes every dirty bit and calls `run(first_word, word_count)` for each
    /// run of consecutive dirty regions, in order, clipped to `word_count`
    /// words. Each bitmap word is taken before its regions are reported, so
    /// `run` reads them after the clear, as the protocol wants.
    pub fn take_runs(
        &self,
        word_count: usize,
        mut run: impl FnMut(usize, usize) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let mut open: Option<(usize, usize)> = None;
        for index in 0..self.bits.len() {
            let mut bits = self.take_word(index);
            while bits != 0 {
                let region = index * REGIONS_PER_BIT_WORD + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let start = region * REGION_WORDS;
                if start >= word_count {
                    break;
                }
                let end = (start + REGION_WORDS).min(word_count);
                open = match open {
                    Some((first, last)) if last == start => Some((first, end)),
                    Some((first, last)) => {
                        run(first, last - first)?;
                        Some((start, end))
                    }
                    None => Some((start, end)),
                };
            }
        }
        if let Some((first, last)) = open {
            run(first, last - first)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bitmap(word_count: usize) -> Vec<AtomicU64> {
        (0..DirtyRegions::words_for(word_count))
            .map(|_| AtomicU64::new(0))
            .collect()
    }

    fn runs(dirty: &DirtyRegions<'_>, word_count: usize) -> Vec<(usize, usize)> {
        let mut seen = Vec::new();
        dirty
            .take_runs(word_count, |first, count| {
                seen.push((first, count));
                Ok(())
            })
            .unwrap();
        seen
    }

    #[test]
    fn notes_come_back_as_merged_runs_once() {
        let word_count = 10_000;
        let bits = bitmap(word_count);
        let dirty = DirtyRegions::new(&bits);
        for word in [0, 7, 8, 100, 511, 512, 513, 9_999] {
            dirty.note(word);
        }
        assert_eq!(dirty.count(), 6);
        assert_eq!(
            runs(&dirty, word_count),
            vec![(0, 16), (96, 8), (504, 16), (9_992, 8)]
        );
        assert_eq!(dirty.count(), 0);
        assert!(runs(&dirty, word_count).is_empty(), "taken bits stay taken");
    }

    #[test]
    fn the_last_region_is_clipped_to_the_words() {
        let word_count = 13;
        let bits = bitmap(word_count);
        let dirty = DirtyRegions::new(&bits);
        dirty.note(12);
        assert_eq!(runs(&dirty, word_count), vec![(8, 5)]);
    }

    #[test]
    fn runs_cross_bitmap_words() {
        let word_count = REGION_WORDS * REGIONS_PER_BIT_WORD * 3;
        let bits = bitmap(word_count);
        let dirty = DirtyRegions::new(&bits);
        for region in 60..140 {
            dirty.note(region * REGION_WORDS + 3);
        }
        assert_eq!(
            runs(&dirty, word_count),
            vec![(60 * REGION_WORDS, 80 * REGION_WORDS)]
        );
    }

    #[test]
    fn an_empty_bitmap_tracks_nothing() {
        let dirty = DirtyRegions::new(&[]);
        dirty.note(5);
        assert_eq!(dirty.count(), 0);
        assert!(runs(&dirty, 100).is_empty());
    }

    /// Writers store and note while a flusher takes runs and copies what
    /// they cover: after the writers stop and one last flush, the copy
    /// equals the words. A store missed by one flush's read must be caught by
    /// a later one.
    #[test]
    fn concurrent_stores_are_never_lost_between_flushes() {
        let word_count = 4096;
        let words: Vec<AtomicU64> = (0..word_count).map(|_| AtomicU64::new(0)).collect();
        let bits = bitmap(word_count);
        let dirty = DirtyRegions::new(&bits);
        let mut copy = vec![0u64; word_count];
        let stop = std::sync::atomic::AtomicBool::new(false);
        let flush = |copy: &mut Vec<u64>| {
            dirty
                .take_runs(word_count, |first, count| {
                    for i in first..first + count {
                        copy[i] = words[i].load(Ordering::SeqCst);
                    }
                    Ok(())
                })
                .unwrap();
        };
        std::thread::scope(|scope| {
            for writer in 0..2u64 {
                let (words, stop) = (&words, &stop);
                scope.spawn(move || {
                    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ writer;
                    let mut value = 1;
                    while !stop.load(Ordering::Relaxed) {
                        state = state
                            .wrapping_mul(6_364_136_223_846_793_005)
                            .wrapping_add(1);
                        let index = (state >> 33) as usize % word_count;
                        value += 1;
                        words[index].fetch_max(value, Ordering::SeqCst);
                        dirty.note(index);
                    }
                });
            }
            for _ in 0..2_000 {
                flush(&mut copy);
            }
            stop.store(true, Ordering::Relaxed);
        });
        flush(&mut copy);
        let now: Vec<u64> = words.iter().map(|w| w.load(Ordering::SeqCst)).collect();
        assert_eq!(copy, now);
    }
}
