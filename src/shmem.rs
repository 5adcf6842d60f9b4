//! The map in shared memory: sizing, creation, loading from disk, and the one
//! pointer every process reaches it through.

use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use pgrx::pg_sys;
use pgrx::prelude::*;
use ptrack_core::mapfile::{self, Expectation, MapFileError};
use ptrack_core::LsnMap;

use crate::server;

/// Start of the shared region, or null while there is none (tracking off, or
/// before shared memory exists). Set by the postmaster at every shared memory
/// (re)initialization and inherited by every forked child.
static REGION: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static SLOT_COUNT: AtomicUsize = AtomicUsize::new(0);
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

/// The shared map, if tracking is on and shared memory is set up.
#[inline(always)]
pub fn shared_map() -> Option<LsnMap<'static>> {
    let region = REGION.load(Ordering::Acquire);
    // SAFETY: a non-null REGION was set in `on_shmem_startup` to a region of
    // `LsnMap::region_size(SLOT_COUNT)` aligned bytes in shared memory, which
    // stays mapped for the life of every process that can see the pointer.
    unsafe { LsnMap::from_region(region, SLOT_COUNT.load(Ordering::Acquire)) }
}

pub fn system_identifier() -> u64 {
    SYSTEM_IDENTIFIER.load(Ordering::Acquire)
}

pub fn data_checksum_version() -> u32 {
    DATA_CHECKSUM_VERSION.load(Ordering::Acquire)
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
    LsnMap::region_size(SLOT_COUNT.load(Ordering::Acquire)) + ALIGNMENT_SLACK
}

#[pg_guard]
unsafe extern "C-unwind" fn on_shmem_request() {
    // SAFETY: called by the postmaster in its shmem-request phase, the only
    // time `RequestAddinShmemSpace` is allowed.
    unsafe {
        if let Some(previous) = PREV_SHMEM_REQUEST_HOOK {
            previous();
        }
        pg_sys::RequestAddinShmemSpace(region_bytes());
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_shmem_startup() {
    // SAFETY: shmem startup runs in the postmaster (or a standalone backend)
    // while no other process is attached; `ShmemInitStruct` under
    // `AddinShmemInitLock` is how PostgreSQL hands out the requested space.
    unsafe {
        if let Some(previous) = PREV_SHMEM_STARTUP_HOOK {
            previous();
        }
        // AddinShmemInitLock is entry 21 of the main LWLock array (lwlocklist.h).
        let lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock;
        pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let raw =
            pg_sys::ShmemInitStruct(REGION_NAME.as_ptr(), region_bytes(), &mut found) as *mut u8;
        let region = raw.add(raw.align_offset(ALIGNMENT_SLACK));
        if !found {
            std::ptr::write_bytes(
                region,
                0,
                LsnMap::region_size(SLOT_COUNT.load(Ordering::Acquire)),
            );
        }
        pg_sys::LWLockRelease(lock);
        REGION.store(region, Ordering::Release);
        if !found {
            load_map_from_disk();
        }
    }
}

/// Fills the freshly zeroed shared map from `global/ptrack.map`, or leaves it
/// empty (tracking restarts, init LSN to be set by the first mark) with a
/// WARNING saying why.
fn load_map_from_disk() {
    let Some(map) = shared_map() else { return };
    let global = server::data_dir().join("global");
    let _ = std::fs::remove_file(global.join(mapfile::TEMP_FILE_NAME));
    let control = match server::read_control_file() {
        Ok(control) => control,
        Err(error) => {
            warning!("ptrack: cannot read pg_control ({error}); discarding the map and starting a new one");
            return;
        }
    };
    SYSTEM_IDENTIFIER.store(control.system_identifier, Ordering::Release);
    DATA_CHECKSUM_VERSION.store(control.data_checksum_version, Ordering::Release);
    let expect = Expectation {
        system_identifier: control.system_identifier,
        slot_count: map.slot_count() as u64,
        latest_checkpoint_redo: control.latest_checkpoint_redo,
        data_checksum_version: control.data_checksum_version,
        backup_label_present: server::data_dir().join("backup_label").exists(),
    };
    let path = global.join(mapfile::MAP_FILE_NAME);
    match mapfile::open_verified(&path, &expect) {
        Ok(file) => {
            map.load(file.meta().init_lsn, file.slots());
            map.set_flushed_redo(file.meta().checkpoint_redo);
            log!(
                "ptrack: loaded map \"global/{}\" ({} slots, init LSN {}, written at checkpoint REDO {})",
                mapfile::MAP_FILE_NAME,
                map.slot_count(),
                file.meta().init_lsn,
                file.meta().checkpoint_redo
            );
        }
        Err(MapFileError::Missing) => warning!(
            "ptrack: map file \"global/{}\" not found; starting a new map: changes before its init LSN are unknown",
            mapfile::MAP_FILE_NAME
        ),
        Err(error) => {
            map.reset();
            warning!(
                "ptrack: discarding map file \"global/{}\": {error}; starting a new map: changes before its init LSN are unknown",
                mapfile::MAP_FILE_NAME
            );
        }
    }
}
