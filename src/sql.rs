//! The SQL API, compatible with ptrack 2.4 as pg_probackup uses it. The SQL
//! declarations are in `sql/ptrack--2.4.sql`.

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::IntoDatum;
use ptrack_core::mapfile::TrackingMode;
use ptrack_core::Lsn;
use ptrack_core::{walk, LsnMap};

use crate::{follower, raise, server, shmem, MAP_SIZE_MB};

/// Declares a version-1 C function: PostgreSQL looks up `pg_finfo_<name>`.
macro_rules! function_info_v1 {
    ($finfo:ident) => {
        #[no_mangle]
        pub extern "C" fn $finfo() -> &'static pg_sys::Pg_finfo_record {
            const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
            &V1
        }
    };
}

/// The shared map, or an ERROR saying why there is none.
fn map_or_error() -> LsnMap<'static> {
    match shmem::shared_map() {
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
    match crate::active_mode() {
        Some(TrackingMode::Wal) => {
            follower::wait_until_read(map);
            map.init_lsn()
        }
        _ => map.start_tracking_at(server::current_lsn()),
    }
}

function_info_v1!(pg_finfo_ptrack_version);
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn ptrack_version(_fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    crate::PTRACK_VERSION
        .into_datum()
        .unwrap_or(pg_sys::Datum::from(0))
}

function_info_v1!(pg_finfo_ptrack_init_lsn);
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn ptrack_init_lsn(
    _fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    pg_sys::Datum::from(init_lsn(&map_or_error()).0)
}

function_info_v1!(pg_finfo_ptrack_get_pagemapset);
/// `ptrack_get_pagemapset(start_lsn pg_lsn) RETURNS TABLE (path text,
/// pagecount bigint, pagemap bytea)`: one row per relation segment file with a
/// block changed since `start_lsn`, materialized in one pass.
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn ptrack_get_pagemapset(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    let map = map_or_error();
    // SAFETY: the function is declared STRICT with one pg_lsn argument, a
    // by-value 64-bit datum, so argument 0 exists and is not null.
    let since = Lsn(unsafe { (*fcinfo).args.as_slice(1)[0].value.value() } as u64);
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
    let layout = server::layout();
    let data_dir = server::data_dir();
    let dirs = walk::database_dirs(&data_dir, &layout)
        .unwrap_or_else(|error| error!("ptrack: cannot list the data directory: {error}"));
    // SAFETY: called as a set-returning function with a ReturnSetInfo that
    // accepts materialize mode, as the SQL declaration guarantees.
    unsafe { pg_sys::InitMaterializedSRF(fcinfo, 0) };
    for dir in dirs {
        pgrx::check_for_interrupts!();
        let files = walk::segment_files_in(&data_dir, &dir, &layout)
            .unwrap_or_else(|error| error!("ptrack: cannot list a database directory: {error}"));
        for file in files {
            let Some(changed) = walk::segment_pagemap(&map, &file, since, &layout) else {
                continue;
            };
            let mut values = [
                changed
                    .path
                    .as_str()
                    .into_datum()
                    .unwrap_or(pg_sys::Datum::from(0)),
                pg_sys::Datum::from(changed.pagecount as i64),
                changed
                    .pagemap
                    .as_slice()
                    .into_datum()
                    .unwrap_or(pg_sys::Datum::from(0)),
            ];
            // SAFETY: `values` match the three-column result descriptor.
            unsafe { put_row(fcinfo, &mut values, &mut [false; 3], &[0, 2]) };
        }
    }
    pg_sys::Datum::from(0)
}

/// Stores one row of `values` into a materialized set-returning function's
/// result. Datums that are pointers (`by_reference`) are freed after the copy.
///
/// # Safety
/// `fcinfo` is a set-returning call whose result descriptor has exactly
/// `values.len()` columns of the datums' types, after `InitMaterializedSRF`.
unsafe fn put_row(
    fcinfo: pg_sys::FunctionCallInfo,
    values: &mut [pg_sys::Datum],
    nulls: &mut [bool],
    by_reference: &[usize],
) {
    // SAFETY: the caller's contract.
    unsafe {
        let rsinfo = (*fcinfo).resultinfo as *mut pg_sys::ReturnSetInfo;
        pg_sys::tuplestore_putvalues(
            (*rsinfo).setResult,
            (*rsinfo).setDesc,
            values.as_mut_ptr(),
            nulls.as_mut_ptr(),
        );
        for &column in by_reference {
            if !nulls[column] {
                pg_sys::pfree(values[column].cast_mut_ptr());
            }
        }
    }
}

function_info_v1!(pg_finfo_ptrack_status);
/// `ptrack_status() RETURNS TABLE (mode text, map_size_mb integer, init_lsn
/// pg_lsn, wal_tracked_through pg_lsn, wal_lag_bytes bigint)`: how ptrack
/// tracks and, in WAL mode, where the follower is. Never waits.
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn ptrack_status(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    let map = shmem::shared_map();
    let mode = match (crate::active_mode(), map.is_some()) {
        (Some(TrackingMode::Hooks), true) => "hooks",
        (Some(TrackingMode::Wal), true) => "wal",
        _ => "off",
    };
    let wal_map = map.filter(|_| mode == "wal");
    let init = map.map(|m| m.init_lsn()).filter(|l| l.is_valid());
    let lsn_datum = |lsn: Option<Lsn>| (pg_sys::Datum::from(lsn.map_or(0, |l| l.0)), lsn.is_none());
    let (init_datum, init_null) = lsn_datum(init);
    let (through_datum, through_null) = lsn_datum(
        wal_map
            .map(|m| m.wal_tracked_through())
            .filter(|l| l.is_valid()),
    );
    let lag = wal_map.map(|m| follower::lag_bytes(&m) as i64);
    let mut values = [
        mode.into_datum().unwrap_or(pg_sys::Datum::from(0)),
        pg_sys::Datum::from(MAP_SIZE_MB.get()),
        init_datum,
        through_datum,
        pg_sys::Datum::from(lag.unwrap_or(0)),
    ];
    let mut nulls = [false, false, init_null, through_null, lag.is_none()];
    // SAFETY: declared in SQL as a set-returning function of these five
    // columns, called with a ReturnSetInfo that accepts materialize mode.
    unsafe {
        pg_sys::InitMaterializedSRF(fcinfo, 0);
        put_row(fcinfo, &mut values, &mut nulls, &[0]);
    }
    pg_sys::Datum::from(0)
}
