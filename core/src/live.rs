//! The live map: the shared map kept in a file on tmpfs (`/dev/shm`) instead of
//! anonymous shared memory, so that its marks survive a crash of the server's
//! processes (an immediate stop, a backend crash and the postmaster's restart).
//!
//! Only marks made since the last checkpoint depend on it: the checkpoint file
//! (`global/ptrack.map`) still carries everything before. Without it those
//! marks are restored by redo for WAL-logged changes only; with it, also for
//! changes PostgreSQL does not WAL-log (hint bits without checksums, SP-GiST's
//! cache of last-used pages). An operating-system restart empties tmpfs; the
//! boot identifier in the header makes sure nothing older is ever resumed.
//!
//! Region layout: a [`LiveHeader`] (64 bytes), then the [`crate::map`] region.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::lsn::Lsn;

pub const LIVE_MAGIC: [u8; 8] = *b"PTRKLIVE";
/// Version 3: the map region ends with the dirty bitmap ([`crate::dirty`])
/// and its state holds the delta records' position. Version 2 had neither,
/// version 1 no cut table ([`crate::cuts`]).
pub const LIVE_VERSION: u32 = 3;

/// The header at the start of the live file.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct LiveHeader {
    magic: [u8; 8],
    version: u32,
    _padding: u32,
    system_identifier: u64,
    slot_count: u64,
    boot_id: [u8; 16],
    /// The checkpoint REDO of the map file this live map continues: written
    /// after each successful flush, compared with the map file at start.
    base_redo: AtomicU64,
}

/// What identifies the server instance a live map may belong to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveIdentity {
    pub system_identifier: u64,
    pub slot_count: u64,
    /// `/proc/sys/kernel/random/boot_id`: changes at every boot.
    pub boot_id: [u8; 16],
}

/// Why a live map found at start is not resumed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotResumed {
    #[error("no live map from an earlier run")]
    Absent,
    #[error("it belongs to another cluster, map size or boot")]
    OtherInstance,
    #[error("the map file it continues was discarded")]
    MapFileDiscarded,
    #[error("it continues the map written at REDO {live}, but the map file is from REDO {file}")]
    OtherLineage { live: Lsn, file: Lsn },
}

impl LiveHeader {
    pub fn new(identity: &LiveIdentity, base_redo: Lsn) -> Self {
        LiveHeader {
            magic: LIVE_MAGIC,
            version: LIVE_VERSION,
            _padding: 0,
            system_identifier: identity.system_identifier,
            slot_count: identity.slot_count,
            boot_id: identity.boot_id,
            base_redo: AtomicU64::new(base_redo.0),
        }
    }

    pub fn base_redo(&self) -> Lsn {
        Lsn(self.base_redo.load(Ordering::Acquire))
    }

    /// Called after a map flush succeeded: the live map now continues it.
    pub fn set_base_redo(&self, redo: Lsn) {
        self.base_redo.store(redo.0, Ordering::Release);
    }

    /// Whether the live map left by an earlier run of this server can be
    /// resumed: same instance and boot (so tmpfs kept every write), and it
    /// continues exactly the map file that was just verified (`map_file_redo`,
    /// `None` when the map file was discarded: then so is the live map, since
    /// the reason — a restore, pg_checksums, pg_resetwal — applies to it too).
    pub fn resumable(
        &self,
        identity: &LiveIdentity,
        map_file_redo: Option<Lsn>,
    ) -> Result<(), NotResumed> {
        if self.magic != LIVE_MAGIC || self.version != LIVE_VERSION {
            return Err(NotResumed::Absent);
        }
        if self.system_identifier != identity.system_identifier
            || self.slot_count != identity.slot_count
            || self.boot_id != identity.boot_id
        {
            return Err(NotResumed::OtherInstance);
        }
        let file = map_file_redo.ok_or(NotResumed::MapFileDiscarded)?;
        let live = self.base_redo();
        if live != file {
            return Err(NotResumed::OtherLineage { live, file });
        }
        Ok(())
    }
}

/// Parses `/proc/sys/kernel/random/boot_id` (a UUID) into 16 bytes.
pub fn parse_boot_id(text: &str) -> Option<[u8; 16]> {
    let hex: String = text.trim().chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(id)
}

/// What `fstat` says of an opened live file.
#[derive(Clone, Copy, Debug)]
pub struct LiveFileStat {
    pub is_regular: bool,
    pub owner: u32,
    pub mode: u32,
    pub links: u64,
}

/// Why an existing file under the live file's name is not adopted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ForeignLiveFile {
    #[error("it is not a regular file")]
    NotRegular,
    #[error("it belongs to user id {0}, not to the server's user")]
    OtherOwner(u32),
    #[error("its mode {0:o} lets other users read or write it")]
    OpenToOthers(u32),
    #[error("it has {0} hard links: another name reaches the same file")]
    Linked(u64),
}

/// The live file's name is predictable and `/dev/shm` is writable by every
/// local user: a file someone else planted there must never be adopted (its
/// owner could zero slots or truncate it under a critical section), and one
/// reached through another name must never be overwritten. Only a regular
/// file of the server's user, closed to others, with no other name, is ours.
pub fn check_live_file(stat: &LiveFileStat, server_user: u32) -> Result<(), ForeignLiveFile> {
    if !stat.is_regular {
        return Err(ForeignLiveFile::NotRegular);
    }
    if stat.owner != server_user {
        return Err(ForeignLiveFile::OtherOwner(stat.owner));
    }
    if stat.mode & 0o077 != 0 {
        return Err(ForeignLiveFile::OpenToOthers(stat.mode & 0o7777));
    }
    if stat.links != 1 {
        return Err(ForeignLiveFile::Linked(stat.links));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> LiveIdentity {
        LiveIdentity {
            system_identifier: 7,
            slot_count: 1024,
            boot_id: [3; 16],
        }
    }

    #[test]
    fn resumes_only_its_own_lineage() {
        let header = LiveHeader::new(&identity(), Lsn(500));
        assert_eq!(header.resumable(&identity(), Some(Lsn(500))), Ok(()));
        // A flush after which the live map was not updated (crash in between):
        // the map file is newer; resume nothing, the file and redo suffice.
        assert_eq!(
            header.resumable(&identity(), Some(Lsn(900))),
            Err(NotResumed::OtherLineage {
                live: Lsn(500),
                file: Lsn(900)
            })
        );
        header.set_base_redo(Lsn(900));
        assert_eq!(header.resumable(&identity(), Some(Lsn(900))), Ok(()));
        assert_eq!(
            header.resumable(&identity(), None),
            Err(NotResumed::MapFileDiscarded)
        );
        for other in [
            LiveIdentity {
                boot_id: [4; 16],
                ..identity()
            },
            LiveIdentity {
                system_identifier: 8,
                ..identity()
            },
            LiveIdentity {
                slot_count: 2048,
                ..identity()
            },
        ] {
            assert_eq!(
                header.resumable(&other, Some(Lsn(900))),
                Err(NotResumed::OtherInstance)
            );
        }
    }

    #[test]
    fn zeroed_memory_is_not_a_live_map() {
        // SAFETY: LiveHeader is plain integers and an atomic: all-zero is valid.
        let zeroed: LiveHeader = unsafe { std::mem::zeroed() };
        assert_eq!(
            zeroed.resumable(&identity(), Some(Lsn(0))),
            Err(NotResumed::Absent)
        );
    }

    #[test]
    fn parses_boot_ids() {
        let id = parse_boot_id("0f8fad5b-d9cb-469f-a165-70867728950e\n").unwrap();
        assert_eq!(id[0], 0x0f);
        assert_eq!(id[15], 0x0e);
        assert_eq!(parse_boot_id("nonsense"), None);
        assert_eq!(parse_boot_id("0f8fad5b-d9cb-469f-a165-70867728950"), None);
        assert_eq!(std::mem::size_of::<LiveHeader>(), 64);
    }

    #[test]
    fn only_a_private_file_of_the_servers_user_is_adopted() {
        let ours = LiveFileStat {
            is_regular: true,
            owner: 105,
            mode: 0o100600,
            links: 1,
        };
        assert_eq!(check_live_file(&ours, 105), Ok(()));
        let planted = LiveFileStat {
            owner: 65534,
            mode: 0o100666,
            ..ours
        };
        assert_eq!(
            check_live_file(&planted, 105),
            Err(ForeignLiveFile::OtherOwner(65534))
        );
        let shared = LiveFileStat {
            mode: 0o100660,
            ..ours
        };
        assert_eq!(
            check_live_file(&shared, 105),
            Err(ForeignLiveFile::OpenToOthers(0o660))
        );
        let hard_link = LiveFileStat { links: 2, ..ours };
        assert_eq!(
            check_live_file(&hard_link, 105),
            Err(ForeignLiveFile::Linked(2))
        );
        let fifo = LiveFileStat {
            is_regular: false,
            ..ours
        };
        assert_eq!(
            check_live_file(&fifo, 105),
            Err(ForeignLiveFile::NotRegular)
        );
    }
}
