//! ptrack: block-level change tracking for PostgreSQL incremental backups.
//!
//! This crate is the thin pgrx shell around `ptrack-core`:
//!
//! * [`server`]: version-specific server access (hook variables, LSNs, layout);
//! * [`shmem`]: the map in shared memory and its loading at start;
//! * [`hooks`]: marking written and copied blocks, flushing at checkpoints;
//! * [`follower`]: WAL mode, for servers without the core patch;
//! * [`sql`]: the ptrack 2.4 SQL API.

use std::sync::atomic::{AtomicU8, Ordering};

use pgrx::prelude::*;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting, PostgresGucEnum};
use ptrack_core::mapfile::{self, TrackingMode};
use ptrack_core::startup::{self, CorePatch, ModeChoice, RequestedMode};

mod follower;
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

/// `ptrack.mode`: how changes are learnt of.
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum ModeSetting {
    /// The core patch's hooks where the server has them, the WAL otherwise.
    #[name = c"auto"]
    Auto,
    #[name = c"hooks"]
    Hooks,
    #[name = c"wal"]
    Wal,
}
pub static MODE: GucSetting<ModeSetting> = GucSetting::<ModeSetting>::new(ModeSetting::Auto);

/// `ptrack.wal_wait_timeout`: how long a question waits in WAL mode for the
/// follower to read the WAL written before it.
pub static WAL_WAIT_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(60_000);

/// The mode chosen at start: 0 while tracking is off, else a [`TrackingMode`].
/// Set in the postmaster before any child is forked, read-only afterwards.
static ACTIVE_MODE: AtomicU8 = AtomicU8::new(0);

pub fn active_mode() -> Option<TrackingMode> {
    match ACTIVE_MODE.load(Ordering::Acquire) {
        1 => Some(TrackingMode::Hooks),
        2 => Some(TrackingMode::Wal),
        _ => None,
    }
}

fn set_active_mode(mode: TrackingMode) {
    let code = match mode {
        TrackingMode::Hooks => 1,
        TrackingMode::Wal => 2,
    };
    ACTIVE_MODE.store(code, Ordering::Release);
}

/// Developer settings for fault-injection tests, hidden from `SHOW ALL` and the
/// sample file like PostgreSQL's own developer options; inert at 0.
/// `ptrack.debug_flush_pause_ms`: sleep this long after every chunk of a map
/// flush, so a test can stop the server in the middle of one.
pub static DEBUG_FLUSH_PAUSE_MS: GucSetting<i32> = GucSetting::<i32>::new(0);
/// `ptrack.debug_flush_fail_after_chunks`: fail every flush with an I/O error
/// after this many chunks, as a full disk would.
pub static DEBUG_FLUSH_FAIL_AFTER_CHUNKS: GucSetting<i32> = GucSetting::<i32>::new(0);
/// `ptrack.debug_follower_paused`: the WAL follower reads nothing while 1,
/// so a test can make it fall behind (slot invalidation, wait timeouts).
pub static DEBUG_FOLLOWER_PAUSED: GucSetting<i32> = GucSetting::<i32>::new(0);

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
    GucRegistry::define_enum_guc(
        c"ptrack.mode",
        c"How ptrack learns of changed blocks: auto, hooks (the core patch) or wal (following the WAL).",
        c"auto uses the core patch's hooks where the server has them and follows the WAL otherwise. Takes effect at server start.",
        &MODE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"ptrack.wal_wait_timeout",
        c"In WAL mode, how long ptrack's functions wait for the WAL follower to read the WAL written before them.",
        c"",
        &WAL_WAIT_TIMEOUT_MS,
        0,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_MS,
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
    GucRegistry::define_int_guc(
        c"ptrack.debug_follower_paused",
        c"Developer option: the WAL follower reads nothing while 1 (fault-injection tests).",
        c"",
        &DEBUG_FOLLOWER_PAUSED,
        0,
        1,
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
    let mode = choose_mode();
    set_active_mode(mode);
    shmem::install(shmem::slot_count_for(map_size_mb));
    match mode {
        TrackingMode::Hooks => {
            let core_hooks = server::CoreHooks::find().unwrap_or_else(|_| {
                unreachable!("choose_mode picks hooks only when the server has them")
            });
            hooks::install(&core_hooks);
            log!("ptrack: tracking changes in hook mode with a {map_size_mb} MB map");
        }
        TrackingMode::Wal => {
            follower::register();
            log!("ptrack: tracking changes in WAL mode with a {map_size_mb} MB map");
        }
    }
}

/// Resolves `ptrack.mode` against what the server offers; raises an ERROR
/// (the server does not start) when the requested mode cannot work.
fn choose_mode() -> TrackingMode {
    let requested = match MODE.get() {
        ModeSetting::Auto => RequestedMode::Auto,
        ModeSetting::Hooks => RequestedMode::Hooks,
        ModeSetting::Wal => RequestedMode::Wal,
    };
    let mode = match startup::choose_mode(requested, server::core_patch()) {
        ModeChoice::Track(mode) => mode,
        ModeChoice::WalInsteadOfForeignHooks => {
            log!(
                "ptrack: this server's core patch is not this project's (no \
                 ptrack_core_patch_version >= {}); following the WAL instead of its hooks",
                server::CORE_PATCH_VERSION
            );
            TrackingMode::Wal
        }
        ModeChoice::Refuse(CorePatch::Foreign) => raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!(
                "ptrack.mode = hooks, but this server carries another core patch with ptrack's \
                 hook names (no ptrack_core_patch_version >= {}): it leaves zero-filled blocks \
                 unmarked and lets pg_rewind delete the map, so hook mode could miss changes",
                server::CORE_PATCH_VERSION
            ),
            "set ptrack.mode = wal (or auto), or build PostgreSQL with the patch from this \
             project's patches/ directory",
        ),
        ModeChoice::Refuse(_) => raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "ptrack.mode = hooks, but this server lacks the ptrack core patch (no mdwrite_hook)"
                .into(),
            "set ptrack.mode = wal (or auto) to track changes by following the WAL, or build \
             PostgreSQL with the patch from this project's patches/ directory",
        ),
    };
    if mode == TrackingMode::Wal {
        if !server::wal_level_is_replica_or_higher() {
            raise(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                "ptrack in WAL mode needs wal_level = replica or logical".into(),
                "with wal_level = minimal some writes leave no WAL to follow; raise wal_level, \
                 or set ptrack.map_size = 0",
            );
        }
        if server::max_replication_slots() < 1 {
            raise(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                "ptrack in WAL mode needs a replication slot, but max_replication_slots = 0".into(),
                "set max_replication_slots to at least 1 (the slot keeps the WAL ptrack has not read yet)",
            );
        }
    }
    mode
}
