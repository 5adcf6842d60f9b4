//! The cut table: for every relation fork cut short or created since the map
//! began (WAL mode), the block number from which on its blocks still count as
//! changed for every start LSN.
//!
//! Why the map's own cut marks ([`crate::LsnMap::mark_cut`]) are not enough:
//! they answer for start LSNs before the cut. A chain of backups also needs
//! the cut *later*. A relation grows by all-zero blocks that no WAL record
//! names (bulk extension); where it grows back over a cut, those block
//! numbers held other data in backups older than the cut. Take a table of
//! 1,000 blocks in a FULL, cut to 12 before INC1, grown back to 56 blocks
//! after INC1 with 5 of them never WAL-logged: INC2 (since INC1's start) must
//! send those 5, or a restore takes them from the FULL. PostgreSQL's own
//! incremental backups avoid this with the file length each backup records;
//! pg_probackup's restore uses only the newest backup's length, so ptrack has
//! to report them.
//!
//! Each entry holds the fork and its *accounted length*: every block below it
//! is either unchanged since the cut or marked in the map when it appeared;
//! blocks at or past it are reported for every start LSN. A cut lowers it to
//! the cut's length; the follower's periodic accounting
//! ([`crate::LsnMap::account_growth`]) marks the blocks a fork grew by, with
//! an LSN read after it saw them, and raises it to the fork's length. So a
//! block that appeared after an earlier backup started is always reported to
//! a later one, and a block that existed before it is in that backup.
//!
//! Entries of forks that no longer exist are removed by the accounting (a
//! relation file's name is reused only with a new creation record, which makes
//! a new entry). When the table is full the map forgets everything before the
//! cut (see [`crate::LsnMap::record_cut`]).
//!
//! Concurrency: one process writes (the WAL follower), any process reads.
//! Every store is noted in the map's dirty bitmap ([`crate::dirty`]), with
//! the `SeqCst` ordering its protocol wants, so that a flush writes it.
//! Open addressing with linear probing; entries are never moved, and a
//! removed entry becomes a tombstone, so a reader's probe never stops before
//! an entry that exists. An entry is published by its key word, stored last
//! with release ordering.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::block::{Fork, RelFileKey};
use crate::dirty::DirtyRegions;

/// Words per entry: location (tablespace, database), relation with fork and
/// state, accounted length.
const ENTRY_WORDS: usize = 3;
/// One entry per this many map slots: 16,384 entries (384 kB) for a 64 MB map.
const SLOTS_PER_ENTRY: usize = 512;
const MIN_ENTRIES: usize = 64;
const MAX_ENTRIES: usize = 1 << 22;

const STATE_MASK: u64 = 0xff;
const EMPTY: u64 = 0;
const LIVE: u64 = 1;
const REMOVED: u64 = 2;

/// The table has no free entry for a new fork.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("the cut table is full ({capacity} relation forks)")]
pub struct CutTableFull {
    pub capacity: usize,
}

/// A view of a cut table in shared memory (see the module documentation).
#[derive(Clone, Copy, Debug)]
pub struct CutTable<'a> {
    words: &'a [AtomicU64],
    dirty: DirtyRegions<'a>,
    /// Index of the table's first word among the map's words, for `dirty`.
    first_word: usize,
}

/// One entry, as [`CutTable::entries`] yields it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CutEntry {
    pub index: usize,
    pub file: RelFileKey,
    pub accounted: u32,
}

fn location_word(file: &RelFileKey) -> u64 {
    (u64::from(file.tablespace) << 32) | u64::from(file.database)
}

/// The relation word without its state byte.
fn relation_word(file: &RelFileKey) -> u64 {
    (u64::from(file.relfilenode) << 32) | ((file.fork as u64) << 8)
}

fn decode(location: u64, relation: u64) -> Option<RelFileKey> {
    Some(RelFileKey {
        tablespace: (location >> 32) as u32,
        database: location as u32,
        relfilenode: (relation >> 32) as u32,
        fork: Fork::from_number(((relation >> 8) & 0xff) as i32)?,
    })
}

impl<'a> CutTable<'a> {
    /// Words of the table that goes with a map of `slot_count` slots.
    pub fn words_for(slot_count: usize) -> usize {
        (slot_count / SLOTS_PER_ENTRY).clamp(MIN_ENTRIES, MAX_ENTRIES) * ENTRY_WORDS
    }

    /// A view of `words` (all zero: an empty table), its stores not tracked.
    pub fn new(words: &'a [AtomicU64]) -> Self {
        Self::tracked(words, DirtyRegions::new(&[]), 0)
    }

    /// A view of `words`, the map's words from `first_word` on, whose stores
    /// are noted in `dirty`.
    pub fn tracked(words: &'a [AtomicU64], dirty: DirtyRegions<'a>, first_word: usize) -> Self {
        CutTable {
            words,
            dirty,
            first_word,
        }
    }

    /// Stores `value` into word `offset` of entry `index` and notes it dirty.
    fn store(&self, index: usize, offset: usize, value: u64) {
        let word = index * ENTRY_WORDS + offset;
        self.words[word].store(value, Ordering::SeqCst);
        self.dirty.note(self.first_word + word);
    }

    pub fn capacity(&self) -> usize {
        self.words.len() / ENTRY_WORDS
    }

    fn entry(&self, index: usize) -> &'a [AtomicU64] {
        &self.words[index * ENTRY_WORDS..(index + 1) * ENTRY_WORDS]
    }

    fn home(&self, file: &RelFileKey) -> usize {
        let capacity = self.capacity() as u128;
        ((u128::from(file.identity_hash()) * capacity) >> 64) as usize
    }

    /// The entry of `file`, if it has one.
    fn find(&self, file: &RelFileKey) -> Option<usize> {
        let capacity = self.capacity();
        let (location, relation) = (location_word(file), relation_word(file));
        let home = self.home(file);
        for step in 0..capacity {
            let index = (home + step) % capacity;
            let entry = self.entry(index);
            let key = entry[1].load(Ordering::Acquire);
            match key & STATE_MASK {
                EMPTY => return None,
                LIVE if key & !STATE_MASK == relation
                    && entry[0].load(Ordering::Relaxed) == location =>
                {
                    return Some(index)
                }
                _ => {}
            }
        }
        None
    }

    /// The block from which on `file` counts as changed whatever the start
    /// LSN, if it was cut or created since the map began.
    pub fn reported_from(&self, file: &RelFileKey) -> Option<u32> {
        let index = self.find(file)?;
        Some(self.entry(index)[2].load(Ordering::Acquire) as u32)
    }

    /// Records that `file` was cut to `length` blocks (0: created). Only the
    /// table's one writing process calls this.
    pub fn record(&self, file: &RelFileKey, length: u32) -> Result<(), CutTableFull> {
        let capacity = self.capacity();
        if let Some(index) = self.find(file) {
            let before = self.entry(index)[2].fetch_min(u64::from(length), Ordering::SeqCst);
            if before > u64::from(length) {
                self.dirty.note(self.first_word + index * ENTRY_WORDS + 2);
            }
            return Ok(());
        }
        let home = self.home(file);
        let free = (0..capacity)
            .map(|step| (home + step) % capacity)
            .find(|&index| self.entry(index)[1].load(Ordering::Relaxed) & STATE_MASK != LIVE)
            .ok_or(CutTableFull { capacity })?;
        self.store(free, 2, u64::from(length));
        self.store(free, 0, location_word(file));
        // Published last.
        self.store(free, 1, relation_word(file) | LIVE);
        Ok(())
    }

    /// Every live entry. Only the writing process may act on what it yields.
    pub fn entries(&self) -> impl Iterator<Item = CutEntry> + 'a {
        let table = *self;
        (0..table.capacity()).filter_map(move |index| {
            let entry = table.entry(index);
            let relation = entry[1].load(Ordering::Acquire);
            if relation & STATE_MASK != LIVE {
                return None;
            }
            let file = decode(entry[0].load(Ordering::Relaxed), relation & !STATE_MASK)?;
            Some(CutEntry {
                index,
                file,
                accounted: entry[2].load(Ordering::Relaxed) as u32,
            })
        })
    }

    /// Sets entry `index`'s accounted length. Release ordering: whoever reads
    /// the new length also sees the marks made before this call. Writer only.
    pub fn set_accounted(&self, index: usize, blocks: u32) {
        self.store(index, 2, u64::from(blocks));
    }

    /// Removes entry `index` (its fork no longer exists). Writer only.
    pub fn remove(&self, index: usize) {
        let relation = self.entry(index)[1].load(Ordering::Relaxed) & !STATE_MASK;
        self.store(index, 1, relation | REMOVED);
    }

    /// Empties the table. Only together with the map forgetting everything
    /// before now, which makes every query that may have seen the old entries
    /// fail its final coverage check. Writer only.
    pub fn clear(&self) {
        for (word, value) in self.words.iter().enumerate() {
            if value.swap(0, Ordering::SeqCst) != 0 {
                self.dirty.note(self.first_word + word);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fork(relfilenode: u32, fork: Fork) -> RelFileKey {
        RelFileKey {
            tablespace: 1663,
            database: 5,
            relfilenode,
            fork,
        }
    }

    fn words(entries: usize) -> Vec<AtomicU64> {
        (0..entries * ENTRY_WORDS)
            .map(|_| AtomicU64::new(0))
            .collect()
    }

    #[test]
    fn a_cut_keeps_the_lowest_length_per_fork() {
        let words = words(8);
        let table = CutTable::new(&words);
        assert_eq!(table.reported_from(&fork(1, Fork::Main)), None);
        table.record(&fork(1, Fork::Main), 40).unwrap();
        table.record(&fork(1, Fork::Main), 90).unwrap();
        assert_eq!(table.reported_from(&fork(1, Fork::Main)), Some(40));
        table.record(&fork(1, Fork::Main), 12).unwrap();
        assert_eq!(table.reported_from(&fork(1, Fork::Main)), Some(12));
        assert_eq!(
            table.reported_from(&fork(1, Fork::Init)),
            None,
            "another fork of the relation was not cut"
        );
        assert_eq!(table.reported_from(&fork(2, Fork::Main)), None);
        let mut other_database = fork(1, Fork::Main);
        other_database.database = 6;
        assert_eq!(table.reported_from(&other_database), None);
    }

    #[test]
    fn a_full_table_says_so_and_keeps_what_it_has() {
        let words = words(4);
        let table = CutTable::new(&words);
        for relation in 1..=4 {
            table.record(&fork(relation, Fork::Main), relation).unwrap();
        }
        assert_eq!(
            table.record(&fork(5, Fork::Main), 0),
            Err(CutTableFull { capacity: 4 })
        );
        // An existing fork still takes a lower cut.
        table.record(&fork(3, Fork::Main), 1).unwrap();
        for relation in 1..=4 {
            let expected = if relation == 3 { 1 } else { relation };
            assert_eq!(
                table.reported_from(&fork(relation, Fork::Main)),
                Some(expected)
            );
        }
    }

    #[test]
    fn a_removed_entry_is_free_again_and_hides_no_other() {
        let words = words(4);
        let table = CutTable::new(&words);
        for relation in 1..=4 {
            table.record(&fork(relation, Fork::Main), 7).unwrap();
        }
        let gone = table
            .entries()
            .find(|entry| entry.file == fork(2, Fork::Main))
            .unwrap();
        table.remove(gone.index);
        assert_eq!(table.reported_from(&fork(2, Fork::Main)), None);
        for relation in [1, 3, 4] {
            assert_eq!(
                table.reported_from(&fork(relation, Fork::Main)),
                Some(7),
                "a probe stopped at the removed entry"
            );
        }
        table.record(&fork(9, Fork::Main), 3).unwrap();
        assert_eq!(table.reported_from(&fork(9, Fork::Main)), Some(3));
        assert_eq!(table.entries().count(), 4);
    }

    #[test]
    fn entries_round_trip_their_keys_and_accounting() {
        let words = words(16);
        let table = CutTable::new(&words);
        let files = [
            fork(16_384, Fork::Main),
            fork(u32::MAX, Fork::Init),
            RelFileKey {
                tablespace: u32::MAX,
                database: u32::MAX,
                relfilenode: 1,
                fork: Fork::Main,
            },
        ];
        for (length, file) in files.iter().enumerate() {
            table.record(file, length as u32).unwrap();
        }
        let mut seen: Vec<_> = table.entries().map(|e| (e.file, e.accounted)).collect();
        seen.sort();
        let mut expected: Vec<_> = files
            .iter()
            .enumerate()
            .map(|(length, file)| (*file, length as u32))
            .collect();
        expected.sort();
        assert_eq!(seen, expected);
        let entry = table.entries().next().unwrap();
        table.set_accounted(entry.index, 500);
        assert_eq!(table.reported_from(&entry.file), Some(500));
        table.clear();
        assert_eq!(table.entries().count(), 0);
        assert!(files.iter().all(|f| table.reported_from(f).is_none()));
    }

    #[test]
    fn sizes_follow_the_map_within_bounds() {
        assert_eq!(CutTable::words_for(1), MIN_ENTRIES * ENTRY_WORDS);
        assert_eq!(CutTable::words_for(64 << 17), 16_384 * ENTRY_WORDS);
        assert_eq!(CutTable::words_for(usize::MAX), MAX_ENTRIES * ENTRY_WORDS);
        let empty = CutTable::new(&[]);
        assert_eq!(empty.reported_from(&fork(1, Fork::Main)), None);
    }
}
