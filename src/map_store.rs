//! The shared map's lifecycle, in one place: where it lives and the one
//! pointer every process reaches it through; attaching it at the shmem
//! request; verifying and loading the map file at shmem startup; writing the
//! map file at every checkpoint (hook mode's sync hook, the WAL follower);
//! and the final write at the postmaster's exit.
//!
//! It lives in a file on tmpfs, `/dev/shm/ptrack.<system id>.<dev>.<inode of
//! PGDATA>.map`, mapped shared by the postmaster and inherited by every child
//! (see `ptrack_core::live`): its marks survive a crash of the server's
//! processes. Where that file cannot be set up (no tmpfs, too little room) the
//! map lives in PostgreSQL's shared memory instead and marks made since the
//! last checkpoint rely on redo after a crash.

mod live_file;
mod resize;
mod verify;

use std::path::PathBuf;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;

use pgrx::pg_sys;
use pgrx::prelude::*;
use ptrack_core::live::{LiveHeader, LiveIdentity};
use ptrack_core::mapfile::{self, Flushed, HeaderVerifiedMapFile, MapFileMeta, TrackingMode};
use ptrack_core::startup;
use ptrack_core::{Lsn, LsnMap};

use crate::{server, settings, wal_marks};
pub use live_file::live_file_path;
use live_file::{attach_live_file, live_identity, LIVE_HEADER_BYTES};
use verify::{verified_map_file, warn_discarded, MapFileVerdict};

/// Start of the map region, or null while there is none (tracking off, or
/// before shared memory exists). Set in the postmaster and inherited by every
/// forked child.
static REGION: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static SLOT_COUNT: AtomicUsize = AtomicUsize::new(0);
/// The live file's header, or null when the map is in PostgreSQL's shared memory.
static LIVE_HEADER: AtomicPtr<LiveHeader> = AtomicPtr::new(std::ptr::null_mut());
static LIVE_PATH: OnceLock<PathBuf> = OnceLock::new();
/// The cluster's system identifier, written into every map file.
static SYSTEM_IDENTIFIER: AtomicU64 = AtomicU64::new(0);
/// `pg_control`'s data checksum version at start; only offline tools change it.
static DATA_CHECKSUM_VERSION: AtomicU32 = AtomicU32::new(0);

static mut PREV_SHMEM_REQUEST_HOOK: pg_sys::shmem_request_hook_type = None;
static mut PREV_SHMEM_STARTUP_HOOK: pg_sys::shmem_startup_hook_type = None;

const REGION_NAME: &std::ffi::CStr = c"ptrack map";
/// `LsnMap` wants its region aligned to 64 bytes; request that much slack.
const ALIGNMENT_SLACK: usize = 64;

pub fn slot_count_for(map_size_mb: i32) -> usize {
    (map_size_mb.max(0) as usize) * 1024 * 1024 / 8
}

fn slot_count() -> usize {
    SLOT_COUNT.load(Ordering::Acquire)
}

/// The shared map, if tracking is on and shared memory is set up.
#[inline(always)]
pub fn shared_map() -> Option<LsnMap<'static>> {
    let region = REGION.load(Ordering::Acquire);
    // SAFETY: a non-null REGION was set at shmem startup to a region of
    // `LsnMap::region_size(SLOT_COUNT)` bytes, aligned to 64, in memory shared by
    // all server processes that stays mapped for the life of each of them.
    unsafe { LsnMap::from_region(region, slot_count()) }
}

fn live_header() -> Option<&'static LiveHeader> {
    // SAFETY: non-null only once `attach_live_file` mapped the file, which it
    // never unmaps; the header is only accessed through `LiveHeader`'s atomics
    // after start-up.
    unsafe { LIVE_HEADER.load(Ordering::Acquire).as_ref() }
}

fn system_identifier() -> u64 {
    SYSTEM_IDENTIFIER.load(Ordering::Acquire)
}

fn data_checksum_version() -> u32 {
    DATA_CHECKSUM_VERSION.load(Ordering::Acquire)
}

/// A map flush at `redo` succeeded: the live map now continues that file.
fn flushed_at(map: &LsnMap<'_>, redo: Lsn) {
    map.set_flushed_redo(redo);
    if let Some(header) = live_header() {
        header.set_base_redo(redo);
    }
}

/// Where the map lives, for `ptrack_status`-style reporting in logs.
fn backing() -> &'static str {
    if live_header().is_some() {
        "a tmpfs file that survives process crashes"
    } else {
        "PostgreSQL shared memory"
    }
}

/// Installs the shared-memory hooks for a map of `slot_count` slots. Called
/// from `_PG_init` in the postmaster.
pub fn install(slot_count: usize) {
    SLOT_COUNT.store(slot_count, Ordering::Release);
    // SAFETY: `_PG_init` runs once, single-threaded, in the postmaster; chaining
    // the previous hooks keeps other extensions working.
    unsafe {
        PREV_SHMEM_REQUEST_HOOK = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(on_shmem_request);
        PREV_SHMEM_STARTUP_HOOK = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(on_shmem_startup);
    }
}

fn region_bytes() -> usize {
    LsnMap::region_size(slot_count()) + ALIGNMENT_SLACK
}

#[pg_guard]
unsafe extern "C-unwind" fn on_shmem_request() {
    // SAFETY: called by the postmaster in its shmem-request phase, the only
    // time `RequestAddinShmemSpace` is allowed.
    unsafe {
        if let Some(previous) = PREV_SHMEM_REQUEST_HOOK {
            previous();
        }
    }
    let attached = attach_live_file(slot_count()).map(|(base, path)| {
        // The mapping is page-aligned, so the header and the region after its
        // 64 bytes are aligned for `LiveHeader` and `LsnMap`.
        LIVE_HEADER.store(base.cast(), Ordering::Release);
        let _ = LIVE_PATH.set(path);
    });
    if let Err(error) = attached {
        log!(
            "ptrack: keeping the map in shared memory ({error}); after a crash, marks since the \
             last checkpoint come back through redo for WAL-logged changes only"
        );
        // SAFETY: as above.
        unsafe { pg_sys::RequestAddinShmemSpace(region_bytes()) };
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_shmem_startup() {
    // SAFETY: shmem startup runs in the postmaster (or a standalone backend)
    // while no other process is attached.
    unsafe {
        if let Some(previous) = PREV_SHMEM_STARTUP_HOOK {
            previous();
        }
    }
    let live = LIVE_HEADER.load(Ordering::Acquire);
    if live.is_null() {
        start_in_shared_memory();
    } else if REGION.load(Ordering::Acquire).is_null() {
        // SAFETY: the live mapping holds the header and then the map region.
        start_in_live_file(unsafe { (live as *mut u8).add(LIVE_HEADER_BYTES) });
    } else {
        // Shared memory was re-created after a process crashed; the live map
        // was not, and it holds every mark up to the crash.
        log!("ptrack: kept the live map across the restart of the server processes");
        if let Some(map) = shared_map() {
            forget_side_forks_after_crash(&map);
            // A flush the crash interrupted took dirty bits it never wrote.
            map.set_delta_position(None);
        }
        register_final_flush();
    }
}

/// A process killed between a block's write and its mark leaves nothing that
/// redo writes again for the forks the WAL does not carry: after a crash they
/// are reported in full until the next checkpoint. A clean shutdown kills no
/// process mid-write; a map loaded from its file after a crash keeps none of
/// the file's side-fork position (see `load`).
fn forget_side_forks_after_crash(map: &LsnMap<'_>) {
    map.forget_side_forks();
}

fn start_in_shared_memory() {
    // SAFETY: `ShmemInitStruct` under `AddinShmemInitLock` is how PostgreSQL
    // hands out the space requested in `on_shmem_request`.
    let (region, found) = unsafe {
        // AddinShmemInitLock is entry 21 of the main LWLock array (lwlocklist.h).
        let lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock;
        pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let raw =
            pg_sys::ShmemInitStruct(REGION_NAME.as_ptr(), region_bytes(), &mut found) as *mut u8;
        let region = raw.add(raw.align_offset(ALIGNMENT_SLACK));
        if !found {
            std::ptr::write_bytes(region, 0, LsnMap::region_size(slot_count()));
        }
        pg_sys::LWLockRelease(lock);
        (region, found)
    };
    REGION.store(region, Ordering::Release);
    if let (false, Some(map)) = (found, shared_map()) {
        let Some(verdict) = start_verdict() else {
            REGION.store(std::ptr::null_mut(), Ordering::Release);
            return;
        };
        start_map(&map, &verdict);
    }
    register_final_flush();
}

/// [`verified_map_file`], keeping the cluster's facts it read for every map
/// file written from now on.
fn start_verdict() -> Option<MapFileVerdict> {
    let verdict = verified_map_file(slot_count())?;
    SYSTEM_IDENTIFIER.store(verdict.system_identifier, Ordering::Release);
    DATA_CHECKSUM_VERSION.store(verdict.data_checksum_version, Ordering::Release);
    Some(verdict)
}

/// Fills a cleared map from a verified map file, or starts a new one as the
/// verdict says. In WAL mode the follower starts a new map where it starts
/// reading, never below the verdict's floor.
fn start_map(map: &LsnMap<'_>, verdict: &MapFileVerdict) {
    let loaded = match (&verdict.file, &verdict.resized) {
        (Some(file), _) => {
            load(map, file, verdict.crash_recovery_on.is_none()).then(|| *file.meta())
        }
        (None, Some(old)) => resize::carry_over_resized(map, old),
        (None, None) => None,
    };
    match loaded {
        Some(meta) => {
            if let (Some(timeline), Some(TrackingMode::Hooks)) =
                (verdict.crash_recovery_on, settings::active_mode())
            {
                mark_what_recovery_replays(map, meta.checkpoint_redo, timeline, verdict);
            }
        }
        None => {
            map.set_init_at_least(verdict.new_map.floor);
            match (verdict.new_map.init_now, settings::active_mode()) {
                (Some(init), Some(TrackingMode::Hooks)) => {
                    let init = map.start_tracking_at(init);
                    log!("ptrack: new map complete from init LSN {init}");
                }
                (Some(init), Some(TrackingMode::Wal)) => {
                    NEW_MAP_READ_FROM.store(init.0, Ordering::Release);
                }
                _ => {}
            }
        }
    }
}

fn start_in_live_file(region: *mut u8) {
    // SAFETY: `region` is the live mapping's map part, `LsnMap::region_size`
    // bytes at a 64-byte offset into a page-aligned mapping.
    let Some(map) = (unsafe { LsnMap::from_region(region, slot_count()) }) else {
        return;
    };
    let Some(verdict) = start_verdict() else {
        return;
    };
    let Some(header) = live_header() else { return };
    let identity = match live_identity(system_identifier(), slot_count()) {
        Ok(identity) => identity,
        Err(error) => {
            warning!("ptrack: cannot identify this boot ({error}); not resuming the live map");
            LiveIdentity {
                system_identifier: system_identifier(),
                slot_count: slot_count() as u64,
                boot_id: [0; 16],
            }
        }
    };
    // A live map started from a resized file continues it as well: after an
    // immediate stop before the first checkpoint at the new size, the old
    // file is still the one on disk, and the live map holds its answers.
    let file_redo = match (&verdict.file, &verdict.resized) {
        (Some(file), _) => Some(file.meta().checkpoint_redo),
        (None, Some(old)) => Some(old.meta().checkpoint_redo),
        (None, None) => None,
    };
    // In WAL mode the follower reads again from the file's position whatever
    // the live map holds beyond it: resuming would gain nothing.
    let hook_mode = settings::active_mode() == Some(TrackingMode::Hooks);
    match header.resumable(&identity, file_redo) {
        Ok(()) if hook_mode && identity.boot_id != [0; 16] => {
            map.set_flushed_redo(header.base_redo());
            // The file on disk was checked only by its header: the first
            // flush writes it whole again rather than append to it.
            map.set_delta_position(None);
            if verdict.crash_recovery_on.is_some() {
                forget_side_forks_after_crash(&map);
            }
            log!(
                "ptrack: resumed the live map: marks made since the checkpoint at REDO {} survived \
                 the stop (init LSN {})",
                header.base_redo(),
                map.init_lsn()
            );
        }
        _ => {
            // SAFETY: no other process is attached yet; the header is rewritten
            // in place before anyone reads it.
            unsafe {
                let base = (header as *const LiveHeader).cast_mut();
                base.write(LiveHeader::new(
                    &identity,
                    file_redo.unwrap_or(Lsn::INVALID),
                ));
            }
            // A file to load replaces every word (or empties the map if its
            // CRC fails): only the state needs clearing for it.
            if verdict.file.is_some() {
                map.reset_state();
            } else {
                map.reset();
            }
            start_map(&map, &verdict);
            if verdict.file.is_some() && !map.flushed_redo().is_valid() {
                // The file failed its CRC during the load: the new map does
                // not continue it, and is resumed only once it was flushed.
                header.set_base_redo(Lsn::INVALID);
            }
        }
    }
    REGION.store(region, Ordering::Release);
    register_final_flush();
}

/// WAL mode: where the follower of a new map may start reading, if that WAL
/// is still there when it starts: a restored backup's start (recovery
/// replays from it), a clean shutdown's checkpoint. The follower may start
/// only after the checkpoint that ends recovery has moved the REDO past it.
/// Set in the postmaster, inherited by the follower; 0: none.
static NEW_MAP_READ_FROM: AtomicU64 = AtomicU64::new(0);

/// See [`NEW_MAP_READ_FROM`].
pub fn new_map_read_from() -> Lsn {
    Lsn(NEW_MAP_READ_FROM.load(Ordering::Acquire))
}

/// Where the WAL read at start after a crash ended; 0 when none was read or
/// its end was checked against the checkpoint that ended recovery. Set in the
/// postmaster, inherited by the checkpointer.
static CRASH_SCAN_END: AtomicU64 = AtomicU64::new(0);
/// The timeline that WAL was read on.
static CRASH_SCAN_TIMELINE: AtomicU32 = AtomicU32::new(0);

/// The live map was lost in a crash (tmpfs emptied by an OS crash) and the
/// map file is loaded: the marks since the file's REDO come from the WAL that
/// crash recovery replays (see `wal_marks::mark_wal_after_crash`).
fn mark_what_recovery_replays(
    map: &LsnMap<'_>,
    from: Lsn,
    timeline: u32,
    verdict: &MapFileVerdict,
) {
    match wal_marks::mark_wal_after_crash(map, from, timeline, Lsn(u64::MAX)) {
        Some(end) => {
            CRASH_SCAN_TIMELINE.store(timeline, Ordering::Release);
            CRASH_SCAN_END.store(end.0, Ordering::Release);
        }
        None => {
            warning!(
                "ptrack: cannot read the WAL of PostgreSQL {} to mark what crash recovery \
                 replays; starting a new map",
                server::major_version()
            );
            map.reset();
            map.set_init_at_least(verdict.new_map.floor);
        }
    }
}

/// At each map flush after a start that read the WAL: the first checkpoint
/// whose REDO is at or past the scan's end is the one that ended recovery,
/// and it must begin where the WAL the scan read ends. Recovery itself may
/// have written there first: where the WAL ended in a record cut short by the
/// crash, it writes an "overwrite contrecord" record after it, so the WAL
/// between the scan's end and that REDO is read now that it is complete. If
/// it still does not reach the REDO, recovery replayed WAL the scan could
/// not read (a timeline switch, say), and nothing before that checkpoint can
/// be vouched for.
fn check_crash_scan(map: &LsnMap<'_>, redo: Lsn) {
    let end = Lsn(CRASH_SCAN_END.load(Ordering::Acquire));
    if !end.is_valid() || redo < end {
        return;
    }
    CRASH_SCAN_END.store(0, Ordering::Release);
    let page = server::wal_page_bytes();
    if startup::scan_reached_recovery_end(end, redo, page) {
        return;
    }
    let timeline = CRASH_SCAN_TIMELINE.load(Ordering::Acquire);
    let reached = wal_marks::mark_wal_after_crash(map, end, timeline, redo)
        .is_some_and(|more| startup::scan_reached_recovery_end(more, redo, page));
    if !reached {
        map.forget_before(redo);
        warning!(
            "ptrack: crash recovery replayed WAL up to {redo}, beyond the {end} ptrack read at \
             start; changes before {redo} are now unknown (new init LSN)"
        );
    }
}

/// Writes the map at the end of a checkpoint's or restartpoint's sync phase
/// (hook mode's sync hook), stamped with that checkpoint's REDO LSN.
pub fn flush_at_checkpoint() {
    let Some(map) = shared_map() else {
        return;
    };
    let redo = server::checkpoint_redo();
    check_crash_scan(&map, redo);
    // A checkpoint, not a restartpoint: its REDO is past every LSN of the WAL
    // before this start (see `LsnMap::track_side_forks_from`).
    if settings::active_mode() == Some(TrackingMode::Hooks) && !server::in_recovery() {
        map.track_side_forks_from(redo);
    }
    if let Err(error) = persist_map(&map, redo) {
        warning!(
            "ptrack: could not write \"global/{}\": {error}; the map on disk is stale and will be \
             discarded at the next start unless a later checkpoint writes it",
            mapfile::MAP_FILE_NAME
        );
    }
}

/// Writes the map to `global/`, stamped with the checkpoint REDO `redo`: the
/// regions changed since the last flush appended to the map file as a delta
/// record, or the whole map file (see `ptrack_core::mapfile::flush_map`), through the
/// developer settings' fault-injection points.
pub fn persist_map(map: &LsnMap<'_>, redo: Lsn) -> std::io::Result<()> {
    let meta = MapFileMeta {
        system_identifier: system_identifier(),
        slot_count: map.slot_count() as u64,
        init_lsn: map.init_lsn(),
        checkpoint_redo: redo,
        data_checksum_version: data_checksum_version(),
        wal_tracked_through: map.wal_tracked_through(),
        base_nonce: 0,
        side_forks_tracked_from: map.side_forks_tracked_from(),
    };
    let pause =
        std::time::Duration::from_millis(settings::DEBUG_FLUSH_PAUSE_MS.get().max(0) as u64);
    let fail_after = settings::DEBUG_FLUSH_FAIL_AFTER_CHUNKS.get().max(0) as usize;
    let mut inject_faults = |chunks_written: usize| {
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
        match fail_after {
            0 => Ok(()),
            n if chunks_written >= n => Err(std::io::Error::other(format!(
                "injected by ptrack.debug_flush_fail_after_chunks = {n}"
            ))),
            _ => Ok(()),
        }
    };
    if settings::DEBUG_FULL_FLUSHES.get() == 1 {
        map.set_delta_position(None);
    }
    let global = server::data_dir().join("global");
    let flushed = mapfile::flush_map(&global, map, &meta, &mut inject_faults)?;
    flushed_at(map, redo);
    match flushed {
        Flushed::Full { bytes } => {
            debug1!("ptrack: wrote the full map ({bytes} bytes) at REDO {redo}")
        }
        Flushed::Delta { bytes, regions } => debug1!(
            "ptrack: appended {regions} changed regions ({bytes} bytes) to \"global/{}\" at REDO \
             {redo}",
            meta.mode().map_file_name()
        ),
    }
    Ok(())
}

/// Registers [`final_flush`] in the postmaster. Re-registered at every shmem
/// startup: re-creating shared memory after a crash clears the callbacks.
fn register_final_flush() {
    // SAFETY: registering an exit callback during shmem startup, in the
    // postmaster (children drop inherited callbacks). It runs before
    // PostgreSQL detaches its own shared memory, registered earlier.
    unsafe { pg_sys::on_shmem_exit(Some(final_flush), pg_sys::Datum::from(0)) };
}

/// At the postmaster's exit after a clean shutdown, writes the map once more,
/// stamped with pg_control's latest checkpoint: a standby skips its shutdown
/// restartpoint when no checkpoint record arrived since the last one, and then
/// no flush would carry the marks made since. In hook mode the live file
/// then stays, holding exactly what the file holds, so that the next start
/// resumes it without reading the map file (a switchover's restart costs no
/// map read); WAL mode never resumes a live map and gives its memory back.
/// After an immediate stop nothing happens here and the live file stays.
#[pg_guard]
unsafe extern "C-unwind" fn final_flush(_code: i32, _arg: pg_sys::Datum) {
    let Ok(control) = server::read_control_file() else {
        return;
    };
    let Some(map) = shared_map() else { return };
    if !control.cleanly_shut_down {
        return;
    }
    // Hook mode: a primary's shutdown checkpoint flushed the map in its sync
    // phase and nothing was written after it. A standby may have skipped its
    // shutdown restartpoint, keeping the REDO of an older flush while replay
    // marked more since: it is always written.
    let flushed = settings::active_mode() == Some(TrackingMode::Hooks)
        && control.primary_shut_down
        && map.flushed_redo() == control.latest_checkpoint_redo;
    let written = if flushed {
        Ok(())
    } else {
        persist_map(&map, control.latest_checkpoint_redo)
    };
    match written {
        Ok(()) => {
            if settings::active_mode() != Some(TrackingMode::Hooks) {
                if let Some(path) = LIVE_PATH.get() {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        Err(error) => {
            warning!("ptrack: could not write the map at shutdown: {error}; the live map is kept")
        }
    }
}

/// Loads a map file whose header passed every check; `false`, with the
/// map left empty and a WARNING, when its words fail their CRC. After a
/// clean shutdown (`shut_down_cleanly`) the map written at it holds every
/// mark made before, so the free space and visibility maps stay answered
/// block by block from where the file says; after a crash they are not
/// (see `forget_side_forks_after_crash`).
fn load(
    map: &LsnMap<'_>,
    file: &HeaderVerifiedMapFile<memmap2::Mmap>,
    shut_down_cleanly: bool,
) -> bool {
    let mode = file.meta().mode();
    if let Err(error) = file.load_into(map) {
        warn_discarded(&error, mode);
        return false;
    }
    map.set_flushed_redo(file.meta().checkpoint_redo);
    map.set_wal_tracked_through(file.meta().wal_tracked_through);
    let side_forks_from = file.meta().side_forks_tracked_from;
    if shut_down_cleanly && mode == TrackingMode::Hooks && side_forks_from.is_valid() {
        map.track_side_forks_from(side_forks_from);
    }
    let meta = file.meta();
    let position = match meta.mode() {
        TrackingMode::Hooks => format!("written at checkpoint REDO {}", meta.checkpoint_redo),
        TrackingMode::Wal => format!("WAL read up to {}", meta.wal_tracked_through),
    };
    let applied = file.delta_applied();
    log!(
        "ptrack: loaded map \"global/{}\" ({} slots, init LSN {}, {position}) with {} delta \
         records ({} bytes) into {}",
        meta.mode().map_file_name(),
        map.slot_count(),
        meta.init_lsn,
        applied.records,
        applied.len,
        backing()
    );
    true
}
