//! Marking what WAL records did: every block a record references, the forks it
//! cuts, the database directories it copies. Shared by WAL mode's follower
//! and by hook mode's scan, at a start after a crash, of the WAL crash
//! recovery replays.

use pgrx::prelude::*;
use ptrack_core::relfile::DatabaseDir;
use ptrack_core::wal::{record_effects, RecordEffect, SegmentDirSource, WalFormat, WalReader};
use ptrack_core::{walk, Lsn, LsnMap};

use crate::server;

/// How a cut is recorded.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum CutRecording {
    /// WAL mode: in the cut table too, so that it counts for later start
    /// LSNs; the follower accounts for what the fork grows by afterwards.
    Exact,
    /// Hook mode's crash scan: the hooks mark every block a relation grows
    /// by, so the map's own cut marks are enough.
    MarksOnly,
}

/// Marks what one record did, as of `lsn` (the record's end).
pub fn apply_effect(map: &LsnMap<'_>, effect: RecordEffect, lsn: Lsn, cuts: CutRecording) {
    match effect {
        RecordEffect::Block(block) => map.mark(&block, lsn),
        RecordEffect::Cut { file, length } if cuts == CutRecording::Exact => {
            record_cut(map, &file, length, lsn)
        }
        RecordEffect::Cut { file, length } => map.mark_cut(&file, length, lsn),
        RecordEffect::CopiedDatabase {
            tablespace,
            database,
        } => {
            let relative = DatabaseDir {
                tablespace,
                database,
            }
            .relative_path(&server::layout().tablespace_version_dir);
            match walk::mark_copied_directory(
                map,
                &server::data_dir(),
                &relative,
                &server::layout(),
                lsn,
            ) {
                Ok(copied) if cuts == CutRecording::Exact => {
                    for fork in &copied.forks {
                        record_cut(map, fork, 0, lsn);
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    // The directory is gone again (dropped since) or unreadable:
                    // either way nothing of it can be vouched for.
                    if error.kind() != std::io::ErrorKind::NotFound {
                        map.forget_before(lsn);
                        warning!(
                            "ptrack: could not mark the blocks of copied database directory \
                         \"{relative}\" ({error}); changes before {lsn} are now unknown \
                         (new init LSN)"
                        );
                    }
                }
            }
        }
    }
}

/// [`LsnMap::record_cut`], saying in the log when a full table made the map
/// forget.
fn record_cut(map: &LsnMap<'_>, file: &ptrack_core::RelFileKey, length: u32, lsn: Lsn) {
    if let Err(full) = map.record_cut(file, length, lsn) {
        warning!(
            "ptrack: {full}: changes before {} are now unknown (new init LSN); the next backup              must be a full one (a larger ptrack.map_size holds more forks)",
            map.init_lsn()
        );
    }
}

/// Hook mode, at a start after a crash that lost the live map: marks every
/// block the WAL from `from` (the loaded map file's REDO) on references, as
/// WAL mode would, and returns where that WAL ends (PostgreSQL's end of log).
///
/// Crash recovery re-marks a page only when it writes it, and it skips a
/// record whose page on disk already carries it: with `full_page_writes`
/// off (or off for a while), a page written after the map file and before
/// the crash would never be marked again. Reading the WAL itself does not
/// depend on that. Any error ends the WAL here, as it ends recovery.
///
/// `limit`: records ending after it are not read (`Lsn(u64::MAX)`: all).
pub fn mark_wal_after_crash(map: &LsnMap<'_>, from: Lsn, timeline: u32, limit: Lsn) -> Option<Lsn> {
    let format = WalFormat::for_major(server::major_version(), server::wal_segment_size())?;
    let source = SegmentDirSource::new(server::pg_wal_dir(), format, timeline);
    let mut reader = WalReader::at_record(source, format, from);
    let mut records = 0u64;
    while let Ok(Some(record)) = reader.next_record(limit) {
        for effect in record_effects(&record) {
            apply_effect(map, effect, record.end, CutRecording::MarksOnly);
        }
        records += 1;
    }
    let end = reader.next_record_start();
    log!("ptrack: marked the blocks of {records} WAL records from {from} to {end} that crash recovery replays");
    Some(end)
}
