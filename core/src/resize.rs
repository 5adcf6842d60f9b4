//! `ptrack.map_size` changed: the map file of the old size is re-keyed into
//! the new map instead of being discarded.
//!
//! A map answers "did block B change since L?" by the lower of B's two slots
//! (and, in WAL mode, by the cuts of its fork). The old map's answers are
//! carried into the new one for every block that exists now, found by the
//! data-directory walk:
//!
//! * **Marks.** Each block's *old answer* is the lower of its two old slots:
//!   it was reported for every L up to that value. Both of its new slots are
//!   raised to it, so the new map reports it for at least the same L. Values
//!   below the init LSN are skipped: for those L everything is reported anyway.
//! * **Cuts** ([`LsnMap::mark_cut`]). For an L at or after the init LSN, the
//!   old map reports every block from the lowest cut since L on; that block
//!   number is lowest for L = init LSN (the search for a later L follows a
//!   subset of the ranges, in the same order), and no cut is found for an L
//!   above the mark of the range of all block numbers. So one cut at that
//!   lowest block, with that range's mark as its LSN, reports at least as much
//!   for every L — including blocks past the file's end, which WAL mode needs
//!   when the fork grows back by blocks no WAL record names.
//! * **The cut table** ([`crate::cuts`]): each entry of a fork that still
//!   exists is recorded in the new table with the same accounted length (an
//!   entry of a fork that is gone would be dropped by the next accounting
//!   anyway). If they do not fit, the carry-over fails.
//! * **The init LSN** is the old one; the header's positions (REDO, WAL read)
//!   are the caller's to copy, as for a map file of the right size.
//!
//! Blocks past a file's current end need nothing beyond the cuts: in hook
//! mode the write that regrows them is marked, in WAL mode the record that
//! cut the fork (or created it anew) is behind one of the cuts above.
//!
//! Collisions in either map only raise slots, so the new map may report more
//! than the old one (false positives), never less.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::block::{slot_pair, RelFileKey};
use crate::cuts::CutTableFull;
use crate::lsn::Lsn;
use crate::map::{LsnMap, MapState, CUT_LEVELS};
use crate::mapfile::{
    self, delta, Expectation, MapFileError, MapFileMeta, HEADER_LEN, TRAILER_LEN,
};
use crate::walk::SegmentFile;

/// A verified map file of another slot count, mapped privately, seen as a
/// map that is only ever read.
pub struct OldMapFile {
    /// Copy-on-write: nothing done through it could reach the file. Only
    /// kept alive here: it is read through `words`.
    _mapping: memmap2::MmapMut,
    /// The first word after the header, inside `_mapping`.
    words: *const AtomicU64,
    meta: MapFileMeta,
    state: MapState,
}

impl OldMapFile {
    pub fn meta(&self) -> &MapFileMeta {
        &self.meta
    }

    /// The old map, to be read only.
    pub fn view(&self) -> LsnMap<'_> {
        let slot_count = self.meta.slot_count as usize;
        // SAFETY: `open_resized` checked that the mapping holds the header,
        // then these words (little-endian, and this is a little-endian host),
        // then the trailer, and that `self.words` is aligned for `AtomicU64`.
        // The pointer comes from the mapping's mutable pointer, and the
        // mapping (private, writable, never moved) lives as long as `self`.
        // Nothing else accesses it while the view exists; the view is only
        // read (the callers' contract, see `view`).
        let words =
            unsafe { std::slice::from_raw_parts(self.words, LsnMap::word_count(slot_count)) };
        LsnMap::over_words(&self.state, words, &[], slot_count)
            .expect("open_resized checked the slot count")
    }
}

/// Opens the map file at `path` whose slot count differs from
/// `expect.slot_count` and makes every other check of [`mapfile::verify`]
/// against it, with its own slot count: only a file that would have been
/// loaded at its own size is re-keyed.
pub fn open_resized(path: &Path, expect: &Expectation) -> Result<OldMapFile, MapFileError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Err(MapFileError::Missing),
        Err(error) => return Err(error.into()),
    };
    let len = file.metadata()?.len();
    if len < (HEADER_LEN + TRAILER_LEN) as u64 || cfg!(target_endian = "big") {
        return Err(MapFileError::WrongLength {
            found: len,
            expected: mapfile::file_len(expect.slot_count),
        });
    }
    // SAFETY: a private (copy-on-write) mapping, only read; PostgreSQL's
    // checkpointer replaces this path by renaming a new file over it, never
    // modifying the mapped inode in place, and no other process writes it.
    let mut mapping = unsafe { memmap2::MmapOptions::new().map_copy(&file)? };
    let slot_count = u64::from_le_bytes(mapping[24..32].try_into().expect("8 bytes"));
    let own_size = Expectation {
        slot_count,
        ..*expect
    };
    let (base, base_len) = mapfile::verify_all_but_freshness(&mapping[..], &own_size)?;
    let word_count = mapfile::word_count(slot_count) as usize;
    let prefix = delta::scan(
        &mapping[base_len..],
        base.base_nonce,
        word_count,
        base.checkpoint_redo,
    );
    let meta = mapfile::with_delta(base, &prefix);
    mapfile::check_fresh(&meta, &own_size)?;
    // The delta records go into the private copy of the mapping, never
    // the file, before the words are seen as atomics.
    let (base_bytes, tail) = mapping.split_at_mut(base_len);
    delta::apply_with(
        tail,
        &prefix,
        base.base_nonce,
        word_count,
        |index, value| {
            let at = HEADER_LEN + index * 8;
            base_bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
        },
    );
    // SAFETY: the file is at least `HEADER_LEN + TRAILER_LEN` bytes long, so
    // the offset stays inside the mapping.
    let words = unsafe { mapping.as_mut_ptr().add(HEADER_LEN) }
        .cast::<AtomicU64>()
        .cast_const();
    if slot_count == 0 || usize::try_from(slot_count).is_err() || !words.is_aligned() {
        return Err(MapFileError::WrongSlotCount {
            found: slot_count,
            expected: expect.slot_count,
        });
    }
    let old = OldMapFile {
        _mapping: mapping,
        words,
        meta,
        state: MapState::default(),
    };
    old.view().start_tracking_at(meta.init_lsn);
    Ok(old)
}

/// What [`carry_over`] carried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CarriedOver {
    /// Relation segment files walked.
    pub files: u64,
    /// Blocks whose old answer was raised into the new map.
    pub blocks: u64,
    /// Forks with a cut since the init LSN, carried as one cut each.
    pub cut_forks: u64,
    /// Entries of the cut table carried.
    pub cut_table_entries: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CarryError {
    #[error("reading the data directory: {0}")]
    Walk(#[from] io::Error),
    #[error("the old map's cut table does not fit into the new one: {0}")]
    CutTable(#[from] CutTableFull),
}

/// The lower of the two slots of `hash`: the highest L it answers for.
fn slot_answer(map: &LsnMap<'_>, hash: u64) -> u64 {
    let slots = map.slots();
    let (first, second) = slot_pair(hash, slots.len());
    let load = |index: usize| slots.get(index).map_or(0, |s| s.load(Ordering::Relaxed));
    load(first).min(load(second))
}

/// Fills `new`, a cleared map nobody else uses yet, with the answers of `old`
/// (see the module documentation) for the segment files `files` (a stream of
/// the walk: [`crate::walk::stream_segment_files`]) of `segment_blocks`
/// blocks per segment. `fork_exists(file)` says whether a fork of the old cut
/// table still exists. On error `new` holds part of the answers: the caller
/// must start a new map instead.
pub fn carry_over(
    old: &LsnMap<'_>,
    new: &LsnMap<'_>,
    files: impl IntoIterator<Item = io::Result<SegmentFile>>,
    segment_blocks: u32,
    mut fork_exists: impl FnMut(&RelFileKey) -> io::Result<bool>,
) -> Result<CarriedOver, CarryError> {
    let mut carried = CarriedOver::default();
    let init = old.init_lsn();
    if !init.is_valid() {
        // The old map vouched for nothing yet: neither does the new one.
        return Ok(carried);
    }
    new.start_tracking_at(init);
    for entry in old.cut_table().entries() {
        if fork_exists(&entry.file)? {
            new.cut_table().record(&entry.file, entry.accounted)?;
            carried.cut_table_entries += 1;
        }
    }
    for file in files {
        let file = file?;
        carried.files += 1;
        // The new map answers these forks in full until the first checkpoint
        // after this start, and so for every LSN before it.
        if file.key.fork.not_wal_logged() {
            continue;
        }
        // Blocks beyond 2^32 are reported whole by every query anyway.
        let Some(first) = file
            .segment
            .checked_mul(segment_blocks)
            .filter(|first| first.checked_add(file.blocks).is_some())
        else {
            continue;
        };
        let hasher = file.key.hasher();
        if let Some(from) = old.file_query(&file.key, init).reported_from() {
            let bound = slot_answer(old, hasher.cut_range_hash(CUT_LEVELS, 0));
            if bound >= init.0 {
                new.mark_cut(&file.key, from, Lsn(bound));
                carried.cut_forks += u64::from(file.segment == 0);
            }
        }
        for block in first..first + file.blocks {
            let answer = slot_answer(old, hasher.hash(block));
            if answer >= init.0 {
                new.mark(&file.key.block(block), Lsn(answer));
                carried.blocks += 1;
            }
        }
    }
    Ok(carried)
}

#[cfg(test)]
#[path = "resize_tests.rs"]
mod tests;
