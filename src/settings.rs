//! ptrack's settings (the `ptrack.*` GUCs) and the tracking mode chosen at
//! start from them: read by every other module, depending on none.

use std::sync::atomic::{AtomicU8, Ordering};

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting, PostgresGucEnum};
use ptrack_core::mapfile::TrackingMode;

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

pub fn set_active_mode(mode: TrackingMode) {
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
/// `ptrack.debug_full_flushes`: every flush writes the whole map file while
/// 1, so a test can catch or fail a full write at any checkpoint.
pub static DEBUG_FULL_FLUSHES: GucSetting<i32> = GucSetting::<i32>::new(0);
/// `ptrack.debug_follower_paused`: the WAL follower reads nothing while 1,
/// so a test can make it fall behind (slot invalidation, wait timeouts).
pub static DEBUG_FOLLOWER_PAUSED: GucSetting<i32> = GucSetting::<i32>::new(0);

/// Defines every `ptrack.*` GUC. Called from `_PG_init` in the postmaster.
pub fn define() {
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
        c"ptrack.debug_full_flushes",
        c"Developer option: every map flush writes the whole map while 1 (fault-injection tests).",
        c"",
        &DEBUG_FULL_FLUSHES,
        0,
        1,
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
}
