//! ptrack: block-level change tracking for PostgreSQL incremental backups.
//!
//! This crate is the thin pgrx shell around `ptrack-core`:
//!
//! * [`settings`]: the `ptrack.*` GUCs and the mode chosen at start;
//! * [`server`]: version-specific server access (hook variables, LSNs, layout);
//! * [`map_store`]: the map's lifecycle: where it lives, attaching, verifying
//!   and loading it at start, writing it at checkpoints and at shutdown;
//! * [`hooks`]: the core patch's hooks: marking written and copied blocks,
//!   and asking `map_store` to write the map at checkpoints;
//! * [`follower`]: WAL mode, for servers without the core patch;
//! * [`wal_marks`]: marking what WAL records did (the follower, the crash scan);
//! * [`sql`]: the ptrack 2.4 SQL API.

use pgrx::prelude::*;
use ptrack_core::mapfile::{self, TrackingMode};
use ptrack_core::startup::{self, CorePatch, ModeChoice, RequestedMode};

mod follower;
mod hooks;
mod map_store;
mod server;
mod settings;
mod sql;
mod wal_marks;

use server::raise;
use settings::{ModeSetting, MAP_SIZE_MB, MODE};

pgrx::pg_module_magic!();

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
    settings::define();
    let map_size_mb = MAP_SIZE_MB.get();
    if map_size_mb == 0 {
        if let Ok(live) = map_store::live_file_path() {
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
    settings::set_active_mode(mode);
    map_store::install(map_store::slot_count_for(map_size_mb));
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
