//! The core patch's hooks: marking written blocks, marking copied databases,
//! and, at the end of every checkpoint's sync phase, having `map_store` write
//! the map.

use std::ffi::{c_char, CStr};
use std::sync::OnceLock;

use pgrx::pg_sys;
use pgrx::prelude::*;
use ptrack_core::{walk, Fork, RelFileKey};

use crate::map_store;
use crate::server::{
    self, BlockHook, BlocksHook, CopydirHook, CoreHooks, RelFileBackend, SyncHook,
};

/// The hooks that were installed before ours, called first by ours.
struct PreviousHooks {
    mdwrite: Option<BlockHook>,
    mdextend: Option<BlockHook>,
    copydir: Option<CopydirHook>,
    process_sync_requests: Option<SyncHook>,
    mdzeroextend: Option<BlocksHook>,
    mdwritev: Option<BlocksHook>,
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
            mdzeroextend: replace_if_present(hooks.mdzeroextend, on_mdzeroextend),
            mdwritev: replace_if_present(hooks.mdwritev, on_mdwritev),
        };
        let _ = PREVIOUS.set(previous);
    }
}

fn previous() -> Option<&'static PreviousHooks> {
    PREVIOUS.get()
}

/// Installs `ours` into the run hook at `variable` if the server has one.
///
/// # Safety
/// As for [`install`]: `variable` is null or the server's hook variable.
unsafe fn replace_if_present(
    variable: *mut Option<BlocksHook>,
    ours: BlocksHook,
) -> Option<BlocksHook> {
    // SAFETY: the caller's contract; `as_mut` turns a null into `None`.
    unsafe { variable.as_mut() }.and_then(|hook| hook.replace(ours))
}

/// Marks one written block. Runs inside critical sections: no allocation, no
/// error, no panic — every step below is a load, a hash or an atomic.
#[inline(always)]
fn mark_block(
    rlocator: &RelFileBackend,
    fork: pg_sys::ForkNumber::Type,
    block: pg_sys::BlockNumber,
) {
    mark_blocks(rlocator, fork, block, 1);
}

/// Marks `count` blocks from `first`, all written (or extended) before this
/// call, with one WAL position read after all of them: what the position
/// must be at least for each, read once instead of once per block (each read
/// takes the WAL insert spinlock). Same constraints as [`mark_block`].
#[inline(always)]
fn mark_blocks(
    rlocator: &RelFileBackend,
    fork: pg_sys::ForkNumber::Type,
    first: pg_sys::BlockNumber,
    count: pg_sys::BlockNumber,
) {
    let Some((tablespace, database, relfilenode)) = server::permanent_relation(rlocator) else {
        return;
    };
    let Some(map) = map_store::shared_map() else {
        return;
    };
    // Fork numbers outside 0..=3 do not exist on disk; there is nothing to mark.
    let Some(fork) = Fork::from_number(fork) else {
        return;
    };
    let file = RelFileKey {
        tablespace,
        database,
        relfilenode,
        fork,
    };
    let lsn = server::current_lsn();
    for block in first..first.saturating_add(count) {
        map.mark(&file.block(block), lsn);
    }
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

/// A run hook's work: the hooks found before ours get the run as the patch
/// would have called them — the run hook whole, the per-block hook block by
/// block — then all blocks are marked with one WAL position.
fn pass_on_and_mark_run(
    (previous_run, previous_block): (Option<BlocksHook>, Option<BlockHook>),
    rlocator: RelFileBackend,
    fork: pg_sys::ForkNumber::Type,
    first: pg_sys::BlockNumber,
    count: pg_sys::BlockNumber,
) {
    if let Some(previous) = previous_run {
        // SAFETY: as in `on_mdwrite`.
        unsafe { previous(rlocator, fork, first, count) };
    }
    if let Some(previous) = previous_block {
        for block in first..first.saturating_add(count) {
            // SAFETY: as in `on_mdwrite`.
            unsafe { previous(rlocator, fork, block) };
        }
    }
    mark_blocks(&rlocator, fork, first, count);
}

/// A run of blocks `mdzeroextend` extended the fork by, called before and
/// after the extension.
unsafe extern "C" fn on_mdzeroextend(
    rlocator: RelFileBackend,
    fork: pg_sys::ForkNumber::Type,
    first: pg_sys::BlockNumber,
    count: pg_sys::BlockNumber,
) {
    let previous = previous().map_or((None, None), |p| (p.mdzeroextend, p.mdextend));
    pass_on_and_mark_run(previous, rlocator, fork, first, count);
}

/// A run of blocks `mdwritev` wrote, after the write.
unsafe extern "C" fn on_mdwritev(
    rlocator: RelFileBackend,
    fork: pg_sys::ForkNumber::Type,
    first: pg_sys::BlockNumber,
    count: pg_sys::BlockNumber,
) {
    let previous = previous().map_or((None, None), |p| (p.mdwritev, p.mdwrite));
    pass_on_and_mark_run(previous, rlocator, fork, first, count);
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
    let Some(map) = map_store::shared_map() else {
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
    if std::panic::catch_unwind(map_store::flush_at_checkpoint).is_err() {
        warning!("ptrack: internal error while writing the map; the map on disk is stale");
    }
}
