//! One WAL record: its fixed header (`XLogRecord`) and the fragment headers
//! that follow it (`DecodeXLogRecord`).
//!
//! Layout, little-endian and unaligned after the fixed header:
//!
//! ```text
//! XLogRecord: xl_tot_len u32 @0, xl_xid u32 @4, xl_prev u64 @8,
//!             xl_info u8 @16, xl_rmid u8 @17, padding @18, xl_crc u32 @20
//! then fragment headers, each starting with an id byte:
//!   0..=32  block reference: fork_flags u8, data_length u16,
//!           [image: length u16, hole_offset u16, bimg_info u8,
//!                   [hole_length u16 if compressed with a hole]],
//!           [RelFileLocator: spcOid, dbOid, relNumber, 3 × u32 unless SAME_REL],
//!           block number u32
//!   252     top-level xid u32
//!   253     replication origin u16
//!   254     main data length u32 (last header)
//!   255     main data length u8 (last header)
//! then each block's image and data in block order, then the main data.
//! ```

use super::crc32c::Crc32c;
use super::WalError;
use crate::block::{Fork, RelFileKey};
use crate::lsn::Lsn;

/// `SizeOfXLogRecord`.
pub const RECORD_HEADER_SIZE: u64 = 24;
/// Offset of `xl_crc` in the record header.
const CRC_OFFSET: usize = 20;
/// `XLogRecordMaxSize` (16+; 15's reader cannot allocate more either).
pub const MAX_RECORD_SIZE: u32 = 1020 * 1024 * 1024;

/// `XLR_MAX_BLOCK_ID`.
pub const MAX_BLOCK_ID: u8 = 32;
const BLOCK_ID_DATA_SHORT: u8 = 255;
const BLOCK_ID_DATA_LONG: u8 = 254;
const BLOCK_ID_ORIGIN: u8 = 253;
const BLOCK_ID_TOPLEVEL_XID: u8 = 252;

const BKPBLOCK_FORK_MASK: u8 = 0x0F;
const BKPBLOCK_HAS_IMAGE: u8 = 0x10;
const BKPBLOCK_HAS_DATA: u8 = 0x20;
const BKPBLOCK_WILL_INIT: u8 = 0x40;
const BKPBLOCK_SAME_REL: u8 = 0x80;

/// `bimg_info` bits.
pub const BKPIMAGE_HAS_HOLE: u8 = 0x01;
pub const BKPIMAGE_APPLY: u8 = 0x02;
pub const BKPIMAGE_COMPRESS_PGLZ: u8 = 0x04;
pub const BKPIMAGE_COMPRESS_LZ4: u8 = 0x08;
pub const BKPIMAGE_COMPRESS_ZSTD: u8 = 0x10;
const BKPIMAGE_COMPRESSED: u8 =
    BKPIMAGE_COMPRESS_PGLZ | BKPIMAGE_COMPRESS_LZ4 | BKPIMAGE_COMPRESS_ZSTD;

/// The fragment headers of a record must lie within its first this many
/// bytes. PostgreSQL writes at most about 1 kB of them (33 block references
/// of at most 27 bytes, a replication origin, a top-level xid and a main
/// data length); only damaged or hand-made WAL has more, and the reader
/// refuses it rather than keep a record of any length to decode it.
pub const MAX_HEADERS_LEN: usize = 64 * 1024;

/// Bytes of a record's main data [`DecodedRecord::main_data`] keeps: the
/// records whose main data ptrack reads (`XLOG_SMGR_CREATE`,
/// `XLOG_SMGR_TRUNCATE`, `XLOG_DBASE_CREATE_FILE_COPY`) have 16 to 20 bytes
/// of it, while any role can write a logical message of up to 1 GB
/// (`pg_logical_emit_message` is PUBLIC), which the reader streams through
/// its CRC check without keeping it.
pub const MAX_KEPT_MAIN_DATA: usize = 64 * 1024;

/// A decoded record. Block images and block data are skipped, not kept, and
/// so is main data past [`MAX_KEPT_MAIN_DATA`] bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedRecord {
    /// Where the record header starts (`ReadRecPtr`).
    pub start: Lsn,
    /// PostgreSQL's `EndRecPtr`: where the next record starts, i.e. the
    /// record's end rounded up to 8 bytes, which is also the LSN `XLogInsert`
    /// returned for it and so the LSN the pages it changed carry. For
    /// `XLOG_SWITCH`: the end of the segment.
    pub end: Lsn,
    /// `xl_rmid`.
    pub rmgr: u8,
    /// `xl_info`.
    pub info: u8,
    /// `xl_xid`.
    pub xid: u32,
    /// `xl_prev`: the start of the record before this one.
    pub prev: Lsn,
    /// `xl_tot_len`: the record's bytes, headers included, padding excluded.
    pub total_len: u32,
    pub blocks: Vec<BlockReference>,
    /// The first `min(main_data_len, MAX_KEPT_MAIN_DATA)` bytes of the main
    /// data.
    pub main_data: Vec<u8>,
    /// The length of the whole main data.
    pub main_data_len: u32,
}

impl DecodedRecord {
    /// The resource manager's own bits of `xl_info`.
    pub fn rmgr_info(&self) -> u8 {
        self.info & super::info::RMGR_MASK
    }

    pub fn is_switch(&self) -> bool {
        self.rmgr == super::rmgr::XLOG && self.rmgr_info() == super::info::XLOG_SWITCH
    }
}

/// One block the record changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockReference {
    /// The block reference id, 0 to 32.
    pub id: u8,
    pub file: RelFileKey,
    pub block: u32,
    /// The record carries a full-page image of the block.
    pub has_image: bool,
    /// Redo initializes the page from scratch (`BKPBLOCK_WILL_INIT`).
    pub will_init: bool,
    /// Present when `has_image`.
    pub image: Option<BlockImage>,
    /// Bytes of rmgr-specific data for this block.
    pub data_len: u16,
}

/// The header of a full-page image (`XLogRecordBlockImageHeader`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockImage {
    /// Bytes of image stored in the record.
    pub length: u16,
    pub hole_offset: u16,
    /// `bimg_info`.
    pub info: u8,
    /// The stored hole length; only compressed images with a hole store it.
    pub stored_hole_length: Option<u16>,
}

impl BlockImage {
    pub fn has_hole(&self) -> bool {
        self.info & BKPIMAGE_HAS_HOLE != 0
    }

    pub fn is_compressed(&self) -> bool {
        self.info & BKPIMAGE_COMPRESSED != 0
    }

    /// Redo restores the page from the image (rather than only checking it,
    /// `wal_consistency_checking`).
    pub fn applies(&self) -> bool {
        self.info & BKPIMAGE_APPLY != 0
    }

    /// The hole's length as `DecodeXLogRecord` computes it: stored when the
    /// image is compressed, otherwise what the image lacks of a block.
    pub fn hole_length(&self, block_size: u32) -> u32 {
        match (self.is_compressed(), self.stored_hole_length) {
            (true, stored) => u32::from(stored.unwrap_or(0)),
            (false, _) => block_size.saturating_sub(u32::from(self.length)),
        }
    }
}

/// The fields of the fixed record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    pub total_len: u32,
    pub xid: u32,
    pub prev: Lsn,
    pub info: u8,
    pub rmgr: u8,
    pub crc: u32,
}

impl RecordHeader {
    /// `bytes` holds at least [`RECORD_HEADER_SIZE`] bytes.
    pub fn parse(bytes: &[u8]) -> RecordHeader {
        use super::page::{u32_at, u64_at};
        RecordHeader {
            total_len: u32_at(bytes, 0),
            xid: u32_at(bytes, 4),
            prev: Lsn(u64_at(bytes, 8)),
            info: bytes[16],
            rmgr: bytes[17],
            crc: u32_at(bytes, CRC_OFFSET),
        }
    }
}

/// Reads header fields front to back from the first bytes of a record of
/// `total_len` bytes. Running out of them is the record's fault when the
/// field would pass the record's end, and the headers' when only the bytes
/// kept ([`MAX_HEADERS_LEN`]) end first.
struct Fields<'a> {
    bytes: &'a [u8],
    total_len: u64,
    position: usize,
}

const SHORT_DATA: &str = "record with invalid length: its headers run past its end";

impl Fields<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let end = self.position.checked_add(N).ok_or(SHORT_DATA)?;
        let Some(field) = self.bytes.get(self.position..end) else {
            if end as u64 > self.total_len {
                return Err(SHORT_DATA.into());
            }
            return Err(format!(
                "record with more than {MAX_HEADERS_LEN} bytes of fragment headers"
            ));
        };
        self.position = end;
        Ok(field.try_into().expect("slice of N bytes"))
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take()?))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take()?))
    }

    fn remaining(&self) -> u64 {
        self.total_len - self.position as u64
    }
}

/// What a record's fragment headers say.
#[derive(Debug)]
struct Layout {
    blocks: Vec<BlockReference>,
    main_data_len: u32,
}

/// Decodes the fragment headers of a record of `total_len` bytes from its
/// first bytes, `head` (the whole record, or at least its headers), as
/// `DecodeXLogRecord`. The checks that need `BLCKSZ` (an image without hole
/// or compression is a whole block) are left out: `BLCKSZ` is not part of
/// the WAL format, and the CRC already vouches for the bytes.
fn decode_headers(head: &[u8], total_len: u64) -> Result<Layout, String> {
    if total_len < RECORD_HEADER_SIZE || (head.len() as u64) < RECORD_HEADER_SIZE {
        return Err(format!("record of {total_len} bytes"));
    }
    let mut fields = Fields {
        bytes: head,
        total_len,
        position: RECORD_HEADER_SIZE as usize,
    };
    let mut blocks: Vec<BlockReference> = Vec::new();
    let mut main_data_len = 0u32;
    // Payload bytes the headers so far announce: they follow the last header.
    let mut payload = 0u64;
    let mut previous_relation: Option<(u32, u32, u32)> = None;
    while fields.remaining() > payload {
        let id = fields.u8()?;
        match id {
            BLOCK_ID_DATA_SHORT => {
                main_data_len = u32::from(fields.u8()?);
                payload += u64::from(main_data_len);
                break; // by convention, the main data comes last
            }
            BLOCK_ID_DATA_LONG => {
                main_data_len = fields.u32()?;
                payload += u64::from(main_data_len);
                break;
            }
            BLOCK_ID_ORIGIN => {
                fields.u16()?;
            }
            BLOCK_ID_TOPLEVEL_XID => {
                fields.u32()?;
            }
            0..=MAX_BLOCK_ID => {
                if blocks.last().is_some_and(|last| id <= last.id) {
                    return Err(format!("out-of-order block_id {id}"));
                }
                let fork_flags = fields.u8()?;
                let data_len = fields.u16()?;
                let has_data = fork_flags & BKPBLOCK_HAS_DATA != 0;
                if has_data != (data_len > 0) {
                    return Err(format!(
                        "block {id}: BKPBLOCK_HAS_DATA is {has_data} but the data length is {data_len}"
                    ));
                }
                payload += u64::from(data_len);
                let image = if fork_flags & BKPBLOCK_HAS_IMAGE != 0 {
                    let image = decode_image_header(&mut fields, id)?;
                    payload += u64::from(image.length);
                    Some(image)
                } else {
                    None
                };
                let relation = if fork_flags & BKPBLOCK_SAME_REL == 0 {
                    let relation = (fields.u32()?, fields.u32()?, fields.u32()?);
                    previous_relation = Some(relation);
                    relation
                } else {
                    previous_relation.ok_or_else(|| {
                        format!("block {id}: BKPBLOCK_SAME_REL set but no previous relation")
                    })?
                };
                let block = fields.u32()?;
                let fork_number = fork_flags & BKPBLOCK_FORK_MASK;
                let fork = Fork::from_number(i32::from(fork_number))
                    .ok_or_else(|| format!("block {id}: invalid fork number {fork_number}"))?;
                let (tablespace, database, relfilenode) = relation;
                blocks.push(BlockReference {
                    id,
                    file: RelFileKey {
                        tablespace,
                        database,
                        relfilenode,
                        fork,
                    },
                    block,
                    has_image: image.is_some(),
                    will_init: fork_flags & BKPBLOCK_WILL_INIT != 0,
                    image,
                    data_len,
                });
            }
            _ => return Err(format!("invalid block_id {id}")),
        }
    }
    if fields.remaining() != payload {
        return Err(format!(
            "record with invalid length: {} payload bytes after the headers, the headers announce {payload}",
            fields.remaining()
        ));
    }
    Ok(Layout {
        blocks,
        main_data_len,
    })
}

/// A record assembled piece by piece as the reader reads it, in bounded
/// memory whatever its length: every byte goes through the CRC, but only the
/// first [`MAX_HEADERS_LEN`] bytes (the fixed header and the fragment
/// headers) and the first [`MAX_KEPT_MAIN_DATA`] bytes of the main data are
/// kept. Block images and block data pass through.
#[derive(Debug)]
pub(crate) struct Assembly {
    total_len: u64,
    received: u64,
    /// The record's first `min(total_len, MAX_HEADERS_LEN)` bytes.
    head: Vec<u8>,
    /// Of every byte from the end of the fixed header on, so far.
    crc: Crc32c,
    /// Decoded once `head` is complete (an error waits for the CRC check).
    layout: Option<Result<Layout, String>>,
    /// The record-byte range of the main data to keep.
    keep: std::ops::Range<u64>,
    main_data: Vec<u8>,
}

impl Assembly {
    pub fn new() -> Self {
        Assembly {
            total_len: 0,
            received: 0,
            head: Vec::new(),
            crc: Crc32c::new(),
            layout: None,
            keep: 0..0,
            main_data: Vec::new(),
        }
    }

    /// Starts a record of `total_len` bytes (from its `xl_tot_len`).
    pub fn begin(&mut self, total_len: u32) {
        self.total_len = u64::from(total_len);
        self.received = 0;
        self.head.clear();
        self.crc = Crc32c::new();
        self.layout = None;
        self.keep = 0..0;
        self.main_data = Vec::new();
    }

    /// Bytes pushed so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The fixed header, once it has arrived.
    pub fn header(&self) -> Option<&[u8]> {
        self.head.get(..RECORD_HEADER_SIZE as usize)
    }

    /// The record's next bytes; all of them come to `total_len`.
    pub fn push(&mut self, mut bytes: &[u8]) {
        debug_assert!(self.received + bytes.len() as u64 <= self.total_len);
        let head_len = self.total_len.min(MAX_HEADERS_LEN as u64) as usize;
        if self.head.len() < head_len {
            let n = (head_len - self.head.len()).min(bytes.len());
            self.head.extend_from_slice(&bytes[..n]);
            self.checksum(&bytes[..n]);
            bytes = &bytes[n..];
            if self.head.len() == head_len {
                self.decode_layout();
            }
        }
        if bytes.is_empty() {
            return;
        }
        let (from, to) = (self.received, self.received + bytes.len() as u64);
        let (keep_from, keep_to) = (self.keep.start.max(from), self.keep.end.min(to));
        if keep_from < keep_to {
            let range = (keep_from - from) as usize..(keep_to - from) as usize;
            self.main_data.extend_from_slice(&bytes[range]);
        }
        self.checksum(bytes);
    }

    fn checksum(&mut self, bytes: &[u8]) {
        let skip = RECORD_HEADER_SIZE.saturating_sub(self.received) as usize;
        self.crc.update(bytes.get(skip..).unwrap_or_default());
        self.received += bytes.len() as u64;
    }

    fn decode_layout(&mut self) {
        let layout = decode_headers(&self.head, self.total_len);
        if let Ok(layout) = &layout {
            // Block images and data come first, in block order; the main
            // data last.
            let start = self.total_len - u64::from(layout.main_data_len);
            let kept = u64::from(layout.main_data_len).min(MAX_KEPT_MAIN_DATA as u64);
            self.keep = start..start + kept;
            let in_head = (self.head.len() as u64).min(self.keep.end);
            if self.keep.start < in_head {
                let range = self.keep.start as usize..in_head as usize;
                self.main_data.extend_from_slice(&self.head[range]);
            }
        }
        self.layout = Some(layout);
    }

    /// Checks the CRC of the complete record (`ValidXLogRecord`: the bytes
    /// after the fixed header, then the header up to `xl_crc`) and, if it
    /// holds, returns the record decoded.
    pub fn finish(&mut self, start: Lsn, end: Lsn) -> Result<DecodedRecord, WalError> {
        let invalid = |reason: String| WalError::InvalidRecord { at: start, reason };
        let Some(header_bytes) = self.header().filter(|_| self.received == self.total_len) else {
            return Err(invalid(format!(
                "record of {} bytes assembled from {} bytes",
                self.total_len, self.received
            )));
        };
        let header = RecordHeader::parse(header_bytes);
        let mut crc = self.crc;
        crc.update(&header_bytes[..CRC_OFFSET]);
        let computed = crc.finish();
        if computed != header.crc {
            return Err(WalError::BadCrc {
                at: start,
                stored: header.crc,
                computed,
            });
        }
        let layout = self
            .layout
            .take()
            .unwrap_or_else(|| Err("record headers not decoded".into()))
            .map_err(invalid)?;
        Ok(DecodedRecord {
            start,
            end,
            rmgr: header.rmgr,
            info: header.info,
            xid: header.xid,
            prev: header.prev,
            total_len: header.total_len,
            blocks: layout.blocks,
            main_data: std::mem::take(&mut self.main_data),
            main_data_len: layout.main_data_len,
        })
    }
}

fn decode_image_header(fields: &mut Fields, id: u8) -> Result<BlockImage, String> {
    let length = fields.u16()?;
    let hole_offset = fields.u16()?;
    let info = fields.u8()?;
    let compressed = info & BKPIMAGE_COMPRESSED != 0;
    let has_hole = info & BKPIMAGE_HAS_HOLE != 0;
    let stored_hole_length = if compressed && has_hole {
        Some(fields.u16()?)
    } else {
        None
    };
    let image = BlockImage {
        length,
        hole_offset,
        info,
        stored_hole_length,
    };
    if has_hole && (hole_offset == 0 || stored_hole_length == Some(0)) {
        return Err(format!(
            "block {id}: BKPIMAGE_HAS_HOLE set, but hole offset {hole_offset} length {stored_hole_length:?}"
        ));
    }
    if !has_hole && hole_offset != 0 {
        return Err(format!(
            "block {id}: BKPIMAGE_HAS_HOLE not set, but hole offset {hole_offset}"
        ));
    }
    Ok(image)
}
