//! The SQL API, compatible with ptrack 2.4 as pg_probackup uses it.
//!
//! `sql/ptrack--2.4.sql` declares the functions by hand, with ptrack 2.4's
//! names, types, markings and column names, and points them at the C symbols
//! `#[pg_extern]` generates (`<name>_wrapper`): with pgrx's
//! `no-schema-generation` nothing is generated from these signatures, so a
//! plain `cargo build` suffices and the SQL file is the one authority.

mod pg_lsn;

use pgrx::prelude::*;
use ptrack_core::mapfile::TrackingMode;
use ptrack_core::Lsn;
use ptrack_core::{walk, LsnMap};

use crate::server::{self, raise};
use crate::settings::{self, MAP_SIZE_MB};
use crate::{follower, map_store};
use pg_lsn::PgLsn;

/// The API version pg_probackup checks (it needs 2.x).
const PTRACK_VERSION: &str = "2.4";

/// The shared map, or an ERROR saying why there is none.
fn map_or_error() -> LsnMap<'static> {
    match map_store::shared_map() {
        Some(map) => map,
        None if MAP_SIZE_MB.get() == 0 => raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "ptrack is disabled".into(),
            "ptrack.map_size is 0; set it to a positive size in MB and restart the server to track changes",
        ),
        None => raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "ptrack is not initialized".into(),
            "add ptrack to shared_preload_libraries and restart the server",
        ),
    }
}

/// The map's init LSN: from this LSN on the map misses nothing of what was
/// written before this call.
///
/// Hook mode starts tracking now if no block was written since the map was
/// (re)created. WAL mode first waits for the follower to read the WAL written
/// before this call; the follower set the init LSN when it started.
fn init_lsn(map: &LsnMap<'_>) -> Lsn {
    match settings::active_mode() {
        Some(TrackingMode::Wal) => {
            follower::wait_until_read(map);
            map.init_lsn()
        }
        _ => map.start_tracking_at(server::current_lsn()),
    }
}

#[pg_extern]
fn ptrack_version() -> &'static str {
    PTRACK_VERSION
}

#[pg_extern]
fn ptrack_init_lsn() -> PgLsn {
    PgLsn(init_lsn(&map_or_error()))
}

/// `ptrack_get_pagemapset(start_lsn pg_lsn) RETURNS TABLE (path text,
/// pagecount bigint, pagemap bytea)`: one row per relation segment file with a
/// block changed since `start_lsn`.
///
/// The checks and the wait run in the first call, before any row. The walk
/// then yields one row per call, holding one database directory's file list
/// at a time: the rows exist once, in what the executor keeps of them (a
/// FunctionScan's tuplestore).
#[pg_extern]
fn ptrack_get_pagemapset(
    start_lsn: PgLsn,
) -> TableIterator<
    'static,
    (
        name!(path, String),
        name!(pagecount, i64),
        name!(pagemap, Vec<u8>),
    ),
> {
    let map = map_or_error();
    let since = start_lsn.0;
    let now = server::current_lsn();
    if since > now {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("start_lsn {since} is in the future: the current WAL position is {now}"),
            "pass the start LSN of an earlier backup of this cluster",
        );
    }
    // WAL mode: waits until the WAL written before this call is in the map.
    init_lsn(&map);
    let covered = map.covers(since);
    let layout = server::layout();
    let data_dir = server::data_dir();
    let mut dirs = walk::database_dirs(&data_dir, &layout)
        .unwrap_or_else(|error| error!("ptrack: cannot list the data directory: {error}"))
        .into_iter();
    let mut files = Vec::new().into_iter();
    TableIterator::new(std::iter::from_fn(move || loop {
        for file in files.by_ref() {
            if let Some(changed) = walk::segment_pagemap(&map, &file, since, &layout) {
                return Some((changed.path, changed.pagecount as i64, changed.pagemap));
            }
        }
        let Some(dir) = dirs.next() else {
            // The map forgets (its init LSN rises) only where marks may be
            // missing: an answer that began as a partial one may have been
            // computed from them, so it fails rather than mislead. (One that
            // began below the init LSN reported every block.)
            if covered && !map.covers(since) {
                raise(
                    PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                    format!(
                        "ptrack forgot the changes before {} while this query ran",
                        map.init_lsn()
                    ),
                    "take a full backup: ptrack_init_lsn() is now above start_lsn",
                );
            }
            return None;
        };
        pgrx::check_for_interrupts!();
        files = walk::segment_files_in(&data_dir, &dir, &layout)
            .unwrap_or_else(|error| error!("ptrack: cannot list a database directory: {error}"))
            .into_iter();
    }))
}

/// `ptrack_status() RETURNS TABLE (mode text, map_size_mb integer, init_lsn
/// pg_lsn, wal_tracked_through pg_lsn, wal_lag_bytes bigint)`: how ptrack
/// tracks and, in WAL mode, where the follower is. Never waits.
// The row stays written out: `#[pg_extern]` rejects a type alias for a
// TableIterator's row, and the `name!`s mirror the SQL file's column names.
#[allow(clippy::type_complexity)]
#[pg_extern]
fn ptrack_status() -> TableIterator<
    'static,
    (
        name!(mode, &'static str),
        name!(map_size_mb, i32),
        name!(init_lsn, Option<PgLsn>),
        name!(wal_tracked_through, Option<PgLsn>),
        name!(wal_lag_bytes, Option<i64>),
    ),
> {
    let map = map_store::shared_map();
    let mode = match (settings::active_mode(), map.is_some()) {
        (Some(TrackingMode::Hooks), true) => "hooks",
        (Some(TrackingMode::Wal), true) => "wal",
        _ => "off",
    };
    let wal_map = map.filter(|_| mode == "wal");
    let valid = |lsn: Lsn| lsn.is_valid().then_some(PgLsn(lsn));
    let init = map.and_then(|m| valid(m.init_lsn()));
    let through = wal_map.and_then(|m| valid(m.wal_tracked_through()));
    let lag = wal_map.map(|m| follower::lag_bytes(&m) as i64);
    TableIterator::once((mode, MAP_SIZE_MB.get(), init, through, lag))
}

/// Exports ptrack 2.4's own C symbol names too. A catalog made by C ptrack
/// (`CREATE EXTENSION` before the library was replaced by this one, or
/// carried over by `pg_upgrade`, which recreates functions with their symbol
/// names) calls `ptrack_version`, not pgrx's `ptrack_version_wrapper`. pgrx
/// cannot name a function's symbol, so these two lines per function are
/// written by hand: a version-1 info record and a forward to the wrapper.
macro_rules! ptrack24_symbol {
    ($symbol:ident, $finfo:ident, $wrapper:ident) => {
        #[no_mangle]
        pub extern "C" fn $finfo() -> &'static pgrx::pg_sys::Pg_finfo_record {
            const V1: pgrx::pg_sys::Pg_finfo_record =
                pgrx::pg_sys::Pg_finfo_record { api_version: 1 };
            &V1
        }

        /// # Safety
        /// Called by PostgreSQL's function manager as a version-1 function.
        #[no_mangle]
        pub unsafe extern "C-unwind" fn $symbol(
            fcinfo: pgrx::pg_sys::FunctionCallInfo,
        ) -> pgrx::pg_sys::Datum {
            // SAFETY: the same call, with the same `fcinfo`, that the
            // function manager makes of the wrapper under its own name.
            unsafe { $wrapper(fcinfo) }
        }
    };
}

/// The exports under ptrack 2.4's names, in a module of their own: in this
/// one the Rust names are the SQL functions'.
mod ptrack24_symbols {
    use super::{
        ptrack_get_pagemapset_wrapper, ptrack_init_lsn_wrapper, ptrack_status_wrapper,
        ptrack_version_wrapper,
    };

    ptrack24_symbol!(
        ptrack_version,
        pg_finfo_ptrack_version,
        ptrack_version_wrapper
    );
    ptrack24_symbol!(
        ptrack_init_lsn,
        pg_finfo_ptrack_init_lsn,
        ptrack_init_lsn_wrapper
    );
    ptrack24_symbol!(
        ptrack_get_pagemapset,
        pg_finfo_ptrack_get_pagemapset,
        ptrack_get_pagemapset_wrapper
    );
    ptrack24_symbol!(ptrack_status, pg_finfo_ptrack_status, ptrack_status_wrapper);
}
