//! The shared map: where it lives, how it is filled at start, and the one
//! pointer every process reaches it through.
//!
//! It lives in a file on tmpfs, `/dev/shm/ptrack.<system id>.<dev>.<inode of
//! PGDATA>.map`, mapped shared by the postmaster and inherited by every child
//! (see `ptrack_core::live`): its marks survive a crash of the server's
//! processes. Where that file cannot be set up (no tmpfs, too little room) the
//! map lives in PostgreSQL's shared memory instead and marks made since the
//! last checkpoint rely on redo after a crash.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;

use pgrx::pg_sys;
use pgrx::prelude::*;
use ptrack_core::live::{self, LiveFileStat, LiveHeader, LiveIdentity};
use ptrack_core::mapfile::{self, Expectation, MapFileError, TrackingMode, VerifiedMapFile};
use ptrack_core::startup::{self, new_map_start, BackupLabel, NewMapStart, StartFacts};
use ptrack_core::{Lsn, LsnMap};

use crate::{server, settings, wal_marks};

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
const LIVE_HEADER_BYTES: usize = std::mem::size_of::<LiveHeader>();

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
    // SAFETY: non-null only once `attach_live_file` mapped the file, which is
    // never unmapped; the header is only accessed through `LiveHeader`'s atomics
    // after start-up.
    unsafe { LIVE_HEADER.load(Ordering::Acquire).as_ref() }
}

pub fn system_identifier() -> u64 {
    SYSTEM_IDENTIFIER.load(Ordering::Acquire)
}

pub fn data_checksum_version() -> u32 {
    DATA_CHECKSUM_VERSION.load(Ordering::Acquire)
}

/// A map flush at `redo` succeeded: the live map now continues that file.
pub fn flushed_at(map: &LsnMap<'_>, redo: Lsn) {
    map.set_flushed_redo(redo);
    if let Some(header) = live_header() {
        header.set_base_redo(redo);
    }
}

/// Where the map lives, for `ptrack_status`-style reporting in logs.
pub fn backing() -> &'static str {
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
    if let Err(error) = attach_live_file() {
        log!(
            "ptrack: keeping the map in shared memory ({error}); after a crash, marks since the \
             last checkpoint come back through redo for WAL-logged changes only"
        );
        // SAFETY: as above.
        unsafe { pg_sys::RequestAddinShmemSpace(region_bytes()) };
    }
}

fn live_identity(system_identifier: u64) -> std::io::Result<LiveIdentity> {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?;
    let boot_id = live::parse_boot_id(&boot_id)
        .ok_or_else(|| std::io::Error::other("unreadable /proc/sys/kernel/random/boot_id"))?;
    Ok(LiveIdentity {
        system_identifier,
        slot_count: slot_count() as u64,
        boot_id,
    })
}

/// The live file of this data directory: named by the cluster and by the data
/// directory itself, since a standby on the same machine shares the cluster's
/// system identifier.
pub fn live_file_path() -> std::io::Result<PathBuf> {
    let control = server::read_control_file()?;
    let data_dir = std::fs::metadata(server::data_dir())?;
    Ok(PathBuf::from(format!(
        "/dev/shm/ptrack.{}.{}.{}.map",
        control.system_identifier,
        data_dir.dev(),
        data_dir.ino()
    )))
}

/// Creates or opens the live file and maps it shared. The contents are judged
/// at shmem startup.
fn attach_live_file() -> std::io::Result<()> {
    let path = live_file_path()?;
    // O_NOFOLLOW: a symbolic link planted under the name is refused (ELOOP),
    // never followed to a file the server's user can write.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|error| refused(&path, error.to_string()))?;
    let stat = file.metadata()?;
    let stat = LiveFileStat {
        is_regular: stat.file_type().is_file(),
        owner: stat.uid(),
        mode: stat.mode(),
        links: stat.nlink(),
    };
    // SAFETY: geteuid cannot fail.
    let server_user = unsafe { libc::geteuid() };
    live::check_live_file(&stat, server_user).map_err(|why| refused(&path, why.to_string()))?;
    let bytes = LIVE_HEADER_BYTES + LsnMap::region_size(slot_count());
    if file.metadata()?.len() != bytes as u64 {
        // Another map size: its contents are of no use.
        file.set_len(0)?;
        file.set_len(bytes as u64)?;
    }
    reserve(&file, bytes)?;
    // SAFETY: the file was just checked to be a regular file of the server's
    // user, mode 0600, with no other name: no other user can open, resize or
    // write it. It is only ever accessed through this shared mapping, by atomics.
    let mapping = unsafe { memmap2::MmapOptions::new().len(bytes).map_mut(&file)? };
    let base = Box::leak(Box::new(mapping)).as_mut_ptr();
    // The mapping is page-aligned, so the header and the region after its 64
    // bytes are aligned for `LiveHeader` and `LsnMap`.
    LIVE_HEADER.store(base.cast(), Ordering::Release);
    let _ = LIVE_PATH.set(path);
    Ok(())
}

/// A live file that must not be used, said as a WARNING: the map then lives
/// in shared memory, and a local user may be trying something.
fn refused(path: &std::path::Path, why: String) -> std::io::Error {
    warning!(
        "ptrack: not using \"{}\" for the live map: {why}; the map is kept in shared memory \
         instead, so marks since the last checkpoint rely on redo after a crash",
        path.display()
    );
    std::io::Error::other(format!("\"{}\" refused: {why}", path.display()))
}

/// Allocates the file's blocks now: a write to a hole of a full tmpfs would
/// raise SIGBUS inside a critical section.
fn reserve(file: &File, bytes: usize) -> std::io::Result<()> {
    // SAFETY: a plain system call on an open descriptor.
    let result = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, bytes as libc::off_t) };
    match result {
        0 => Ok(()),
        errno => Err(std::io::Error::from_raw_os_error(errno)),
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
        register_final_flush();
    }
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
        let Some(verdict) = verified_map_file() else {
            REGION.store(std::ptr::null_mut(), Ordering::Release);
            return;
        };
        start_map(&map, &verdict);
    }
    register_final_flush();
}

/// Fills a cleared map from a verified map file, or starts a new one as the
/// verdict says. In WAL mode the follower starts a new map where it starts
/// reading, never below the verdict's floor.
fn start_map(map: &LsnMap<'_>, verdict: &MapFileVerdict) {
    match &verdict.file {
        Some(file) => {
            load(map, file);
            if let (Some(timeline), Some(TrackingMode::Hooks)) =
                (verdict.crash_recovery_on, settings::active_mode())
            {
                mark_what_recovery_replays(map, file.meta().checkpoint_redo, timeline, verdict);
            }
        }
        None => {
            map.set_init_at_least(verdict.new_map.floor);
            if let (Some(init), Some(TrackingMode::Hooks)) =
                (verdict.new_map.init_now, settings::active_mode())
            {
                let init = map.start_tracking_at(init);
                log!("ptrack: new map complete from init LSN {init}");
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
    let Some(verdict) = verified_map_file() else {
        return;
    };
    let Some(header) = live_header() else { return };
    let identity = match live_identity(system_identifier()) {
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
    let file_redo = verdict.file.as_ref().map(|f| f.meta().checkpoint_redo);
    // In WAL mode the follower reads again from the file's position whatever
    // the live map holds beyond it: resuming would gain nothing.
    let hook_mode = settings::active_mode() == Some(TrackingMode::Hooks);
    match header.resumable(&identity, file_redo) {
        Ok(()) if hook_mode && identity.boot_id != [0; 16] => {
            map.set_flushed_redo(header.base_redo());
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
            map.reset();
            start_map(&map, &verdict);
        }
    }
    REGION.store(region, Ordering::Release);
    register_final_flush();
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
pub fn check_crash_scan(map: &LsnMap<'_>, redo: Lsn) {
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
/// no flush would carry the marks made since. Afterwards the live file is
/// not needed and gives its memory back. After an immediate stop nothing
/// happens here and the live file stays for the next start.
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
        crate::hooks::persist_map(&map, control.latest_checkpoint_redo)
    };
    match written {
        Ok(()) => {
            if let Some(path) = LIVE_PATH.get() {
                let _ = std::fs::remove_file(path);
            }
        }
        Err(error) => {
            warning!("ptrack: could not write the map at shutdown: {error}; the live map is kept")
        }
    }
}

/// The map file at start if every check passes, and otherwise how a new map
/// starts; `None` when tracking cannot start at all.
struct MapFileVerdict {
    file: Option<VerifiedMapFile<memmap2::Mmap>>,
    new_map: NewMapStart,
    /// The server did not shut down cleanly: crash recovery will replay the
    /// WAL from the latest checkpoint, on this timeline.
    crash_recovery_on: Option<u32>,
}

/// Reads `global/pg_control`, `backup_label` and the map file, and returns the
/// map file if every check passes; otherwise logs a WARNING saying why it is
/// discarded.
fn verified_map_file() -> Option<MapFileVerdict> {
    let global = server::data_dir().join("global");
    let mode = settings::active_mode().unwrap_or(TrackingMode::Hooks);
    let other_mode = match mode {
        TrackingMode::Hooks => TrackingMode::Wal,
        TrackingMode::Wal => TrackingMode::Hooks,
    };
    // A map of the other mode is of no use to this one (switching modes
    // starts a new map); its LSNs are below pg_control's by now anyway.
    for name in [
        mode.temp_file_name(),
        other_mode.map_file_name(),
        other_mode.temp_file_name(),
    ] {
        let _ = std::fs::remove_file(global.join(name));
    }
    let name = mode.map_file_name();
    let control = match server::read_control_file() {
        Ok(control) => control,
        Err(error) => {
            // The postmaster read it moments ago; nothing is known of the
            // LSNs used before, so no map may vouch for any of them.
            warning!(
                "ptrack: cannot read pg_control ({error}); change tracking is off until the next \
                 start, and ptrack's functions fail"
            );
            return None;
        }
    };
    SYSTEM_IDENTIFIER.store(control.system_identifier, Ordering::Release);
    DATA_CHECKSUM_VERSION.store(control.data_checksum_version, Ordering::Release);
    let backup_label = server::read_backup_label();
    let mut facts = StartFacts {
        primary_shut_down_cleanly: control.primary_shut_down,
        control_highest: control
            .latest_checkpoint
            .max(control.latest_checkpoint_redo)
            .max(control.min_recovery_point),
        control_redo: control.latest_checkpoint_redo,
        backup_label: backup_label
            .as_ref()
            .and_then(|text| BackupLabel::parse(text)),
        rejected_map_highest: None,
    };
    let expect = Expectation {
        system_identifier: control.system_identifier,
        slot_count: slot_count() as u64,
        latest_checkpoint_redo: control.latest_checkpoint_redo,
        data_checksum_version: control.data_checksum_version,
        backup_label_present: backup_label.is_some(),
        mode,
    };
    let path = global.join(name);
    let file = match mapfile::open_verified(&path, &expect) {
        Ok(file) => Some(file),
        Err(MapFileError::Missing) => {
            warning!(
                "ptrack: map file \"global/{name}\" not found; starting a new map: changes before its init LSN are unknown"
            );
            None
        }
        Err(error) => {
            if let Some(text) = error.ptrack24_text(&path.display().to_string()) {
                warning!("{text}");
            }
            warning!(
                "ptrack: discarding map file \"global/{name}\": {error}; starting a new map: changes before its init LSN are unknown"
            );
            // After pg_rewind or a restore, LSNs the old map saw may lie ahead
            // of everything this server will replay first.
            facts.rejected_map_highest = recorded_highest(&path, control.system_identifier);
            None
        }
    };
    Some(MapFileVerdict {
        file,
        new_map: new_map_start(&facts),
        crash_recovery_on: (!control.cleanly_shut_down).then_some(control.timeline),
    })
}

/// The highest LSN the rejected map file at `path` records, read through a
/// mapping: it can be gigabytes, and a start must not fail for want of memory.
fn recorded_highest(path: &std::path::Path, system_identifier: u64) -> Option<Lsn> {
    let file = File::open(path).ok()?;
    // SAFETY: a private read-only mapping of a file in the data directory that
    // only this (starting) server writes; it is dropped before anything could.
    let bytes = unsafe { memmap2::Mmap::map(&file) }.ok()?;
    mapfile::highest_lsn_recorded(&bytes, system_identifier)
}

fn load(map: &LsnMap<'_>, file: &VerifiedMapFile<memmap2::Mmap>) {
    map.load(file.meta().init_lsn, file.words());
    map.set_flushed_redo(file.meta().checkpoint_redo);
    map.set_wal_tracked_through(file.meta().wal_tracked_through);
    let meta = file.meta();
    let position = match meta.mode() {
        TrackingMode::Hooks => format!("written at checkpoint REDO {}", meta.checkpoint_redo),
        TrackingMode::Wal => format!("WAL read up to {}", meta.wal_tracked_through),
    };
    log!(
        "ptrack: loaded map \"global/{}\" ({} slots, init LSN {}, {position}) into {}",
        meta.mode().map_file_name(),
        map.slot_count(),
        meta.init_lsn,
        backing()
    );
}
