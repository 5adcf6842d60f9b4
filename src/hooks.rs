//! The server hooks: marking written blocks, marking copied databases, and
//! flushing the map at the end of every checkpoint's sync phase.

use std::ffi::{c_char, CStr};
use std::sync::OnceLock;

use pgrx::pg_sys;
use pgrx::prelude::*;
use ptrack_core::mapfile::{self, MapFileMeta};
use ptrack_core::{walk, Fork, Lsn, LsnMap, RelFileKey};

use crate::server::{self, BlockHook, CopydirHook, CoreHooks, RelFileBackend, SyncHook};
use crate::{settings, shmem};

/// The hooks that were installed before ours, called first by ours.
struct PreviousHooks {
    mdwrite: Option<BlockHook>,
    mdextend: Option<BlockHook>,
    copydir: Option<CopydirHook>,
    process_sync_requests: Option<SyncHook>,
}

// SAFETY: plain function pointers, written once in the postmaster and only read
// afterwards.
unsafe impl Sync for PreviousHooks {}
unsafe impl Send for PreviousHooks {}

static PREVIOUS: OnceLock<PreviousHooks> = OnceLock::new();

/// Installs ptrack's hooks into the core patch's hook variables.
pub fn install(hooks: &CoreHooks) {
    // SAFETY: `_PG_init` runs once, single-threaded, in the postmaster before
    // any process that calls the hooks exists; the pointers come from
    // `CoreHooks::find` and point at the server's hook variables.
    unsafe {
        let previous = PreviousHooks {
            mdwrite: hooks.mdwrite.replace(Some(on_mdwrite)),
            mdextend: hooks.mdextend.replace(Some(on_mdextend)),
            copydir: hooks.copydir.replace(Some(on_copydir)),
            process_sync_requests: hooks
                .process_sync_requests
                .replace(Some(on_sync_requests_processed)),
        };
        let _ = PREVIOUS.set(previous);
    }
}

fn previous() -> Option<&'static PreviousHooks> {
    PREVIOUS.get()
}

/// Marks one written block. Runs inside critical sections: no allocation, no
/// error, no panic — every step below is a load, a hash or an atomic.
#[inline(always)]
fn mark_block(
    rlocator: &RelFileBackend,
    fork: pg_sys::ForkNumber::Type,
    block: pg_sys::BlockNumber,
) {
    let Some((tablespace, database, relfilenode)) = server::permanent_relation(rlocator) else {
        return;
    };
    let Some(map) = shmem::shared_map() else {
        return;
    };
    // Fork numbers outside 0..=3 do not exist on disk; there is nothing to mark.
    let Some(fork) = Fork::from_number(fork) else {
        return;
    };
    let key = RelFileKey {
        tablespace,
        database,
        relfilenode,
        fork,
    }
    .block(block);
    map.mark(&key, server::current_lsn());
}

unsafe extern "C" fn on_mdwrite(
    rlocator: RelFileBackend,
    fork: pg_sys::ForkNumber::Type,
    block: pg_sys::BlockNumber,
) {
    if let Some(previous) = previous().and_then(|p| p.mdwrite) {
        // SAFETY: a hook installed before ours, called as the server would.
        unsafe { previous(rlocator, fork, block) };
    }
    mark_block(&rlocator, fork, block);
}

unsafe extern "C" fn on_mdextend(
    rlocator: RelFileBackend,
    fork: pg_sys::ForkNumber::Type,
    block: pg_sys::BlockNumber,
) {
    if let Some(previous) = previous().and_then(|p| p.mdextend) {
        // SAFETY: as in `on_mdwrite`.
        unsafe { previous(rlocator, fork, block) };
    }
    mark_block(&rlocator, fork, block);
}

/// A whole database directory was copied (`CREATE DATABASE … STRATEGY
/// file_copy`, `ALTER DATABASE … SET TABLESPACE`, or their redo): mark every
/// block of every file in it. Not a critical section; still, nothing here may
/// raise an error, so any failure makes the map forget everything before now.
unsafe extern "C" fn on_copydir(path: *const c_char) {
    if let Some(previous) = previous().and_then(|p| p.copydir) {
        // SAFETY: as in `on_mdwrite`.
        unsafe { previous(path) };
    }
    let Some(map) = shmem::shared_map() else {
        return;
    };
    let lsn = server::current_lsn();
    let relative = if path.is_null() {
        String::new()
    } else {
        // SAFETY: copydir passes its NUL-terminated destination path.
        unsafe { CStr::from_ptr(path) }
            .to_string_lossy()
            .into_owned()
    };
    let outcome = std::panic::catch_unwind(|| {
        walk::mark_copied_directory(&map, &server::data_dir(), &relative, &server::layout(), lsn)
    });
    let error = match outcome {
        Ok(Ok(_marked)) => return,
        Ok(Err(error)) => error.to_string(),
        Err(_) => "internal error while walking it".to_owned(),
    };
    map.forget_before(lsn);
    warning!(
        "ptrack: could not mark the blocks of copied directory \"{relative}\" ({error}); \
         changes before {lsn} are now unknown to ptrack (new init LSN)"
    );
}

/// The end of a checkpoint's or restartpoint's sync phase: every page dirtied
/// before its REDO LSN has been written, and so marked, by now. Writing the map
/// here makes those marks durable; later writes are replayed after a crash.
unsafe extern "C" fn on_sync_requests_processed() {
    if let Some(previous) = previous().and_then(|p| p.process_sync_requests) {
        // SAFETY: as in `on_mdwrite`.
        unsafe { previous() };
    }
    if std::panic::catch_unwind(flush_map).is_err() {
        warning!("ptrack: internal error while writing the map; the map on disk is stale");
    }
}

fn flush_map() {
    let Some(map) = shmem::shared_map() else {
        return;
    };
    let redo = server::checkpoint_redo();
    shmem::check_crash_scan(&map, redo);
    if let Err(error) = persist_map(&map, redo) {
        warning!(
            "ptrack: could not write \"global/{}\": {error}; the map on disk is stale and will be \
             discarded at the next start unless a later checkpoint writes it",
            mapfile::MAP_FILE_NAME
        );
    }
}

/// Writes the map to `global/ptrack.map`, stamped with the checkpoint REDO
/// `redo`, through the developer settings' fault-injection points.
pub fn persist_map(map: &LsnMap<'_>, redo: Lsn) -> std::io::Result<()> {
    let meta = MapFileMeta {
        system_identifier: shmem::system_identifier(),
        slot_count: map.slot_count() as u64,
        init_lsn: map.init_lsn(),
        checkpoint_redo: redo,
        data_checksum_version: shmem::data_checksum_version(),
        wal_tracked_through: map.wal_tracked_through(),
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
    let global = server::data_dir().join("global");
    mapfile::persist_with(&global, &meta, map.words(), &mut inject_faults)?;
    shmem::flushed_at(map, redo);
    Ok(())
}
