//! ptrack: block-level change tracking for PostgreSQL incremental backups.
//!
//! This crate is the thin pgrx shell around `ptrack-core`:
//!
//! * [`server`]: version-specific server access (hook variables, LSNs, layout);
//! * [`shmem`]: the map in shared memory and its loading at start;
//! * [`hooks`]: marking written and copied blocks, flushing at checkpoints;
//! * [`sql`]: the ptrack 2.4 SQL API.

use pgrx::prelude::*;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};
use ptrack_core::mapfile;

mod hooks;
mod server;
mod shmem;
mod sql;

pgrx::pg_module_magic!();

/// The API version pg_probackup checks (it needs 2.x).
pub const PTRACK_VERSION: &str = "2.4";

/// `ptrack.map_size`: the map's size in MB; 0 turns tracking off.
pub static MAP_SIZE_MB: GucSetting<i32> = GucSetting::<i32>::new(DEFAULT_MAP_SIZE_MB);
const DEFAULT_MAP_SIZE_MB: i32 = 64;
/// ptrack 2.4's upper bound: 32 GB of map tracks about 32 TB of data well.
const MAX_MAP_SIZE_MB: i32 = 32 * 1024;

/// Developer settings for fault-injection tests, hidden from `SHOW ALL` and the
/// sample file like PostgreSQL's own developer options; inert at 0.
/// `ptrack.debug_flush_pause_ms`: sleep this long after every chunk of a map
/// flush, so a test can stop the server in the middle of one.
pub static DEBUG_FLUSH_PAUSE_MS: GucSetting<i32> = GucSetting::<i32>::new(0);
/// `ptrack.debug_flush_fail_after_chunks`: fail every flush with an I/O error
/// after this many chunks, as a full disk would.
pub static DEBUG_FLUSH_FAIL_AFTER_CHUNKS: GucSetting<i32> = GucSetting::<i32>::new(0);

/// Raises an ERROR with a hint; never returns.
#[track_caller]
pub(crate) fn raise(code: PgSqlErrorCode, message: String, hint: &str) -> ! {
    pgrx::pg_sys::panic::ErrorReport::new(code, message, "ptrack")
        .set_hint(hint)
        .report(PgLogLevel::ERROR);
    unreachable!("an ERROR report unwinds")
}

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // SAFETY: a plain read of a server global during library load.
    if !unsafe { pgrx::pg_sys::process_shared_preload_libraries_in_progress } {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "ptrack must be loaded at server start".into(),
            "add ptrack to shared_preload_libraries and restart the server",
        );
    }
    GucRegistry::define_int_guc(
        c"ptrack.map_size",
        c"Size of the ptrack change map in MB; 0 turns change tracking off.",
        c"About 1/1000 of the data directory's size keeps false positives rare. Takes effect at server start.",
        &MAP_SIZE_MB,
        0,
        MAX_MAP_SIZE_MB,
        GucContext::Postmaster,
        GucFlags::UNIT_MB,
    );
    let developer = GucFlags::NO_SHOW_ALL; // pgrx folds GUC_NOT_IN_SAMPLE into it
    GucRegistry::define_int_guc(
        c"ptrack.debug_flush_pause_ms",
        c"Developer option: pause after every chunk of a map flush (fault-injection tests).",
        c"",
        &DEBUG_FLUSH_PAUSE_MS,
        0,
        60_000,
        GucContext::Sighup,
        developer | GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"ptrack.debug_flush_fail_after_chunks",
        c"Developer option: fail map flushes after this many chunks (fault-injection tests).",
        c"",
        &DEBUG_FLUSH_FAIL_AFTER_CHUNKS,
        0,
        i32::MAX,
        GucContext::Sighup,
        developer,
    );
    let map_size_mb = MAP_SIZE_MB.get();
    if map_size_mb == 0 {
        if let Ok(live) = shmem::live_file_path() {
            let _ = std::fs::remove_file(live);
        }
        match mapfile::remove_map_files(&server::data_dir().join("global")) {
            Ok(removed) if !removed.is_empty() => {
                log!("ptrack: ptrack.map_size = 0: tracking is off, removed {removed:?}")
            }
            Ok(_) => {}
            Err(error) => warning!(
                "ptrack: ptrack.map_size = 0 but the map files could not be removed: {error}"
            ),
        }
        return;
    }
    let core_hooks = server::CoreHooks::find().unwrap_or_else(|missing| {
        raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("ptrack: this server lacks the ptrack core patch (missing {})", missing.join(", ")),
            "build PostgreSQL with the patch from this project's patches/ directory, or set ptrack.map_size = 0",
        )
    });
    shmem::install(shmem::slot_count_for(map_size_mb));
    hooks::install(&core_hooks);
    log!("ptrack: tracking changes with a {map_size_mb} MB map");
}
