//! `ptrack.map_size` changed: the old map file's answers carried into the
//! new map at start, through the data-directory walk (`ptrack_core::resize`).

use std::time::Instant;

use pgrx::prelude::*;
use ptrack_core::mapfile::MapFileMeta;
use ptrack_core::resize::{carry_over, CarriedOver, CarryError, OldMapFile};
use ptrack_core::walk;
use ptrack_core::LsnMap;

use crate::server;

fn megabytes(slot_count: u64) -> u64 {
    slot_count * 8 / (1024 * 1024)
}

/// Fills `map` (cleared, not yet shared with any other process) from `old`
/// and returns the old file's header for the rest of the start, as a loaded
/// file's; on failure, logs a WARNING, clears `map` again and returns `None`:
/// the caller starts a new map.
pub fn carry_over_resized(map: &LsnMap<'_>, old: &OldMapFile) -> Option<MapFileMeta> {
    let started = Instant::now();
    let meta = *old.meta();
    let (from_mb, to_mb) = (
        megabytes(meta.slot_count),
        megabytes(map.slot_count() as u64),
    );
    match carry(map, old) {
        Ok(carried) => {
            map.set_flushed_redo(meta.checkpoint_redo);
            map.set_wal_tracked_through(meta.wal_tracked_through);
            log!(
                "ptrack: map resized from {from_mb} to {to_mb} MB: carried over {} blocks of {} \
                 files, {} forks cut since the init LSN and {} cut-table entries in {} ms \
                 (init LSN {})",
                carried.blocks,
                carried.files,
                carried.cut_forks,
                carried.cut_table_entries,
                started.elapsed().as_millis(),
                map.init_lsn()
            );
            Some(meta)
        }
        Err(error) => {
            warning!(
                "ptrack: discarding map file \"global/{}\" of {from_mb} MB: cannot carry it over \
                 into the map of {to_mb} MB: {error}; starting a new map: changes before its \
                 init LSN are unknown",
                meta.mode().map_file_name()
            );
            map.reset();
            None
        }
    }
}

fn carry(map: &LsnMap<'_>, old: &OldMapFile) -> Result<CarriedOver, CarryError> {
    let pgdata = server::data_dir();
    let layout = server::layout();
    let files = walk::stream_segment_files(&pgdata, &layout)?;
    carry_over(&old.view(), map, files, layout.segment_blocks, |fork| {
        Ok(walk::fork_blocks(&pgdata, fork, &layout)?.is_some())
    })
}
