//! WAL mode: a background worker reads the server's WAL from `pg_wal` and
//! marks every block a record references, with the record's end LSN, so an
//! unpatched server tracks changes too.
//!
//! Three positions govern it:
//!
//! * the map's `wal_tracked_through`: every record ending at or before it is
//!   marked; it is also where reading resumes (the start of the next record);
//! * the map's `wal_read_to`: the WAL end the follower last read up to (a
//!   record crossing it is incomplete there); questions wait for it;
//! * the `ptrack` replication slot's restart LSN: PostgreSQL keeps the WAL from
//!   there on. It moves only to a `wal_tracked_through` that a durable map
//!   file records, so after any crash the WAL from the file's position on is
//!   still there to be read again.

use std::time::{Duration, Instant};

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::pg_sys;
use pgrx::prelude::*;
use ptrack_core::wal::{
    record_effects, RecordEffect, SegmentDirSource, WalError, WalFormat, WalReader,
};
use ptrack_core::{walk, Lsn, LsnMap};

use crate::wal_marks::{apply_effect, CutRecording};
use crate::{map_store, server, settings};

/// How long the follower sleeps when it has read all the WAL there is.
const IDLE_WAIT: Duration = Duration::from_millis(10);
/// Records between two publications of the follower's position.
const RECORDS_PER_PUBLICATION: usize = 256;

/// Registers the follower in the postmaster (`_PG_init`).
pub fn register() {
    BackgroundWorkerBuilder::new("ptrack WAL follower")
        .set_type("ptrack WAL follower")
        .set_library("ptrack")
        .set_function("ptrack_wal_follower_main")
        .enable_shmem_access(None)
        // Reads replayed WAL on a hot standby, and runs on a primary once it
        // accepts connections.
        .set_start_time(BgWorkerStartTime::ConsistentState)
        .set_restart_time(Some(Duration::from_secs(1)))
        .load();
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn ptrack_wal_follower_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let Some(map) = map_store::shared_map() else {
        return;
    };
    if !server::hint_bits_are_wal_logged() {
        warning!(
            "ptrack: data checksums and wal_log_hints are both off, so changes of hint bits \
             alone are not in the WAL and WAL mode cannot report them; turn on wal_log_hints \
             for incremental backups to copy them"
        );
    }
    let Some(format) = WalFormat::for_major(server::major_version(), server::wal_segment_size())
    else {
        error!(
            "ptrack: WAL mode does not support PostgreSQL {}",
            server::major_version()
        );
    };
    let start = claim_wal(&map);
    let mut follower = Follower::start(&map, format, start);
    log!(
        "ptrack: WAL follower reading from {} (init LSN {})",
        follower.reader.next_record_start(),
        map.init_lsn()
    );
    let mut last_redo = server::checkpoint_redo();
    while !follower.stop_requested() {
        if BackgroundWorker::sighup_received() {
            // SAFETY: the documented way for a background worker to reload
            // its configuration, outside any critical section.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        let progressed = settings::DEBUG_FOLLOWER_PAUSED.get() == 0 && follower.read_available();
        let redo = server::checkpoint_redo();
        if redo != last_redo {
            // A checkpoint began: make what was read durable and let the WAL
            // before it go, at about the pace PostgreSQL recycles WAL anyway.
            follower.persist();
            last_redo = redo;
        }
        if !progressed && !BackgroundWorker::wait_latch(Some(IDLE_WAIT)) {
            // SIGTERM (consumed by the wait) or the postmaster died.
            break;
        }
    }
    follower.persist();
    // Exit code 1 asks the postmaster to start the follower again: SIGTERM
    // also comes from a checkpoint invalidating the slot, and the follower
    // must then come back and start a new map. At shutdown nothing restarts.
    // SAFETY: the normal way out of a background worker; runs the exit
    // callbacks, which release the slot.
    unsafe { pg_sys::proc_exit(1) };
}

/// Decides where reading starts and makes PostgreSQL keep the WAL from there:
/// the loaded map's position when its WAL still exists, otherwise (a new map,
/// or WAL gone) the latest checkpoint's REDO LSN, from which a new map begins.
fn claim_wal(map: &LsnMap<'_>) -> Lsn {
    let replaced = server::acquire_follower_slot();
    let resume = map.wal_tracked_through();
    if resume.is_valid() {
        server::set_follower_slot_lsn(resume, true);
        if !replaced && !server::wal_removed_at(resume) && segment_present(resume) {
            return resume;
        }
        warning!(
            "ptrack: the WAL from {resume} on, which the map has not read yet, was removed \
             (replication slot \"ptrack\" invalidated or dropped); changes before the next \
             checkpoint's REDO LSN are now unknown (new init LSN)"
        );
    }
    // A new map begins where the server's own start vouches from, if its
    // WAL is still there: the checkpoint ending a restored backup's recovery
    // may have moved the REDO past it before this worker started.
    let from = map_store::new_map_read_from();
    if !map.init_lsn().is_valid() && from.is_valid() && from <= server::checkpoint_redo() {
        server::set_follower_slot_lsn(from, true);
        if !server::wal_removed_at(from) && segment_present(from) {
            map.start_tracking_at(from);
            return from;
        }
    }
    loop {
        let redo = server::checkpoint_redo();
        server::set_follower_slot_lsn(redo, true);
        // A checkpoint that chose what to remove before the slot moved may
        // still remove this segment: PostgreSQL's own slots check the same way.
        if server::wal_removed_at(redo) {
            continue;
        }
        // Every record from `redo` on will be read; records ending before it
        // changed pages that any backup starting at or after it contains.
        if map.init_lsn().is_valid() {
            map.forget_before(redo);
        } else {
            map.start_tracking_at(redo);
        }
        return redo;
    }
}

struct Follower<'a> {
    map: LsnMap<'a>,
    reader: WalReader<SegmentDirSource>,
    /// The start of the first record that is not in the last durable map file.
    persisted_through: Lsn,
    /// SIGTERM arrived (pgrx reports each signal once).
    stopping: bool,
}

impl<'a> Follower<'a> {
    fn start(map: &LsnMap<'a>, format: WalFormat, start: Lsn) -> Self {
        let (_, timeline) = server::wal_readable_end();
        let source = SegmentDirSource::new(server::pg_wal_dir(), format, timeline);
        let reader = WalReader::at_record(source, format, start);
        map.set_wal_tracked_through(start);
        Follower {
            map: *map,
            reader,
            persisted_through: Lsn::INVALID,
            stopping: false,
        }
    }

    fn stop_requested(&mut self) -> bool {
        self.stopping |= BackgroundWorker::sigterm_received();
        self.stopping
    }

    /// Reads and marks every complete record the WAL on disk holds. Returns
    /// whether any record was read.
    fn read_available(&mut self) -> bool {
        let (end, timeline) = server::wal_readable_end();
        self.reader.source_mut().set_max_timeline(timeline);
        let mut records = 0usize;
        loop {
            match self.reader.next_record(end) {
                Ok(Some(record)) => {
                    for effect in record_effects(&record) {
                        self.apply(effect, record.end);
                    }
                    records += 1;
                    if records % RECORDS_PER_PUBLICATION == 0 {
                        self.map
                            .set_wal_tracked_through(self.reader.next_record_start());
                        pgrx::check_for_interrupts!();
                        if self.stop_requested() {
                            break;
                        }
                    }
                }
                Ok(None) => {
                    self.map
                        .set_wal_tracked_through(self.reader.next_record_start());
                    self.map.set_wal_read_to(end);
                    break;
                }
                Err(error) => self.unreadable(error),
            }
        }
        self.map
            .set_wal_tracked_through(self.reader.next_record_start());
        records > 0
    }

    fn apply(&self, effect: RecordEffect, lsn: Lsn) {
        apply_effect(&self.map, effect, lsn, CutRecording::Exact);
    }

    /// Marks what the forks of the cut table grew by since the last time
    /// ([`LsnMap::account_growth`]): the blocks a relation gains without a
    /// WAL record naming them. Before each map write, so the file carries it.
    fn account_growth(&self) {
        let (data_dir, layout) = (server::data_dir(), server::layout());
        let accounting = self.map.account_growth(
            |file| walk::fork_blocks(&data_dir, file, &layout),
            server::current_lsn,
        );
        if accounting.unreadable > 0 {
            log!(
                "ptrack: could not read the length of {} of the {} relation forks cut or created                  since the map began; their blocks past the last length read stay reported",
                accounting.unreadable,
                accounting.forks
            );
        }
    }

    /// The WAL cannot be read on. The follower exits; restarted, it resumes
    /// here if the WAL is there (a transient error) and otherwise starts anew
    /// at the latest checkpoint with a new init LSN (`claim_wal`). Damaged WAL
    /// is skipped the same way: what it held is unknown.
    fn unreadable(&mut self, error: WalError) -> ! {
        let at = self.reader.next_record_start();
        // A file that is missing, cannot be opened or read for now (EMFILE,
        // EACCES) or is still being written: the WAL may be back after the
        // restart, which checks whether it is. Only WAL that reads as damaged
        // is given up here.
        let transient = matches!(
            error,
            WalError::SegmentMissing { .. } | WalError::Io { .. } | WalError::ShortSegment { .. }
        );
        if !transient {
            self.map.set_wal_tracked_through(Lsn::INVALID);
        }
        error!("ptrack: the WAL follower cannot read the WAL at {at}: {error}");
    }

    /// Writes the map with the follower's position and then moves the slot
    /// there: the WAL before it is no longer needed.
    fn persist(&mut self) {
        let through = self.map.wal_tracked_through();
        if through == self.persisted_through {
            return;
        }
        self.account_growth();
        match map_store::persist_map(&self.map, server::checkpoint_redo()) {
            Ok(()) => {
                server::set_follower_slot_lsn(through, true);
                self.persisted_through = through;
            }
            Err(error) => warning!(
                "ptrack: could not write the map: {error}; the WAL from {} on is kept until a \
                 later write succeeds",
                self.persisted_through
            ),
        }
    }
}

/// Whether `pg_wal` holds the segment file of `lsn`, on any timeline.
fn segment_present(lsn: Lsn) -> bool {
    let segment = server::wal_segment_of(lsn);
    let per_id = 0x1_0000_0000 / server::wal_segment_size();
    let suffix = format!("{:08X}{:08X}", segment / per_id, segment % per_id);
    std::fs::read_dir(server::pg_wal_dir()).is_ok_and(|entries| {
        entries.flatten().any(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.len() == 24 && name.ends_with(&suffix)
        })
    })
}

/// How long questions wait, and the error when the follower is too slow.
pub fn wait_until_read(map: &LsnMap<'_>) {
    let target = server::wal_flushed_now();
    let timeout = Duration::from_millis(settings::WAL_WAIT_TIMEOUT_MS.get().max(0) as u64);
    let deadline = Instant::now() + timeout;
    while map.wal_read_to() < target || !map.init_lsn().is_valid() {
        if Instant::now() >= deadline {
            server::raise(
                PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE,
                format!(
                    "ptrack: the WAL follower has read the WAL up to {} only, not yet up to {target}, \
                     after waiting {} ms",
                    map.wal_read_to(),
                    timeout.as_millis()
                ),
                "see the server log for the \"ptrack WAL follower\" process; raise \
                 ptrack.wal_wait_timeout if it is only slow",
            );
        }
        pgrx::check_for_interrupts!();
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// How far the follower lags behind the WAL on disk, in bytes.
pub fn lag_bytes(map: &LsnMap<'_>) -> u64 {
    server::wal_readable_end()
        .0
         .0
        .saturating_sub(map.wal_tracked_through().0)
}
