//! Everything that differs between PostgreSQL versions or that reaches into the
//! server outside pgrx's generated bindings, in one place.

use std::ffi::{c_char, c_void, CStr};
use std::path::PathBuf;

use pgrx::pg_sys;
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
    })
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
}

fn lookup(name: &CStr) -> *mut c_void {
    // SAFETY: dlsym with RTLD_DEFAULT only reads the dynamic symbol tables of
    // the process; the postgres binary exports its globals (--export-dynamic).
    unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) }
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
        })
    }
}
