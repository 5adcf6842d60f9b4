//! The LSN map: a fixed table of 64-bit LSNs shared by every process.
//!
//! Marking a block raises both of its slots to the marking LSN with an atomic
//! max; nothing ever lowers a slot. A block counts as changed since `L` when
//! both of its slots are `>= L`. Other blocks sharing a slot can only raise it,
//! so collisions cause false positives and never false negatives.
//!
//! The map is complete only from its init LSN on: a block changed before the map
//! existed left no mark. [`LsnMap::changed_since`] therefore reports every block
//! for an `L` the map cannot vouch for.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::block::{slot_pair, BlockHasher, BlockKey, RelFileKey};
use crate::cuts::{CutTable, CutTableFull};
use crate::dirty::DirtyRegions;
use crate::lsn::Lsn;

/// Levels of dyadic ranges over 32-bit block numbers, the whole space last.
pub(crate) const CUT_LEVELS: u32 = 32;
/// Range lookups one cut search may make: a true cut's chain takes 33; the
/// rest is for ranges marked by collisions.
const CUT_SEARCH_BUDGET: u32 = 256;

/// The part of the shared map that is not slots.
///
/// It sits at the start of the shared memory region, followed by the slots and
/// then the cut table ([`crate::cuts`]), together the map's words, and then
/// the dirty bitmap of those words ([`crate::dirty`]).
#[repr(C, align(64))]
#[derive(Debug, Default)]
pub struct MapState {
    /// The LSN from which on every block write is marked; 0 until the first mark
    /// (or the first question) after a new map was started.
    init_lsn: AtomicU64,
    /// The checkpoint REDO LSN of the last successful flush to disk, 0 if none.
    flushed_redo: AtomicU64,
    /// The lowest init LSN a new map may take: LSNs up to it may have been
    /// used before the map was started, possibly on another timeline (after
    /// pg_rewind, replay starts below LSNs the old primary had reached).
    init_floor: AtomicU64,
    /// WAL mode: every record ending at or before this LSN has been marked.
    /// 0 in hook mode and before the WAL follower starts.
    wal_tracked_through: AtomicU64,
    /// WAL mode: the WAL end the follower last read up to; every record that
    /// ends at or before it has been marked.
    wal_read_to: AtomicU64,
    /// Hook mode: every write of a free-space-map or visibility-map block
    /// since this LSN has been marked, so those forks are answered block by
    /// block for start LSNs at or after it; 0 (as in a live file of an older
    /// version, whose padding this was): reported in full. See
    /// [`LsnMap::track_side_forks_from`].
    side_forks_tracked_from: AtomicU64,
    /// The nonce of the full map file the delta records continue
    /// ([`crate::mapfile::delta`]); 0: the next flush must write a full map
    /// (after any start, and after a failed flush, whose taken dirty bits
    /// were not written). Written by the flushing process only.
    delta_base_nonce: AtomicU64,
    /// Bytes of valid records after that full part.
    delta_len: AtomicU64,
}

// The live file holds a `MapState` of this size (its layout is versioned by
// `crate::live`'s LIVE_VERSION): a field added within it takes padding an
// older version left zero, which must mean what zero meant then.
const _: () = assert!(std::mem::size_of::<MapState>() == 64);

/// A view of a map: its state, slots and cut table, wherever they live.
#[derive(Clone, Copy, Debug)]
pub struct LsnMap<'a> {
    state: &'a MapState,
    /// The slots followed by the cut table's words, as the map file stores them.
    words: &'a [AtomicU64],
    slots: &'a [AtomicU64],
    cuts: CutTable<'a>,
    dirty: DirtyRegions<'a>,
}

/// Raises `slot` to at least `lsn`; whether it stored.
///
/// The plain load first skips the locked instruction when another write already
/// raised the slot (and noted its region dirty). The ordering publishes the
/// mark before anything the marking process does afterwards, such as ending
/// the buffer I/O that the checkpointer waits for before it flushes the map;
/// `SeqCst` as [`crate::dirty`]'s protocol wants, which on x86 is the same
/// locked instruction.
#[inline(always)]
fn raise(slot: &AtomicU64, lsn: u64) -> bool {
    let mut current = slot.load(Ordering::Relaxed);
    while current < lsn {
        match slot.compare_exchange_weak(current, lsn, Ordering::SeqCst, Ordering::Relaxed) {
            Ok(_) => return true,
            Err(actual) => current = actual,
        }
    }
    false
}

impl<'a> LsnMap<'a> {
    /// A view of `words` ([`LsnMap::word_count`]`(slot_count)` of them)
    /// governed by `state`, with their dirty bitmap `dirty_bits`
    /// ([`DirtyRegions::words_for`] words, or none for a map that is only
    /// read). There must be at least one slot.
    pub fn over_words(
        state: &'a MapState,
        words: &'a [AtomicU64],
        dirty_bits: &'a [AtomicU64],
        slot_count: usize,
    ) -> Option<Self> {
        if slot_count == 0
            || words.len() != Self::word_count(slot_count)
            || !(dirty_bits.is_empty() || dirty_bits.len() == DirtyRegions::words_for(words.len()))
        {
            return None;
        }
        let (slots, cuts) = words.split_at(slot_count);
        let dirty = DirtyRegions::new(dirty_bits);
        Some(LsnMap {
            state,
            words,
            slots,
            cuts: CutTable::tracked(cuts, dirty, slot_count),
            dirty,
        })
    }

    /// Words of a map of `slot_count` slots: the slots and the cut table.
    pub fn word_count(slot_count: usize) -> usize {
        slot_count + CutTable::words_for(slot_count)
    }

    /// Bytes of shared memory a map of `slot_count` slots occupies.
    pub fn region_size(slot_count: usize) -> usize {
        let words = Self::word_count(slot_count);
        std::mem::size_of::<MapState>()
            + (words + DirtyRegions::words_for(words)) * std::mem::size_of::<AtomicU64>()
    }

    /// A view of a region laid out as [`MapState`] followed by the words of a
    /// map of `slot_count` slots and their dirty bitmap.
    ///
    /// # Safety
    /// `region` must point to [`LsnMap::region_size`]`(slot_count)` bytes, aligned
    /// for `MapState`, that stay mapped for `'a` and are only ever accessed
    /// through atomics (all-zero bytes are a valid empty map).
    pub unsafe fn from_region(region: *mut u8, slot_count: usize) -> Option<Self> {
        if region.is_null() || slot_count == 0 {
            return None;
        }
        // SAFETY: the caller guarantees size, alignment, lifetime and atomic-only
        // access; `MapState` is `repr(C)` and the slots start right after it, at a
        // multiple of 64 bytes, so they are aligned for `AtomicU64`; the bitmap
        // follows the words, inside `region_size`.
        unsafe {
            let state = &*(region as *const MapState);
            let first_word = region.add(std::mem::size_of::<MapState>()) as *const AtomicU64;
            let word_count = Self::word_count(slot_count);
            let words = std::slice::from_raw_parts(first_word, word_count);
            let bits = std::slice::from_raw_parts(
                first_word.add(word_count),
                DirtyRegions::words_for(word_count),
            );
            Self::over_words(state, words, bits, slot_count)
        }
    }

    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    pub fn slots(&self) -> &'a [AtomicU64] {
        self.slots
    }

    /// The slots and then the cut table: what the map file stores.
    pub fn words(&self) -> &'a [AtomicU64] {
        self.words
    }

    pub fn cut_table(&self) -> CutTable<'a> {
        self.cuts
    }

    /// The regions of the words stored into since the last flush took them.
    pub fn dirty_regions(&self) -> DirtyRegions<'a> {
        self.dirty
    }

    /// The delta records' base and length, as the last flush left them: `None`
    /// when the next flush must write a full map.
    pub fn delta_position(&self) -> Option<(u64, u64)> {
        let nonce = self.state.delta_base_nonce.load(Ordering::Acquire);
        (nonce != 0).then(|| (nonce, self.state.delta_len.load(Ordering::Acquire)))
    }

    /// After a flush: the delta records continue the base `nonce` with `len`
    /// bytes of records; `None` makes the next flush write a full map.
    pub fn set_delta_position(&self, position: Option<(u64, u64)>) {
        let (nonce, len) = position.unwrap_or((0, 0));
        self.state.delta_len.store(len, Ordering::Release);
        self.state.delta_base_nonce.store(nonce, Ordering::Release);
    }

    /// Marks `key` as written at `lsn`. Lock-free, allocation-free and panic-free:
    /// it runs inside PostgreSQL's critical sections.
    #[inline]
    pub fn mark(&self, key: &BlockKey, lsn: Lsn) {
        self.raise_slots(key.hash(), lsn);
        if self.state.init_lsn.load(Ordering::Relaxed) == 0 {
            self.start_tracking_at(lsn);
        }
    }

    /// Makes `lsn` the init LSN if tracking has not started yet, and returns the
    /// init LSN in force. Every write from now on is marked with an LSN read
    /// after this call, so the map is complete from here.
    pub fn start_tracking_at(&self, lsn: Lsn) -> Lsn {
        if !lsn.is_valid() {
            return self.init_lsn();
        }
        let lsn = Lsn(lsn.0.max(self.state.init_floor.load(Ordering::Acquire)));
        match self
            .state
            .init_lsn
            .compare_exchange(0, lsn.0, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => lsn,
            Err(existing) => Lsn(existing),
        }
    }

    /// The LSN from which on the map is complete; `Lsn::INVALID` if not started.
    pub fn init_lsn(&self) -> Lsn {
        Lsn(self.state.init_lsn.load(Ordering::Acquire))
    }

    /// Declares everything before `lsn` unknown, for when marks may have been
    /// lost (a directory that could not be read, say). Never lowers the init LSN.
    pub fn forget_before(&self, lsn: Lsn) {
        self.state.init_lsn.fetch_max(lsn.0, Ordering::AcqRel);
    }

    /// Whether the map can answer for changes since `since`: only from its init
    /// LSN on. For earlier LSNs every block must be reported.
    pub fn covers(&self, since: Lsn) -> bool {
        let init = self.init_lsn();
        init.is_valid() && since >= init
    }

    /// Hook mode: from `lsn` on, the map holds a mark of every write of every
    /// fork, the free space map and visibility map included, and answers for
    /// them block by block (a no-op if an LSN is already set). Only true where
    /// no mark since `lsn` can have been lost: the caller passes the REDO of a
    /// checkpoint (not a restartpoint) completed since the server processes
    /// last started. Every LSN a backup took before a crash is a durable one,
    /// so below that REDO; a write whose mark a crash lost happened before the
    /// restart, so before any backup that starts at or after it.
    pub fn track_side_forks_from(&self, lsn: Lsn) {
        let _ = self.state.side_forks_tracked_from.compare_exchange(
            0,
            lsn.0,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// Back to reporting the free space map and visibility map in full, until
    /// [`LsnMap::track_side_forks_from`]: after a crash, which may have lost
    /// marks of theirs, and whenever the map is loaded from its file or reset.
    pub fn forget_side_forks(&self) {
        self.state
            .side_forks_tracked_from
            .store(0, Ordering::Release);
    }

    pub fn side_forks_tracked_from(&self) -> Lsn {
        Lsn(self.state.side_forks_tracked_from.load(Ordering::Acquire))
    }

    fn covers_side_forks(&self, since: Lsn) -> bool {
        let from = self.side_forks_tracked_from();
        from.is_valid() && since >= from
    }

    /// Whether `key` may have been written at or after `since`.
    #[inline]
    pub fn changed_since(&self, key: &BlockKey, since: Lsn) -> bool {
        self.file_query(&key.file, since).changed(key.block)
    }

    /// Both slots of `hash` are at least `since`; the second is loaded only
    /// when the first passes, which is rare when few blocks changed.
    #[inline(always)]
    fn slots_reach(&self, hash: u64, since: u64) -> bool {
        let (first, second) = slot_pair(hash, self.slots.len());
        let reaches = |index: usize| {
            self.slots
                .get(index)
                .is_none_or(|slot| slot.load(Ordering::Relaxed) >= since)
        };
        reaches(first) && reaches(second)
    }

    /// A question about many blocks of one relation fork since one LSN, with
    /// the per-file work done once.
    pub fn file_query(&self, file: &RelFileKey, since: Lsn) -> FileQuery<'a> {
        let everything =
            !self.covers(since) || (file.fork.not_wal_logged() && !self.covers_side_forks(since));
        let hasher = file.hasher();
        let cut_from = if everything {
            None
        } else {
            let cut_since = self.lowest_cut_since(&hasher, since.0);
            let cut_ever = self.cuts.reported_from(file).map(u64::from);
            cut_since.into_iter().chain(cut_ever).min()
        };
        FileQuery {
            map: *self,
            hasher,
            since: since.0,
            everything,
            cut_from: cut_from.unwrap_or(u64::MAX),
        }
    }

    /// Records that `file` was cut to `length` blocks (or created, length 0)
    /// at `lsn`: from then on every block at or past `length` counts as
    /// changed, whatever the block marks say.
    ///
    /// For WAL mode: a relation grows by all-zero blocks that no WAL record
    /// names, and where it grows back over a cut those block numbers held
    /// other data in an earlier backup. PostgreSQL's incremental backup sends
    /// everything past a relation's truncation point for the same reason.
    ///
    /// The cut is marked in every dyadic range of block numbers holding
    /// `length` (33 keys), so [`LsnMap::file_query`] finds the lowest cut since
    /// an LSN with one descent of at most 33 lookups.
    pub fn mark_cut(&self, file: &RelFileKey, length: u32, lsn: Lsn) {
        let hasher = file.hasher();
        for level in 0..=CUT_LEVELS {
            let hash = hasher.cut_range_hash(level, u64::from(length) >> level);
            self.raise_slots(hash, lsn);
        }
    }

    /// WAL mode: [`LsnMap::mark_cut`], and the cut recorded in the cut table so
    /// that it counts for every later start LSN too ([`crate::cuts`]). The
    /// table's one writer (the WAL follower) calls this.
    ///
    /// When the table is full, the map forgets everything up to the cut and
    /// empties the table: no backup chain that starts after this cut needs an
    /// earlier cut, and the chains that started before it need a new full
    /// backup. The error says so, for the log.
    pub fn record_cut(&self, file: &RelFileKey, length: u32, lsn: Lsn) -> Result<(), CutTableFull> {
        self.mark_cut(file, length, lsn);
        // WAL mode reports these forks in full.
        if file.fork.not_wal_logged() {
            return Ok(());
        }
        self.cuts.record(file, length).inspect_err(|_| {
            self.forget_before(Lsn(lsn.0.saturating_add(1)));
            self.cuts.clear();
        })
    }

    /// WAL mode, from time to time in the cut table's writer: marks the blocks
    /// each fork of the table grew by since it was last accounted for, and
    /// removes the entries of forks that no longer exist.
    ///
    /// `blocks_of(file)` is the fork's length in blocks now (`None`: it does
    /// not exist); `now()` the current WAL position, read after that length:
    /// a backup that starts after it has every block the length counted, so
    /// marks with it are exact for every later start LSN. An error leaves the
    /// entry as it was (its blocks past the accounted length stay reported).
    pub fn account_growth(
        &self,
        mut blocks_of: impl FnMut(&RelFileKey) -> std::io::Result<Option<u32>>,
        mut now: impl FnMut() -> Lsn,
    ) -> GrowthAccounting {
        let mut accounting = GrowthAccounting::default();
        for entry in self.cuts.entries() {
            accounting.forks += 1;
            match blocks_of(&entry.file) {
                Ok(None) => {
                    self.cuts.remove(entry.index);
                    accounting.removed += 1;
                }
                Ok(Some(blocks)) => {
                    if blocks > entry.accounted {
                        let lsn = now();
                        for block in entry.accounted..blocks {
                            self.mark(&entry.file.block(block), lsn);
                        }
                        accounting.blocks_marked += u64::from(blocks - entry.accounted);
                    }
                    if blocks != entry.accounted {
                        self.cuts.set_accounted(entry.index, blocks);
                    }
                }
                Err(_) => accounting.unreadable += 1,
            }
        }
        accounting
    }

    /// The lowest length a fork was cut to at or after `since`, if any.
    ///
    /// A true cut marks its range at every level, so it shows as a chain of
    /// marked ranges from the top down to its block; a range marked only by a
    /// collision has no such chain under it. The search goes depth first,
    /// lower halves first, and follows only marked ranges: the first complete
    /// chain is the lowest cut. Collisions make it look into a few more
    /// ranges and, past a budget of lookups, stop and answer with the start
    /// of the range it is in — below every cut not yet looked at, so only more
    /// is reported.
    fn lowest_cut_since(&self, hasher: &BlockHasher, since: u64) -> Option<u64> {
        let mut budget = CUT_SEARCH_BUDGET;
        self.lowest_cut_in(hasher, since, CUT_LEVELS, 0, &mut budget)
    }

    fn lowest_cut_in(
        &self,
        hasher: &BlockHasher,
        since: u64,
        level: u32,
        index: u64,
        budget: &mut u32,
    ) -> Option<u64> {
        if *budget == 0 {
            return Some(index << level);
        }
        *budget -= 1;
        if !self.slots_reach(hasher.cut_range_hash(level, index), since) {
            return None;
        }
        if level == 0 {
            return Some(index);
        }
        self.lowest_cut_in(hasher, since, level - 1, index * 2, budget)
            .or_else(|| self.lowest_cut_in(hasher, since, level - 1, index * 2 + 1, budget))
    }

    /// `slot_pair` returns indexes below `slots.len()`; `get` keeps this path
    /// free of a bounds-check panic all the same.
    #[inline(always)]
    fn raise_slots(&self, hash: u64, lsn: Lsn) {
        let (first, second) = slot_pair(hash, self.slots.len());
        if let (Some(first_slot), Some(second_slot)) =
            (self.slots.get(first), self.slots.get(second))
        {
            if raise(first_slot, lsn.0) {
                self.dirty.note(first);
            }
            if raise(second_slot, lsn.0) {
                self.dirty.note(second);
            }
        }
    }

    /// Replaces every word (slots and cut table) and the init LSN, for loading
    /// a map from disk. Only for a map no other process is using yet.
    pub fn load(&self, init_lsn: Lsn, words: impl IntoIterator<Item = u64>) {
        for (slot, value) in self.words.iter().zip(words) {
            slot.store(value, Ordering::Relaxed);
        }
        self.state.init_lsn.store(init_lsn.0, Ordering::Release);
        self.forget_side_forks();
    }

    /// Clears every slot and the init LSN: a new, empty map.
    pub fn reset(&self) {
        self.load(Lsn::INVALID, std::iter::repeat(0));
        self.reset_state();
    }

    /// Clears the state but leaves the words, for a map whose every word is
    /// about to be replaced by [`LsnMap::load`] (a gigabyte not written twice).
    pub fn reset_state(&self) {
        self.state.init_lsn.store(0, Ordering::Release);
        self.forget_side_forks();
        self.state.flushed_redo.store(0, Ordering::Release);
        self.state.init_floor.store(0, Ordering::Release);
        self.state.wal_tracked_through.store(0, Ordering::Release);
        self.state.wal_read_to.store(0, Ordering::Release);
        self.set_delta_position(None);
    }

    /// A new map's init LSN will be at least `lowest`: LSNs below it may have
    /// been used before the map was started (see `crate::startup`).
    pub fn set_init_at_least(&self, lowest: Lsn) {
        self.state.init_floor.fetch_max(lowest.0, Ordering::AcqRel);
    }

    pub fn flushed_redo(&self) -> Lsn {
        Lsn(self.state.flushed_redo.load(Ordering::Acquire))
    }

    pub fn set_flushed_redo(&self, redo: Lsn) {
        self.state.flushed_redo.store(redo.0, Ordering::Release);
    }

    /// WAL mode: how far the WAL has been read into the map.
    pub fn wal_tracked_through(&self) -> Lsn {
        Lsn(self.state.wal_tracked_through.load(Ordering::Acquire))
    }

    /// Release ordering: the marks of every record up to `lsn` are visible to
    /// whoever reads the new position.
    pub fn set_wal_tracked_through(&self, lsn: Lsn) {
        self.state
            .wal_tracked_through
            .store(lsn.0, Ordering::Release);
    }

    /// WAL mode: the WAL end up to which every record is in the map.
    pub fn wal_read_to(&self) -> Lsn {
        Lsn(self.state.wal_read_to.load(Ordering::Acquire))
    }

    /// Release ordering, as [`LsnMap::set_wal_tracked_through`].
    pub fn set_wal_read_to(&self, lsn: Lsn) {
        self.state.wal_read_to.store(lsn.0, Ordering::Release);
    }
}

/// What one [`LsnMap::account_growth`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrowthAccounting {
    pub forks: u64,
    pub blocks_marked: u64,
    pub removed: u64,
    pub unreadable: u64,
}

/// See [`LsnMap::file_query`].
#[derive(Clone, Copy, Debug)]
pub struct FileQuery<'a> {
    map: LsnMap<'a>,
    hasher: BlockHasher,
    since: u64,
    everything: bool,
    /// Blocks from here on count as changed: the fork was cut or created
    /// since (`u64::MAX`: it was not).
    cut_from: u64,
}

impl FileQuery<'_> {
    #[inline]
    pub fn changed(&self, block: u32) -> bool {
        self.everything
            || u64::from(block) >= self.cut_from
            || self.map.slots_reach(self.hasher.hash(block), self.since)
    }

    /// Calls `report(block)` for every block of `first..first + count` that
    /// changed, in order: [`FileQuery::changed`] for a run of blocks, with
    /// the memory latency of the slot loads overlapped. The slots of a map are
    /// spread over megabytes, so nearly every first-slot load misses the
    /// cache; hashing a batch and prefetching its first slots before reading
    /// any lets those misses run in parallel. Second slots are loaded only for
    /// blocks whose first slot passes, as in `changed`.
    pub fn for_each_changed(&self, first: u32, count: u32, mut report: impl FnMut(u32)) {
        const BATCH: usize = 16;
        // Block numbers stop below u32::MAX (InvalidBlockNumber).
        let end = u64::from(first.saturating_add(count));
        let mut block = u64::from(first);
        let slot_count = self.map.slots.len();
        while block < end {
            let batch_end = end.min(block + BATCH as u64);
            let mut firsts = [0usize; BATCH];
            let mut seconds = [0usize; BATCH];
            for (i, b) in (block..batch_end).enumerate() {
                // `b < end <= u32::MAX`: the cast is exact.
                let (one, two) = slot_pair(self.hasher.hash(b as u32), slot_count);
                firsts[i] = one;
                seconds[i] = two;
                prefetch(self.map.slots.get(one));
            }
            for (i, b) in (block..batch_end).enumerate() {
                let reached = |index: usize| {
                    self.map
                        .slots
                        .get(index)
                        .is_none_or(|slot| slot.load(Ordering::Relaxed) >= self.since)
                };
                if self.everything
                    || b >= self.cut_from
                    || (reached(firsts[i]) && reached(seconds[i]))
                {
                    report(b as u32);
                }
            }
            block = batch_end;
        }
    }

    /// True when every block of the file is reported regardless of the slots.
    pub fn reports_everything(&self) -> bool {
        self.everything
    }

    /// The block from which on every block is reported (the fork was cut or
    /// created since), if any.
    pub fn reported_from(&self) -> Option<u32> {
        u32::try_from(self.cut_from).ok()
    }
}

/// Asks the CPU to start loading `slot`'s cache line.
#[inline(always)]
fn prefetch(slot: Option<&AtomicU64>) {
    #[cfg(target_arch = "x86_64")]
    if let Some(slot) = slot {
        // SAFETY: a prefetch is only a hint: it never faults and changes no
        // state visible to the program; SSE is part of x86-64's baseline.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                (slot as *const AtomicU64).cast(),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = slot;
}

/// A map on the heap, for tests, benchmarks and tools.
#[derive(Debug)]
pub struct OwnedLsnMap {
    state: MapState,
    slot_count: usize,
    words: Box<[AtomicU64]>,
    dirty_bits: Box<[AtomicU64]>,
}

impl OwnedLsnMap {
    pub fn new(slot_count: usize) -> Self {
        assert!(slot_count > 0, "a map needs at least one slot");
        let word_count = LsnMap::word_count(slot_count);
        OwnedLsnMap {
            state: MapState::default(),
            slot_count,
            words: (0..word_count).map(|_| AtomicU64::new(0)).collect(),
            dirty_bits: (0..DirtyRegions::words_for(word_count))
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    pub fn view(&self) -> LsnMap<'_> {
        LsnMap::over_words(&self.state, &self.words, &self.dirty_bits, self.slot_count)
            .expect("a map of at least one slot and its words")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::Fork;

    fn key(relfilenode: u32, block: u32) -> BlockKey {
        RelFileKey {
            tablespace: 1663,
            database: 5,
            relfilenode,
            fork: Fork::Main,
        }
        .block(block)
    }

    #[test]
    fn a_new_map_reports_everything_until_tracking_starts() {
        let owned = OwnedLsnMap::new(64);
        let map = owned.view();
        assert!(!map.covers(Lsn(100)));
        assert!(map.changed_since(&key(1, 1), Lsn(100)));
        map.mark(&key(1, 1), Lsn(500));
        assert_eq!(map.init_lsn(), Lsn(500));
        assert!(
            !map.changed_since(&key(1, 2), Lsn(501)),
            "no slot holds an LSN past the last mark"
        );
        assert!(
            map.changed_since(&key(1, 2), Lsn(499)),
            "before init everything counts"
        );
    }

    #[test]
    fn a_cut_reports_every_block_past_it_since_its_lsn() {
        let owned = OwnedLsnMap::new(1 << 16);
        let map = owned.view();
        map.start_tracking_at(Lsn(10));
        let file = key(9, 0).file;
        let other = key(10, 0).file;
        map.mark_cut(&file, 1000, Lsn(500));
        map.mark_cut(&file, 70, Lsn(300));
        for (since, expect) in [
            (Lsn(600), None),
            (Lsn(400), Some(1000)),
            (Lsn(200), Some(70)),
        ] {
            let query = map.file_query(&file, since);
            let first_reported = (0..5000u32).find(|&b| query.changed(b));
            assert_eq!(first_reported, expect, "since {since}");
            if let Some(from) = expect {
                assert!((from..5000).all(|b| query.changed(b)), "since {since}");
            }
        }
        assert!(
            !(0..5000).any(|b| map.file_query(&other, Lsn(200)).changed(b)),
            "another relation's cut leaks into this one"
        );
        // The extremes of the block number space.
        map.mark_cut(&other, 0, Lsn(700));
        assert!(map.changed_since(&key(10, 0).file.block(0), Lsn(700)));
        let edge = key(11, 0).file;
        map.mark_cut(&edge, u32::MAX - 1, Lsn(800));
        let query = map.file_query(&edge, Lsn(800));
        assert!(query.changed(u32::MAX - 1) && query.changed(u32::MAX));
        assert!(!query.changed(u32::MAX - 2));
    }

    #[test]
    fn a_recorded_cut_counts_for_later_start_lsns_until_growth_is_accounted() {
        // The chain of issue #14: cut to 12 at 300, a backup starts at 400,
        // the fork grows back to 56 with blocks no record names.
        let owned = OwnedLsnMap::new(1 << 16);
        let map = owned.view();
        map.start_tracking_at(Lsn(100));
        let file = key(7, 0).file;
        map.record_cut(&file, 12, Lsn(300)).unwrap();
        let query = map.file_query(&file, Lsn(400));
        assert!(!query.changed(11), "below the cut nothing changed");
        assert!(
            (12..56).all(|block| query.changed(block)),
            "blocks past an earlier cut must be reported to a later backup"
        );
        // Hook mode's cut marks alone: only for start LSNs before the cut.
        map.mark_cut(&key(8, 0).file, 12, Lsn(300));
        assert!(!map.file_query(&key(8, 0).file, Lsn(400)).changed(20));

        // Accounting at WAL position 500 sees 56 blocks and marks 12..56.
        let mut lengths = std::collections::HashMap::from([(file, 56u32)]);
        let accounting = map.account_growth(|f| Ok(lengths.get(f).copied()), || Lsn(500));
        assert_eq!(accounting.blocks_marked, 44);
        let later = map.file_query(&file, Lsn(600));
        assert!(
            (12..56).all(|block| !later.changed(block)),
            "a backup starting after the accounting has those blocks"
        );
        assert!(later.changed(56), "growth not yet accounted is reported");
        assert!((12..56).all(|block| map.file_query(&file, Lsn(450)).changed(block)));

        // The fork is dropped: its entry goes, and nothing else changes.
        lengths.clear();
        let accounting = map.account_growth(|f| Ok(lengths.get(f).copied()), || Lsn(700));
        assert_eq!(accounting.removed, 1);
        assert_eq!(map.cut_table().entries().count(), 0);
        // An unreadable fork keeps its entry as it was.
        map.record_cut(&file, 3, Lsn(800)).unwrap();
        map.account_growth(|_| Err(std::io::Error::other("EMFILE")), || Lsn(900));
        assert_eq!(map.cut_table().reported_from(&file), Some(3));
    }

    #[test]
    fn a_full_cut_table_makes_the_map_forget_up_to_the_cut() {
        let owned = OwnedLsnMap::new(64);
        let map = owned.view();
        map.start_tracking_at(Lsn(100));
        let capacity = map.cut_table().capacity() as u32;
        for relation in 0..capacity {
            map.record_cut(&key(relation, 0).file, 5, Lsn(200)).unwrap();
        }
        assert!(map.covers(Lsn(150)));
        assert!(map.record_cut(&key(capacity, 0).file, 5, Lsn(300)).is_err());
        assert!(
            !map.covers(Lsn(300)),
            "a chain from before the cut needs a full backup"
        );
        assert!(map.covers(Lsn(301)));
        assert_eq!(map.cut_table().entries().count(), 0);
        // Free-space and visibility forks are reported whole anyway.
        let mut fsm = key(1, 0).file;
        fsm.fork = Fork::FreeSpace;
        map.record_cut(&fsm, 0, Lsn(400)).unwrap();
        assert_eq!(map.cut_table().entries().count(), 0);
    }

    #[test]
    fn a_range_marked_by_a_collision_is_not_a_cut() {
        let owned = OwnedLsnMap::new(1 << 16);
        let map = owned.view();
        map.start_tracking_at(Lsn(10));
        let file = key(12, 0).file;
        let hasher = file.hasher();
        // What a collision does: the top range's slots raised by other keys,
        // and a few ranges below it, but no chain down to a block.
        map.raise_slots(hasher.cut_range_hash(CUT_LEVELS, 0), Lsn(500));
        map.raise_slots(hasher.cut_range_hash(CUT_LEVELS - 1, 0), Lsn(500));
        map.raise_slots(hasher.cut_range_hash(CUT_LEVELS - 2, 1), Lsn(500));
        let query = map.file_query(&file, Lsn(400));
        assert_eq!(
            query.cut_from,
            u64::MAX,
            "a broken chain was taken for a cut"
        );
        // A true cut beside the false ranges is still found, exactly.
        map.mark_cut(&file, 1 << 31, Lsn(600));
        assert_eq!(map.file_query(&file, Lsn(400)).cut_from, 1 << 31);
        // So is a lower one found under the falsely marked lower half.
        map.mark_cut(&file, 5, Lsn(700));
        assert_eq!(map.file_query(&file, Lsn(400)).cut_from, 5);
    }

    proptest::proptest! {
        /// For any set of cuts, a query reports from exactly the lowest cut
        /// made at or after its LSN (a map this large has no collisions).
        #[test]
        fn the_lowest_cut_since_is_found(cuts in proptest::collection::vec((0u32..=u32::MAX, 1u64..1000), 1..8), since in 1u64..1000) {
            let owned = OwnedLsnMap::new(1 << 20);
            let map = owned.view();
            map.start_tracking_at(Lsn(1));
            let file = key(42, 0).file;
            for &(length, lsn) in &cuts {
                map.mark_cut(&file, length, Lsn(lsn));
            }
            let expected = cuts.iter().filter(|c| c.1 >= since).map(|c| c.0).min();
            let query = map.file_query(&file, Lsn(since));
            proptest::prop_assert_eq!(query.cut_from, expected.map_or(u64::MAX, u64::from));
        }
    }

    proptest::proptest! {
        /// The batched walk answers exactly as the block-by-block question,
        /// with marks, cuts and collisions (a small map) alike.
        #[test]
        fn batched_answers_equal_single_ones(
            marks in proptest::collection::vec((0u32..600, 1u64..100), 0..200),
            cut in proptest::option::of((0u32..600, 1u64..100)),
            since in 1u64..100,
            first in 0u32..300,
            count in 0u32..300,
        ) {
            let owned = OwnedLsnMap::new(97);
            let map = owned.view();
            map.start_tracking_at(Lsn(1));
            let file = key(5, 0).file;
            for (block, lsn) in marks {
                map.mark(&file.block(block), Lsn(lsn));
            }
            if let Some((length, lsn)) = cut {
                map.mark_cut(&file, length, Lsn(lsn));
            }
            let query = map.file_query(&file, Lsn(since));
            let mut batched = Vec::new();
            query.for_each_changed(first, count, |b| batched.push(b));
            let single: Vec<u32> = (first..first + count).filter(|&b| query.changed(b)).collect();
            proptest::prop_assert_eq!(batched, single);
        }
    }

    #[test]
    fn marks_answer_by_lsn() {
        let owned = OwnedLsnMap::new(1 << 16);
        let map = owned.view();
        map.start_tracking_at(Lsn(10));
        map.mark(&key(7, 3), Lsn(1000));
        assert!(map.changed_since(&key(7, 3), Lsn(10)));
        assert!(map.changed_since(&key(7, 3), Lsn(1000)));
        assert!(!map.changed_since(&key(7, 3), Lsn(1001)));
        let unmarked = (0..100)
            .filter(|&b| !map.changed_since(&key(8, b), Lsn(10)))
            .count();
        assert!(unmarked > 95, "a sparse map reports few false positives");
    }

    #[test]
    fn a_new_map_starts_at_or_above_its_floor() {
        // After pg_rewind, replay marks with LSNs below what the old primary
        // reached; the init LSN must not claim that interval.
        let owned = OwnedLsnMap::new(64);
        let map = owned.view();
        map.set_init_at_least(Lsn(5001));
        map.mark(&key(1, 1), Lsn(3000));
        assert_eq!(map.init_lsn(), Lsn(5001));
        assert!(
            map.changed_since(&key(2, 2), Lsn(5000)),
            "the old primary's LSNs are not covered"
        );
        assert!(!map.changed_since(&key(2, 2), Lsn(5001)));
    }

    #[test]
    fn marks_never_go_down() {
        let owned = OwnedLsnMap::new(8);
        let map = owned.view();
        map.mark(&key(1, 1), Lsn(900));
        map.mark(&key(1, 1), Lsn(300));
        assert!(map.changed_since(&key(1, 1), Lsn(900)));
    }

    #[test]
    fn the_init_lsn_is_set_once_and_only_raised_by_forget() {
        let owned = OwnedLsnMap::new(8);
        let map = owned.view();
        assert_eq!(map.start_tracking_at(Lsn(50)), Lsn(50));
        assert_eq!(map.start_tracking_at(Lsn(70)), Lsn(50));
        map.mark(&key(1, 1), Lsn(20));
        assert_eq!(map.init_lsn(), Lsn(50));
        map.forget_before(Lsn(80));
        map.forget_before(Lsn(60));
        assert_eq!(map.init_lsn(), Lsn(80));
        assert!(map.changed_since(&key(1, 1), Lsn(79)));
    }

    fn side_fork(fork: Fork) -> RelFileKey {
        RelFileKey {
            tablespace: 1663,
            database: 5,
            relfilenode: 9,
            fork,
        }
    }

    #[test]
    fn free_space_and_visibility_forks_are_reported_in_full_until_tracked() {
        let owned = OwnedLsnMap::new(1 << 10);
        let map = owned.view();
        map.start_tracking_at(Lsn(1));
        for fork in [Fork::FreeSpace, Fork::Visibility] {
            let file = side_fork(fork);
            assert!(map.changed_since(&file.block(0), Lsn(u64::MAX)));
            assert!(map.file_query(&file, Lsn(u64::MAX)).reports_everything());
        }
        // The main fork is answered block by block all along.
        assert!(!map.changed_since(&side_fork(Fork::Main).block(0), Lsn(2)));
    }

    #[test]
    fn tracked_side_forks_are_answered_block_by_block_from_then_on() {
        let owned = OwnedLsnMap::new(1 << 10);
        let map = owned.view();
        map.start_tracking_at(Lsn(10));
        map.track_side_forks_from(Lsn(100));
        // A second call (a later checkpoint) keeps the first LSN.
        map.track_side_forks_from(Lsn(500));
        assert_eq!(map.side_forks_tracked_from(), Lsn(100));
        for fork in [Fork::FreeSpace, Fork::Visibility] {
            let file = side_fork(fork);
            map.mark(&file.block(3), Lsn(200));
            // Before the LSN they are tracked from: everything.
            assert!(map.file_query(&file, Lsn(99)).reports_everything());
            assert!(map.changed_since(&file.block(0), Lsn(99)));
            // From it on: what was marked, and nothing else.
            for since in [Lsn(100), Lsn(150), Lsn(200)] {
                assert!(!map.file_query(&file, since).reports_everything());
                assert!(map.changed_since(&file.block(3), since));
                assert!(!map.changed_since(&file.block(0), since));
            }
            assert!(!map.changed_since(&file.block(3), Lsn(201)));
        }
    }

    #[test]
    fn a_start_a_load_or_a_reset_forgets_the_side_forks() {
        let owned = OwnedLsnMap::new(1 << 10);
        let map = owned.view();
        let file = side_fork(Fork::FreeSpace);
        let forgetters: [&dyn Fn(&LsnMap<'_>); 3] = [
            &|m| m.forget_side_forks(),
            &|m| m.load(Lsn(10), std::iter::repeat(0)),
            &|m| m.reset(),
        ];
        for forget in forgetters {
            map.start_tracking_at(Lsn(10));
            map.track_side_forks_from(Lsn(100));
            assert!(!map.changed_since(&file.block(0), Lsn(100)));
            forget(&map);
            assert_eq!(map.side_forks_tracked_from(), Lsn::INVALID);
            assert!(map.changed_since(&file.block(0), Lsn(100)));
        }
    }

    #[test]
    fn file_query_agrees_with_changed_since() {
        let owned = OwnedLsnMap::new(4096);
        let map = owned.view();
        map.start_tracking_at(Lsn(1));
        for block in (0..5000).step_by(7) {
            map.mark(&key(3, block), Lsn(u64::from(block) + 100));
        }
        for since in [Lsn(1), Lsn(2000), Lsn(4000)] {
            let query = map.file_query(&key(3, 0).file, since);
            for block in 0..5000 {
                assert_eq!(
                    query.changed(block),
                    map.changed_since(&key(3, block), since)
                );
            }
        }
    }

    #[test]
    fn region_view_matches_layout() {
        let slot_count = 100;
        let mut region = vec![0u64; LsnMap::region_size(slot_count) / 8 + 8];
        // Align the region start to 64 bytes inside the buffer.
        let base = region.as_mut_ptr() as *mut u8;
        let offset = base.align_offset(64);
        // SAFETY: the buffer is zeroed, large enough for the region after the
        // alignment offset, outlives `map`, and is only accessed through it.
        let map = unsafe { LsnMap::from_region(base.add(offset), slot_count) }.unwrap();
        assert_eq!(map.slot_count(), slot_count);
        map.mark(&key(1, 1), Lsn(42));
        assert_eq!(map.init_lsn(), Lsn(42));
        assert!(map.slots().iter().any(|s| s.load(Ordering::Relaxed) == 42));
        // SAFETY: as above.
        assert!(unsafe { LsnMap::from_region(base.add(offset), 0) }.is_none());
    }
}
