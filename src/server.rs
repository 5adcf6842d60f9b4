//! Everything that differs between PostgreSQL versions or that reaches into the
//! server outside pgrx's generated bindings, in one place;
//! and [`raise`], how ptrack raises an ERROR.

use std::ffi::{c_char, c_void, CStr};
use std::path::PathBuf;

use pgrx::pg_sys;
use pgrx::{PgLogLevel, PgSqlErrorCode};
use ptrack_core::startup::CorePatch;
use ptrack_core::walk::Layout;
use ptrack_core::Lsn;

/// The relation name the md hooks receive by value: `RelFileNodeBackend` up to
/// PostgreSQL 15, `RelFileLocatorBackend` from 16 on.
#[cfg(feature = "pg15")]
pub type RelFileBackend = pg_sys::RelFileNodeBackend;
#[cfg(not(feature = "pg15"))]
pub type RelFileBackend = pg_sys::RelFileLocatorBackend;

/// The md hooks' signature in the ptrack core patch.
pub type BlockHook = unsafe extern "C" fn(
    rlocator: RelFileBackend,
    fork: pg_sys::ForkNumber::Type,
    block: pg_sys::BlockNumber,
);
/// The run hooks of version 2 of the patch: `count` blocks from `first`, of
/// one segment, in one call.
pub type BlocksHook = unsafe extern "C" fn(
    rlocator: RelFileBackend,
    fork: pg_sys::ForkNumber::Type,
    first: pg_sys::BlockNumber,
    count: pg_sys::BlockNumber,
);
pub type CopydirHook = unsafe extern "C" fn(path: *const c_char);
pub type SyncHook = unsafe extern "C" fn();

/// What a block hook needs of a `RelFileBackend`: `None` for temporary relations,
/// which are never backed up.
#[cfg(feature = "pg15")]
#[inline(always)]
pub fn permanent_relation(rnode: &RelFileBackend) -> Option<(u32, u32, u32)> {
    if rnode.backend != pg_sys::InvalidBackendId {
        return None;
    }
    let n = &rnode.node;
    Some((n.spcNode.to_u32(), n.dbNode.to_u32(), n.relNode.to_u32()))
}

#[cfg(not(feature = "pg15"))]
#[inline(always)]
pub fn permanent_relation(rlocator: &RelFileBackend) -> Option<(u32, u32, u32)> {
    if rlocator.backend != pg_sys::INVALID_PROC_NUMBER {
        return None;
    }
    let l = &rlocator.locator;
    Some((l.spcOid.to_u32(), l.dbOid.to_u32(), l.relNumber.to_u32()))
}

/// Functions the hooks call inside critical sections. They take at most a
/// spinlock and never raise an error, so they are declared here directly,
/// without the `sigsetjmp` guard pgrx puts around every binding.
mod direct {
    extern "C" {
        pub fn RecoveryInProgress() -> bool;
        pub fn GetXLogInsertRecPtr() -> u64;
        pub fn GetCurrentReplayRecPtr(replay_end_tli: *mut u32) -> u64;
    }
}

/// The LSN to mark a block written now with: at least the LSN of every change
/// the written page can carry.
///
/// In recovery that is the end of the record being replayed. The insert
/// position is read too, after it, so a process that saw recovery in progress
/// just before it ended still marks with an LSN past every record inserted
/// since (before recovery ends the insert position is tiny and loses the max).
#[inline(always)]
pub fn current_lsn() -> Lsn {
    // SAFETY: see `direct`; these read shared WAL state under its spinlocks and
    // are callable from any process attached to shared memory.
    unsafe {
        if direct::RecoveryInProgress() {
            let replay = direct::GetCurrentReplayRecPtr(std::ptr::null_mut());
            Lsn(replay.max(direct::GetXLogInsertRecPtr()))
        } else {
            Lsn(direct::GetXLogInsertRecPtr())
        }
    }
}

/// The server's storage layout, compiled into it and so into these bindings.
pub fn layout() -> Layout {
    let major = pg_sys::PG_MAJORVERSION.to_str().unwrap_or("17");
    Layout {
        block_size: pg_sys::BLCKSZ,
        segment_blocks: pg_sys::RELSEG_SIZE,
        tablespace_version_dir: format!("PG_{major}_{}", pg_sys::CATALOG_VERSION_NO),
    }
}

/// The data directory, absolute.
pub fn data_dir() -> PathBuf {
    // SAFETY: `DataDir` is set by the postmaster before libraries are loaded
    // and never changes afterwards; every process inherits it.
    let data_dir = unsafe { pg_sys::DataDir };
    if data_dir.is_null() {
        return PathBuf::from(".");
    }
    // SAFETY: non-null `DataDir` is a NUL-terminated C string owned by the server.
    PathBuf::from(
        unsafe { CStr::from_ptr(data_dir) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// What ptrack needs of `global/pg_control`.
pub struct ControlFacts {
    pub system_identifier: u64,
    pub latest_checkpoint_redo: Lsn,
    /// The highest LSNs pg_control knows: the latest checkpoint record and
    /// the minimum recovery point (pg_rewind sets it to the source's end).
    pub latest_checkpoint: Lsn,
    pub min_recovery_point: Lsn,
    pub data_checksum_version: u32,
    /// The last shutdown was clean: every page and the map were written.
    pub cleanly_shut_down: bool,
    /// ... and it was a primary's, which always ends with a shutdown
    /// checkpoint (a standby may skip its shutdown restartpoint).
    pub primary_shut_down: bool,
    /// The timeline of the latest checkpoint: crash recovery reads its WAL.
    pub timeline: u32,
}

/// Reads `global/pg_control`. The postmaster has already verified its CRC by
/// the time libraries load, so only the layout is trusted here.
pub fn read_control_file() -> std::io::Result<ControlFacts> {
    let bytes = std::fs::read(data_dir().join("global/pg_control"))?;
    if bytes.len() < std::mem::size_of::<pg_sys::ControlFileData>() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "pg_control is too short",
        ));
    }
    // SAFETY: the buffer holds at least one `ControlFileData`, a plain C struct
    // of integers for which any bit pattern is valid; the read is unaligned-safe.
    let control: pg_sys::ControlFileData =
        unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const pg_sys::ControlFileData) };
    Ok(ControlFacts {
        system_identifier: control.system_identifier,
        latest_checkpoint_redo: Lsn(control.checkPointCopy.redo),
        latest_checkpoint: Lsn(control.checkPoint),
        min_recovery_point: Lsn(control.minRecoveryPoint),
        data_checksum_version: control.data_checksum_version,
        cleanly_shut_down: matches!(
            control.state,
            pg_sys::DBState::DB_SHUTDOWNED | pg_sys::DBState::DB_SHUTDOWNED_IN_RECOVERY
        ),
        primary_shut_down: control.state == pg_sys::DBState::DB_SHUTDOWNED,
        timeline: control.checkPointCopy.ThisTimeLineID,
    })
}

/// `backup_label`'s text, if the data directory has one (a restore from a
/// backup, a new standby, or pg_rewind). PostgreSQL writes a few hundred bytes;
/// a larger file is read no further than that could be.
pub fn read_backup_label() -> Option<String> {
    use std::io::Read;
    const MOST: u64 = 64 * 1024;
    let file = std::fs::File::open(data_dir().join("backup_label")).ok()?;
    let mut text = String::new();
    match file.take(MOST).read_to_string(&mut text) {
        Ok(_) => Some(text),
        // Present but unreadable or not text: still a restored directory.
        Err(_) => Some(String::new()),
    }
}

/// Whether the server is replaying WAL (a standby, crash recovery, or the
/// end-of-recovery checkpoint).
pub fn in_recovery() -> bool {
    // SAFETY: reads shared recovery state; callable from any attached process.
    unsafe { direct::RecoveryInProgress() }
}

/// The REDO LSN of the checkpoint or restartpoint in progress (its sync phase
/// calls the flush hook).
pub fn checkpoint_redo() -> Lsn {
    // SAFETY: reads XLogCtl->RedoRecPtr under its spinlock; no error paths.
    Lsn(unsafe { pg_sys::GetRedoRecPtr() })
}

/// The hook variables the ptrack core patch adds, looked up in the running
/// server by name, so one build of the library loads on any server.
pub struct CoreHooks {
    pub mdwrite: *mut Option<BlockHook>,
    pub mdextend: *mut Option<BlockHook>,
    pub copydir: *mut Option<CopydirHook>,
    pub process_sync_requests: *mut Option<SyncHook>,
    /// Version 2 of the patch (17 and 18): `mdzeroextend` and `mdwritev` call
    /// these once per run of blocks instead of the per-block hooks; null on
    /// servers without them (15, older patches, C ptrack's patch).
    pub mdzeroextend: *mut Option<BlocksHook>,
    pub mdwritev: *mut Option<BlocksHook>,
}

fn lookup(name: &CStr) -> *mut c_void {
    // SAFETY: dlsym with RTLD_DEFAULT only reads the dynamic symbol tables of
    // the process; the postgres binary exports its globals (--export-dynamic).
    unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) }
}

/// The version of this project's core patch that `ptrack_core_patch_version`
/// must at least say: holes reported, extensions marked before and after the
/// write, pg_rewind keeping the map.
pub const CORE_PATCH_VERSION: i32 = 1;

/// Looks for the hooks and for the marker the project's patch exports.
pub fn core_patch() -> CorePatch {
    if CoreHooks::find().is_err() {
        return CorePatch::Missing;
    }
    let marker = lookup(c"ptrack_core_patch_version") as *const i32;
    if marker.is_null() {
        return CorePatch::Foreign;
    }
    // SAFETY: the patch defines `const int ptrack_core_patch_version`, an
    // initialized global in the server binary that nothing writes.
    let version = unsafe { marker.read() };
    if version >= CORE_PATCH_VERSION {
        CorePatch::Ours
    } else {
        CorePatch::Foreign
    }
}

impl CoreHooks {
    /// The patch's hook variables, or the names of those missing.
    pub fn find() -> Result<CoreHooks, Vec<&'static str>> {
        let names: [&'static CStr; 4] = [
            c"mdwrite_hook",
            c"mdextend_hook",
            c"copydir_hook",
            c"ProcessSyncRequests_hook",
        ];
        let found = names.map(lookup);
        let missing: Vec<&str> = names
            .iter()
            .zip(found)
            .filter(|(_, address)| address.is_null())
            .map(|(name, _)| name.to_str().unwrap_or("?"))
            .collect();
        if !missing.is_empty() {
            return Err(missing);
        }
        Ok(CoreHooks {
            mdwrite: found[0].cast(),
            mdextend: found[1].cast(),
            copydir: found[2].cast(),
            process_sync_requests: found[3].cast(),
            mdzeroextend: lookup(c"mdzeroextend_hook").cast(),
            mdwritev: lookup(c"mdwritev_hook").cast(),
        })
    }
}

// ---------------------------------------------------------------------------
// WAL mode: where the WAL is, how far it may be read, and the slot that keeps it
// ---------------------------------------------------------------------------

/// The server's major version, as compiled into these bindings.
pub fn major_version() -> u32 {
    pg_sys::PG_VERSION_NUM / 10000
}

/// Bytes per WAL page (`XLOG_BLCKSZ`), fixed at build time.
pub fn wal_page_bytes() -> u64 {
    u64::from(pg_sys::XLOG_BLCKSZ)
}

/// Bytes per WAL segment file, fixed at initdb.
pub fn wal_segment_size() -> u64 {
    // SAFETY: set from pg_control before libraries load, never changed after.
    unsafe { pg_sys::wal_segment_size as u64 }
}

/// Whether the WAL holds what WAL mode needs: `wal_level` replica or logical
/// (minimal skips the WAL of bulk loads and new relations).
pub fn wal_level_is_replica_or_higher() -> bool {
    // SAFETY: a postmaster-context setting, read after the configuration loaded.
    unsafe { pg_sys::wal_level >= pg_sys::WalLevel::WAL_LEVEL_REPLICA as i32 }
}

pub fn max_replication_slots() -> i32 {
    // SAFETY: as above.
    unsafe { pg_sys::max_replication_slots }
}

/// Hint-bit changes reach the WAL (as full-page images) only with data
/// checksums or `wal_log_hints`.
pub fn hint_bits_are_wal_logged() -> bool {
    // SAFETY: as above; `DataChecksumsEnabled` reads the control file copy in
    // shared memory, set up before any worker starts.
    unsafe { pg_sys::wal_log_hints || pg_sys::DataChecksumsEnabled() }
}

/// The highest LSN whose WAL is complete on disk, and its timeline: the
/// replay position on a standby (the WAL it replayed is in `pg_wal`), the
/// flush position on a primary.
pub fn wal_readable_end() -> (Lsn, u32) {
    // SAFETY: both read shared WAL state under its spinlocks.
    unsafe {
        if direct::RecoveryInProgress() {
            let mut timeline = 0;
            let lsn = pg_sys::GetXLogReplayRecPtr(&mut timeline);
            (Lsn(lsn), timeline)
        } else {
            let lsn = pg_sys::GetFlushRecPtr(std::ptr::null_mut());
            (Lsn(lsn), pg_sys::GetWALInsertionTimeLine())
        }
    }
}

/// The position every change made before this call has reached in the WAL
/// on disk: on a primary the WAL inserted so far is flushed first (with
/// `synchronous_commit = off` it may not be yet).
pub fn wal_flushed_now() -> Lsn {
    // SAFETY: `XLogFlush` may raise an ERROR on I/O failure, which pgrx's
    // guard turns into a normal PostgreSQL error; called outside hooks only.
    unsafe {
        if !direct::RecoveryInProgress() {
            pg_sys::XLogFlush(pg_sys::GetXLogInsertRecPtr());
        }
    }
    wal_readable_end().0
}

/// The WAL segment (numbered from 0 at LSN 0) holding `lsn`.
pub fn wal_segment_of(lsn: Lsn) -> u64 {
    lsn.0 / wal_segment_size()
}

/// Whether the WAL starting at `lsn` may have been removed already.
pub fn wal_removed_at(lsn: Lsn) -> bool {
    // SAFETY: reads XLogCtl->lastRemovedSegNo under its spinlock.
    let last_removed = unsafe { pg_sys::XLogGetLastRemovedSegno() };
    last_removed > 0 && wal_segment_of(lsn) <= last_removed
}

pub fn pg_wal_dir() -> PathBuf {
    data_dir().join("pg_wal")
}

/// The physical replication slot that keeps the WAL the follower has not
/// read yet, and that this process holds for as long as it lives.
pub const FOLLOWER_SLOT_NAME: &CStr = c"ptrack";

/// Acquires the follower's slot, creating it where it is missing and
/// re-creating it where PostgreSQL invalidated it (`max_slot_wal_keep_size`).
/// Returns true when an invalidated slot was replaced: WAL it held may be gone.
/// On return the slot is this process's `MyReplicationSlot`; whether the WAL
/// at a given LSN still exists is [`wal_removed_at`]'s question.
pub fn acquire_follower_slot() -> bool {
    // SAFETY: slot functions are called from a background worker with a
    // PGPROC, as walsenders call them; errors unwind through pgrx's guard.
    unsafe {
        let existing = pg_sys::SearchNamedReplicationSlot(FOLLOWER_SLOT_NAME.as_ptr(), true);
        if existing.is_null() {
            create_slot();
            return false;
        }
        acquire_slot();
        if !follower_slot_invalidated() {
            return false;
        }
        pg_sys::ReplicationSlotRelease();
        pg_sys::ReplicationSlotDrop(FOLLOWER_SLOT_NAME.as_ptr(), true);
        create_slot();
        true
    }
}

/// # Safety
/// Slot functions' usual context; see [`acquire_follower_slot`].
#[cfg(any(feature = "pg15", feature = "pg17"))]
unsafe fn acquire_slot() {
    unsafe { pg_sys::ReplicationSlotAcquire(FOLLOWER_SLOT_NAME.as_ptr(), true) }
}
/// # Safety
/// Slot functions' usual context; see [`acquire_follower_slot`].
#[cfg(feature = "pg18")]
unsafe fn acquire_slot() {
    unsafe { pg_sys::ReplicationSlotAcquire(FOLLOWER_SLOT_NAME.as_ptr(), true, false) }
}

/// # Safety
/// Slot functions' usual context; see [`acquire_follower_slot`].
#[cfg(feature = "pg15")]
unsafe fn create_slot() {
    let persistent = pg_sys::ReplicationSlotPersistency::RS_PERSISTENT;
    unsafe { pg_sys::ReplicationSlotCreate(FOLLOWER_SLOT_NAME.as_ptr(), false, persistent, false) }
}
/// # Safety
/// Slot functions' usual context; see [`acquire_follower_slot`].
#[cfg(not(feature = "pg15"))]
unsafe fn create_slot() {
    let persistent = pg_sys::ReplicationSlotPersistency::RS_PERSISTENT;
    unsafe {
        pg_sys::ReplicationSlotCreate(
            FOLLOWER_SLOT_NAME.as_ptr(),
            false,
            persistent,
            false,
            false,
            false,
        )
    }
}

#[cfg(feature = "pg15")]
fn slot_invalidated(slot: &pg_sys::ReplicationSlot) -> bool {
    slot.data.invalidated_at != 0
}
#[cfg(not(feature = "pg15"))]
fn slot_invalidated(slot: &pg_sys::ReplicationSlot) -> bool {
    slot.data.invalidated != pg_sys::ReplicationSlotInvalidationCause::RS_INVAL_NONE
}

/// Whether PostgreSQL invalidated the follower's slot since it was acquired
/// (`max_slot_wal_keep_size` exceeded): its WAL is no longer kept.
pub fn follower_slot_invalidated() -> bool {
    // SAFETY: `MyReplicationSlot` is ours while this process lives; the
    // invalidation fields are read under the slot's spinlock.
    unsafe {
        let slot = pg_sys::MyReplicationSlot;
        if slot.is_null() {
            return true;
        }
        pg_sys::SpinLockAcquire(&raw mut (*slot).mutex);
        let invalid = slot_invalidated(&*slot) || (*slot).data.restart_lsn == 0;
        pg_sys::SpinLockRelease(&raw mut (*slot).mutex);
        invalid
    }
}

/// Moves the follower's slot to `lsn` (backwards too, when a new map starts
/// from an older LSN), and saves it to disk when `durable`: PostgreSQL then
/// keeps the WAL from `lsn` on, across restarts.
pub fn set_follower_slot_lsn(lsn: Lsn, durable: bool) {
    // SAFETY: as in `follower_slot_invalidated`; `restart_lsn` is written under
    // the slot's spinlock as PostgreSQL's own slot code does.
    unsafe {
        let slot = pg_sys::MyReplicationSlot;
        if slot.is_null() {
            return;
        }
        pg_sys::SpinLockAcquire(&raw mut (*slot).mutex);
        (*slot).data.restart_lsn = lsn.0;
        pg_sys::SpinLockRelease(&raw mut (*slot).mutex);
        pg_sys::ReplicationSlotMarkDirty();
        pg_sys::ReplicationSlotsComputeRequiredLSN();
        if durable {
            pg_sys::ReplicationSlotSave();
        }
    }
}

/// Raises an ERROR with a hint; never returns.
#[track_caller]
pub fn raise(code: PgSqlErrorCode, message: String, hint: &str) -> ! {
    pgrx::pg_sys::panic::ErrorReport::new(code, message, "ptrack")
        .set_hint(hint)
        .report(PgLogLevel::ERROR);
    unreachable!("an ERROR report unwinds")
}
