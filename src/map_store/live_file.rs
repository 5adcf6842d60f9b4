//! The live file: `/dev/shm/ptrack.<system id>.<dev>.<inode of PGDATA>.map`,
//! the tmpfs file the map lives in when it can (see `ptrack_core::live`):
//! its name, the checks before it is trusted, and its shared mapping.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;

use pgrx::prelude::*;
use ptrack_core::live::{self, LiveFileStat, LiveHeader, LiveIdentity};
use ptrack_core::LsnMap;

use crate::server;

/// The live file starts with its header; the map region follows.
pub const LIVE_HEADER_BYTES: usize = std::mem::size_of::<LiveHeader>();

/// Who may resume a live map of `slot_count` slots: this cluster, this boot.
pub fn live_identity(system_identifier: u64, slot_count: usize) -> std::io::Result<LiveIdentity> {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?;
    let boot_id = live::parse_boot_id(&boot_id)
        .ok_or_else(|| std::io::Error::other("unreadable /proc/sys/kernel/random/boot_id"))?;
    Ok(LiveIdentity {
        system_identifier,
        slot_count: slot_count as u64,
        boot_id,
    })
}

/// The live file of this data directory: named by the cluster and by the data
/// directory itself, since a standby on the same machine shares the cluster's
/// system identifier.
pub fn live_file_path() -> std::io::Result<PathBuf> {
    let control = server::read_control_file()?;
    let data_dir = std::fs::metadata(server::data_dir())?;
    Ok(PathBuf::from(format!(
        "/dev/shm/ptrack.{}.{}.{}.map",
        control.system_identifier,
        data_dir.dev(),
        data_dir.ino()
    )))
}

/// Creates or opens the live file for a map of `slot_count` slots and maps it
/// shared, for good: the mapping is never unmapped. Returns the mapping's
/// start and the file's name. The contents are judged at shmem startup.
pub fn attach_live_file(slot_count: usize) -> std::io::Result<(*mut u8, PathBuf)> {
    let path = live_file_path()?;
    // O_NOFOLLOW: a symbolic link planted under the name is refused (ELOOP),
    // never followed to a file the server's user can write.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|error| refused(&path, error.to_string()))?;
    let stat = file.metadata()?;
    let stat = LiveFileStat {
        is_regular: stat.file_type().is_file(),
        owner: stat.uid(),
        mode: stat.mode(),
        links: stat.nlink(),
    };
    // SAFETY: geteuid cannot fail.
    let server_user = unsafe { libc::geteuid() };
    live::check_live_file(&stat, server_user).map_err(|why| refused(&path, why.to_string()))?;
    let bytes = LIVE_HEADER_BYTES + LsnMap::region_size(slot_count);
    if file.metadata()?.len() != bytes as u64 {
        // Another map size: its contents are of no use.
        file.set_len(0)?;
        file.set_len(bytes as u64)?;
    }
    reserve(&file, bytes)?;
    // SAFETY: the file was just checked to be a regular file of the server's
    // user, mode 0600, with no other name: no other user can open, resize or
    // write it. It is only ever accessed through this shared mapping, by atomics.
    let mapping = unsafe { memmap2::MmapOptions::new().len(bytes).map_mut(&file)? };
    let base = Box::leak(Box::new(mapping)).as_mut_ptr();
    Ok((base, path))
}

/// A live file that must not be used, said as a WARNING: the map then lives
/// in shared memory, and a local user may be trying something.
fn refused(path: &std::path::Path, why: String) -> std::io::Error {
    warning!(
        "ptrack: not using \"{}\" for the live map: {why}; the map is kept in shared memory \
         instead, so marks since the last checkpoint rely on redo after a crash",
        path.display()
    );
    std::io::Error::other(format!("\"{}\" refused: {why}", path.display()))
}

/// Allocates the file's blocks now: a write to a hole of a full tmpfs would
/// raise SIGBUS inside a critical section. A file whose every block is
/// allocated already (a live map kept for resuming) has no hole: walking
/// its gigabyte of pages again would be most of a resumed start's cost.
fn reserve(file: &File, bytes: usize) -> std::io::Result<()> {
    if file.metadata()?.blocks().saturating_mul(512) >= bytes as u64 {
        return Ok(());
    }
    // SAFETY: a plain system call on an open descriptor.
    let result = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, bytes as libc::off_t) };
    match result {
        0 => Ok(()),
        errno => Err(std::io::Error::from_raw_os_error(errno)),
    }
}
