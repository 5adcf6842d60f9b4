//! A decoder of PostgreSQL's write-ahead log, for following WAL on servers
//! without ptrack's core patch: every block a record references is marked
//! with the record's end LSN.
//!
//! The decoder is a port of the parts of `xlogreader.c` a change map needs
//! (`XLogDecodeNextRecord`, `XLogFindNextRecord`, `DecodeXLogRecord`, the page
//! header checks), for PostgreSQL 15 to 18. Their on-disk formats of page
//! headers, record headers and block references are identical; only the page
//! magic differs ([`WalFormat::for_major`]). Multi-byte integers in WAL are in
//! the server's byte order; the decoder reads little-endian, the byte order of
//! every platform ptrack supports (x86-64, aarch64).
//!
//! * [`source`]: where pages come from ([`WalSource`]; [`SegmentDirSource`]
//!   reads `pg_wal`).
//! * [`page`]: page headers.
//! * [`record`]: one record's header and block references.
//! * [`reader`]: records one after another across pages and segments.
//! * [`effects`]: what a record changes on disk.
//! * [`crc32c`]: the record checksum.
//!
//! # Changes to relation files that no block reference names
//!
//! A change map must see every block that differs on disk from an earlier
//! backup. Block references name all WAL-logged page changes. The records that
//! change relation files without them, and why each needs nothing more than
//! [`effects::record_effects`] returns (the reasoning follows PostgreSQL's
//! own WAL summarizer, `walsummarizer.c`, which feeds incremental backups
//! from the same records):
//!
//! * `XLOG_DBASE_CREATE_FILE_COPY` (`CREATE DATABASE … STRATEGY file_copy`,
//!   `ALTER DATABASE … SET TABLESPACE`): a whole directory of relation files is
//!   copied without logging a single block. `walsummarizer.c` notes this is the
//!   one record that needs special handling for that reason, because it "can
//!   create a whole bunch of relation files in a directory without logging
//!   anything specific to each one". It becomes
//!   [`RecordEffect::CopiedDatabase`].
//! * `XLOG_DBASE_CREATE_WAL_LOG` (the default strategy since 15): it creates
//!   only the directory; every page of every copied relation is then written
//!   through shared buffers and WAL-logged as a full page image, with block
//!   references.
//! * `XLOG_DBASE_DROP`, `XLOG_TBLSPC_CREATE`, `XLOG_TBLSPC_DROP`, and the
//!   relations a commit or abort record drops: files and directories appear
//!   empty or disappear; no block of a surviving file changes.
//!
//! Truncation and creation need more than their block references: a relation
//! grows by blocks of zeros that are not WAL-logged (under contention several
//! at a time, which the free space map then hands out), and a block that never
//! gets content stays that way. Where a fork was cut short (`XLOG_SMGR_TRUNCATE`)
//! or its file name reused (`XLOG_SMGR_CREATE`; PostgreSQL delays reuse past
//! the next checkpoint, but an older backup may hold the old file), an earlier
//! backup may hold an old version of such a block number, which an incremental
//! restore would bring back. `walsummarizer.c` covers it with a "limit block"
//! per fork: everything past the truncation point is sent whole. Both records
//! become [`RecordEffect::Cut`], which the map records with
//! [`crate::LsnMap::mark_cut`]: every block past the cut counts as changed.
//!
//! Changes that no record describes at all: hint bits (WAL-logged only with
//! data checksums or `wal_log_hints`; they can be recomputed, and PostgreSQL's
//! incremental backup ignores them too), the free space map (not WAL-logged
//! reliably), and visibility-map bits cleared by heap changes (replayed from
//! the heap record, not logged on the map page) — ptrack reports those two
//! forks whole in WAL mode ([`crate::Fork::not_wal_logged`]). With
//! `wal_level = minimal` the server skips WAL for relations created in the
//! same transaction; WAL following requires `replica` or higher.

pub mod crc32c;
pub mod effects;
pub mod page;
pub mod reader;
pub mod record;
pub mod source;
pub mod timeline;

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;

use crate::lsn::Lsn;

pub use effects::{record_effects, record_truncation, RecordEffect, Truncation};
pub use reader::WalReader;
pub use record::{BlockImage, BlockReference, DecodedRecord};
pub use source::{SegmentDirSource, WalSource};

/// `MAXALIGN`: records start on 8-byte boundaries.
pub const MAXIMUM_ALIGNOF: u64 = 8;

pub(crate) fn max_align(value: u64) -> u64 {
    value.saturating_add(MAXIMUM_ALIGNOF - 1) & !(MAXIMUM_ALIGNOF - 1)
}

/// Resource manager ids (`rmgrlist.h`); the list is the same in 15 to 18.
pub mod rmgr {
    pub const XLOG: u8 = 0;
    pub const TRANSACTION: u8 = 1;
    pub const STORAGE: u8 = 2;
    pub const DATABASE: u8 = 4;
    pub const TABLESPACE: u8 = 5;
    pub const HEAP2: u8 = 9;
    pub const HEAP: u8 = 10;

    /// The names `pg_waldump` prints, by id.
    pub const BUILTIN_NAMES: [&str; 22] = [
        "XLOG",
        "Transaction",
        "Storage",
        "CLOG",
        "Database",
        "Tablespace",
        "MultiXact",
        "RelMap",
        "Standby",
        "Heap2",
        "Heap",
        "Btree",
        "Hash",
        "Gin",
        "Gist",
        "Sequence",
        "SPGist",
        "BRIN",
        "CommitTs",
        "ReplicationOrigin",
        "Generic",
        "LogicalMessage",
    ];

    /// `RM_MIN_CUSTOM_ID`: ids from here to 255 belong to extensions.
    pub const FIRST_CUSTOM: u8 = 128;

    /// `RmgrIdIsValid`.
    pub fn is_valid(id: u8) -> bool {
        usize::from(id) < BUILTIN_NAMES.len() || id >= FIRST_CUSTOM
    }

    pub fn name(id: u8) -> Option<&'static str> {
        BUILTIN_NAMES.get(usize::from(id)).copied()
    }
}

/// `xl_info` values this crate acts on (the rmgr's bits are `info & 0xF0`).
pub mod info {
    /// `XLR_RMGR_INFO_MASK`.
    pub const RMGR_MASK: u8 = 0xF0;
    /// `XLOG_SWITCH` (RM_XLOG_ID).
    pub const XLOG_SWITCH: u8 = 0x40;
    /// `XLOG_OVERWRITE_CONTRECORD` (RM_XLOG_ID).
    pub const XLOG_OVERWRITE_CONTRECORD: u8 = 0xD0;
    /// `XLOG_DBASE_CREATE_FILE_COPY` (RM_DBASE_ID).
    pub const DBASE_CREATE_FILE_COPY: u8 = 0x00;
    /// `XLOG_DBASE_CREATE_WAL_LOG` (RM_DBASE_ID).
    pub const DBASE_CREATE_WAL_LOG: u8 = 0x10;
    /// `XLOG_DBASE_DROP` (RM_DBASE_ID).
    pub const DBASE_DROP: u8 = 0x20;
    /// `XLOG_SMGR_CREATE` (RM_SMGR_ID).
    pub const SMGR_CREATE: u8 = 0x10;
    /// `XLOG_SMGR_TRUNCATE` (RM_SMGR_ID).
    pub const SMGR_TRUNCATE: u8 = 0x20;
}

/// The geometry and version stamp of one server's WAL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalFormat {
    /// `XLOG_PAGE_MAGIC`: changes with every major version's WAL format.
    pub page_magic: u16,
    /// `wal_segment_size`, in bytes.
    pub segment_size: u64,
    /// `XLOG_BLCKSZ`.
    pub page_size: u32,
}

/// `XLOG_BLCKSZ` of every standard build.
pub const DEFAULT_PAGE_SIZE: u32 = 8192;

impl WalFormat {
    /// `XLOG_PAGE_MAGIC` by major version, from each version's
    /// `src/include/access/xlog_internal.h`.
    pub const MAGIC_BY_MAJOR: [(u32, u16); 4] =
        [(15, 0xD110), (16, 0xD113), (17, 0xD116), (18, 0xD118)];

    /// None for an unsupported major, or a segment size PostgreSQL does not
    /// allow (a power of two from 1 MB to 1 GB).
    pub fn for_major(major: u32, segment_size: u64) -> Option<WalFormat> {
        let (_, page_magic) = Self::MAGIC_BY_MAJOR
            .into_iter()
            .find(|(known, _)| *known == major)?;
        let valid_size =
            segment_size.is_power_of_two() && (1 << 20..=1 << 30).contains(&segment_size);
        valid_size.then_some(WalFormat {
            page_magic,
            segment_size,
            page_size: DEFAULT_PAGE_SIZE,
        })
    }

    pub(crate) fn page_bytes(&self) -> u64 {
        u64::from(self.page_size)
    }

    // The geometry helpers treat a zero size as "no pages" rather than
    // divide by zero; readers and sources refuse such a format up front.

    /// The start of the page holding `lsn`.
    pub fn page_start(&self, lsn: Lsn) -> Lsn {
        Lsn(lsn.0 - lsn.0.checked_rem(self.page_bytes()).unwrap_or(0))
    }

    /// The start of the segment holding `lsn`.
    pub fn segment_start(&self, lsn: Lsn) -> Lsn {
        Lsn(lsn.0 - lsn.0.checked_rem(self.segment_size).unwrap_or(0))
    }

    /// `XLByteToSeg`.
    pub fn segment_number(&self, lsn: Lsn) -> u64 {
        lsn.0.checked_div(self.segment_size).unwrap_or(0)
    }

    /// The size of the header of the page starting at `page`: the first page
    /// of every segment, and only it, has the long header.
    pub fn page_header_size(&self, page: Lsn) -> u64 {
        if self.segment_start(page) == page {
            page::LONG_HEADER_SIZE
        } else {
            page::SHORT_HEADER_SIZE
        }
    }

    /// Whether the page and segment sizes can hold WAL at all; sources and
    /// readers refuse anything else rather than divide by zero.
    pub(crate) fn is_usable(&self) -> bool {
        self.page_size.is_power_of_two()
            && u64::from(self.page_size) >= 2 * page::LONG_HEADER_SIZE
            && self.segment_size.is_power_of_two()
            && self.segment_size >= u64::from(self.page_size)
    }
}

/// Why WAL could not be read or decoded.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// No file in `pg_wal` holds this segment: already removed (or recycled)
    /// by the server, or not created yet.
    #[error("the WAL segment starting at {segment_start} is not in pg_wal")]
    SegmentMissing { segment_start: Lsn },
    #[error("cannot read WAL file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The segment file ends before the page: only trimmed copies of segments
    /// are short; the server's own segment files have their full size.
    #[error("WAL file {path} ends before the page at {page}")]
    ShortSegment { path: PathBuf, page: Lsn },
    /// The page's header names another position: a recycled segment not yet
    /// overwritten, or WAL removed and reused under the reader's feet. Below
    /// the server's flush position this means the WAL the reader wanted is gone.
    #[error("the WAL page at {page} holds the page of {found} (recycled or removed WAL)")]
    UnexpectedPageAddress { page: Lsn, found: Lsn },
    #[error("invalid WAL page header at {page}: {reason}")]
    InvalidPageHeader { page: Lsn, reason: String },
    #[error("invalid WAL record at {at}: {reason}")]
    InvalidRecord { at: Lsn, reason: String },
    #[error(
        "the WAL record at {at} fails its CRC check (stored {stored:08X}, computed {computed:08X})"
    )]
    BadCrc { at: Lsn, stored: u32, computed: u32 },
}
