//! A small WAL writer for the unit tests, written from the format as
//! `xlogrecord.h`, `xlog_internal.h` and `XLogRecordAssemble` /
//! `CopyXLogRecordToWAL` describe it, not from the decoder. Its own checks
//! are the CRC-32C vectors and the real-server fixtures
//! (`core/tests/wal_fixtures.rs`).

use std::cell::RefCell;
use std::rc::Rc;

use super::crc32c::Crc32c;
use super::{max_align, WalError, WalFormat, WalSource};
use crate::lsn::Lsn;

pub const PAGE: u64 = 8192;
pub const SEGMENT: u64 = 1 << 20;
pub const SYSTEM_ID: u64 = 7_300_000_000_000_000_001;

pub fn format() -> WalFormat {
    WalFormat::for_major(17, SEGMENT).unwrap()
}

#[derive(Clone, Debug, Default)]
pub struct ImageSpec {
    /// The stored image bytes (`length` is their count).
    pub bytes: Vec<u8>,
    pub hole_offset: u16,
    pub info: u8,
    /// Written after the image header when Some (compressed with a hole).
    pub hole_length: Option<u16>,
}

#[derive(Clone, Debug, Default)]
pub struct BlockSpec {
    pub id: u8,
    pub fork: u8,
    /// (tablespace, database, relfilenode); None writes BKPBLOCK_SAME_REL.
    pub relation: Option<(u32, u32, u32)>,
    pub block: u32,
    pub will_init: bool,
    pub image: Option<ImageSpec>,
    pub data: Vec<u8>,
}

#[derive(Clone, Debug, Default)]
pub struct RecordSpec {
    pub rmgr: u8,
    pub info: u8,
    pub xid: u32,
    pub blocks: Vec<BlockSpec>,
    pub origin: Option<u16>,
    pub toplevel_xid: Option<u32>,
    pub main_data: Vec<u8>,
}

impl RecordSpec {
    /// The bytes after the fixed header, in `XLogRecordAssemble`'s order.
    pub fn body(&self) -> Vec<u8> {
        let mut headers = Vec::new();
        let mut payload = Vec::new();
        for block in &self.blocks {
            let mut flags = block.fork;
            if block.image.is_some() {
                flags |= 0x10;
            }
            if !block.data.is_empty() {
                flags |= 0x20;
            }
            if block.will_init {
                flags |= 0x40;
            }
            if block.relation.is_none() {
                flags |= 0x80;
            }
            headers.push(block.id);
            headers.push(flags);
            headers.extend_from_slice(&(block.data.len() as u16).to_le_bytes());
            if let Some(image) = &block.image {
                headers.extend_from_slice(&(image.bytes.len() as u16).to_le_bytes());
                headers.extend_from_slice(&image.hole_offset.to_le_bytes());
                headers.push(image.info);
                if let Some(hole_length) = image.hole_length {
                    headers.extend_from_slice(&hole_length.to_le_bytes());
                }
                payload.extend_from_slice(&image.bytes);
            }
            if let Some((tablespace, database, relfilenode)) = block.relation {
                for oid in [tablespace, database, relfilenode] {
                    headers.extend_from_slice(&oid.to_le_bytes());
                }
            }
            headers.extend_from_slice(&block.block.to_le_bytes());
            payload.extend_from_slice(&block.data);
        }
        if let Some(origin) = self.origin {
            headers.push(253);
            headers.extend_from_slice(&origin.to_le_bytes());
        }
        if let Some(xid) = self.toplevel_xid {
            headers.push(252);
            headers.extend_from_slice(&xid.to_le_bytes());
        }
        if !self.main_data.is_empty() {
            if self.main_data.len() < 256 {
                headers.extend_from_slice(&[255, self.main_data.len() as u8]);
            } else {
                headers.push(254);
                headers.extend_from_slice(&(self.main_data.len() as u32).to_le_bytes());
            }
            payload.extend_from_slice(&self.main_data);
        }
        headers.extend_from_slice(&payload);
        headers
    }

    pub fn encode(&self, prev: Lsn) -> Vec<u8> {
        record_from_body(self.rmgr, self.info, self.xid, prev, &self.body())
    }
}

/// A whole record, header and CRC included, around `body`.
pub fn record_from_body(rmgr: u8, info: u8, xid: u32, prev: Lsn, body: &[u8]) -> Vec<u8> {
    let total_len = 24 + body.len() as u32;
    let mut record = Vec::with_capacity(total_len as usize);
    record.extend_from_slice(&total_len.to_le_bytes());
    record.extend_from_slice(&xid.to_le_bytes());
    record.extend_from_slice(&prev.0.to_le_bytes());
    record.extend_from_slice(&[info, rmgr, 0, 0]);
    record.extend_from_slice(&[0; 4]); // xl_crc, below
    record.extend_from_slice(body);
    let mut crc = Crc32c::new();
    crc.update(&record[24..]);
    crc.update(&record[..20]);
    let crc = crc.finish();
    record[20..24].copy_from_slice(&crc.to_le_bytes());
    record
}

/// A record of exactly `total_len` bytes (at least 26) carrying only main
/// data (and, for the few lengths a main-data header cannot hit alone, a
/// top-level xid).
pub fn filler(total_len: usize) -> RecordSpec {
    assert!(total_len >= 26);
    let (main, toplevel_xid) = match total_len - 26 {
        short if short < 256 => (short, None),
        long if long - 3 >= 256 => (long - 3, None),
        between => (between - 5, Some(1)),
    };
    RecordSpec {
        rmgr: 8, // Standby
        info: 0x10,
        toplevel_xid,
        main_data: vec![0xAB; main],
        ..RecordSpec::default()
    }
}

/// Where a record went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placed {
    pub start: Lsn,
    /// The byte after its last byte.
    pub raw_end: Lsn,
    /// Where the next record goes (`EndRecPtr`).
    pub end: Lsn,
}

/// Lays records out on pages as `CopyXLogRecordToWAL` does.
pub struct WalWriter {
    pub base: Lsn,
    pub bytes: Vec<u8>,
    pub insert: Lsn,
    pub prev: Lsn,
    pub timeline: u32,
    /// The raw end of the last record: the flush position to read up to.
    pub flushed: Lsn,
}

impl WalWriter {
    /// Starts writing at `base`, a segment start.
    pub fn new(base: Lsn) -> Self {
        assert_eq!(base.0 % SEGMENT, 0);
        WalWriter {
            base,
            bytes: Vec::new(),
            insert: base,
            prev: Lsn(base.0.saturating_sub(0x100)),
            timeline: 1,
            flushed: base,
        }
    }

    fn offset(&self, lsn: Lsn) -> usize {
        (lsn.0 - self.base.0) as usize
    }

    fn ensure_len(&mut self, end: Lsn) {
        let len = self.offset(end);
        if self.bytes.len() < len {
            self.bytes.resize(len, 0);
        }
    }

    pub fn header_size(page: Lsn) -> u64 {
        if page.0 % SEGMENT == 0 {
            40
        } else {
            24
        }
    }

    pub fn write_page_header(&mut self, page: Lsn, mut info: u16, remaining_length: u32) {
        assert_eq!(page.0 % PAGE, 0);
        self.ensure_len(Lsn(page.0 + PAGE));
        let at = self.offset(page);
        let long = page.0 % SEGMENT == 0;
        if long {
            info |= 0x0002;
        }
        let header = &mut self.bytes[at..at + 40];
        header[0..2].copy_from_slice(&format().page_magic.to_le_bytes());
        header[2..4].copy_from_slice(&info.to_le_bytes());
        header[4..8].copy_from_slice(&self.timeline.to_le_bytes());
        header[8..16].copy_from_slice(&page.0.to_le_bytes());
        header[16..20].copy_from_slice(&remaining_length.to_le_bytes());
        if long {
            header[24..32].copy_from_slice(&SYSTEM_ID.to_le_bytes());
            header[32..36].copy_from_slice(&(SEGMENT as u32).to_le_bytes());
            header[36..40].copy_from_slice(&(PAGE as u32).to_le_bytes());
        }
    }

    /// Writes an already encoded record at the insert position.
    pub fn push_bytes(&mut self, record: &[u8]) -> Placed {
        let mut position = self.insert;
        if position.0 % PAGE == 0 {
            self.write_page_header(position, 0, 0);
            position.0 += Self::header_size(position);
        }
        let start = position;
        let mut written = 0usize;
        loop {
            let page_end = position.0 - position.0 % PAGE + PAGE;
            let piece = ((page_end - position.0) as usize).min(record.len() - written);
            self.ensure_len(Lsn(position.0 + piece as u64));
            let at = self.offset(position);
            self.bytes[at..at + piece].copy_from_slice(&record[written..written + piece]);
            written += piece;
            position.0 += piece as u64;
            if written == record.len() {
                break;
            }
            let remaining = (record.len() - written) as u32;
            self.write_page_header(position, 0x0001, remaining);
            position.0 += Self::header_size(position);
        }
        self.insert = Lsn(max_align(position.0));
        self.prev = start;
        self.flushed = position;
        Placed {
            start,
            raw_end: position,
            end: self.insert,
        }
    }

    pub fn push(&mut self, spec: &RecordSpec) -> Placed {
        let record = spec.encode(self.prev);
        self.push_bytes(&record)
    }

    /// `XLOG_SWITCH`, after which writing resumes at the next segment.
    pub fn switch(&mut self) -> Placed {
        let placed = self.push(&RecordSpec {
            rmgr: 0,
            info: 0x40,
            ..RecordSpec::default()
        });
        self.insert = Lsn(placed.end.0.div_ceil(SEGMENT) * SEGMENT);
        Placed {
            end: self.insert,
            ..placed
        }
    }

    /// Pads with filler records until the insert position is `target`; each
    /// page's padding must leave 0 or at least 32 bytes.
    pub fn pad_to(&mut self, target: Lsn) {
        while self.insert < target {
            let mut position = self.insert.0;
            if position % PAGE == 0 {
                position += Self::header_size(self.insert);
            }
            let page_end = position - position % PAGE + PAGE;
            let room = target.0.min(page_end) - position;
            let mut len = room.min(4000);
            if room - len > 0 && room - len < 32 {
                len -= 32;
            }
            assert!(len >= 32 && len % 8 == 0, "cannot pad {room} bytes");
            self.push(&filler(len as usize));
        }
        assert_eq!(self.insert, target, "padding overshot");
    }

    /// Where the written WAL ends (the bytes after it are zeros).
    pub fn end(&self) -> Lsn {
        self.flushed
    }

    pub fn source(&self) -> MemorySource {
        MemorySource::new(self.base, self.bytes.clone())
    }
}

/// Pages from memory; the bytes can change under the reader, as a file the
/// server is writing does.
#[derive(Clone)]
pub struct MemorySource {
    pub base: Lsn,
    pub bytes: Rc<RefCell<Vec<u8>>>,
    pub reads: Rc<RefCell<u64>>,
}

impl MemorySource {
    pub fn new(base: Lsn, bytes: Vec<u8>) -> Self {
        MemorySource {
            base,
            bytes: Rc::new(RefCell::new(bytes)),
            reads: Rc::new(RefCell::new(0)),
        }
    }
}

impl WalSource for MemorySource {
    fn read_page(&mut self, page_start: Lsn, buf: &mut [u8]) -> Result<(), WalError> {
        *self.reads.borrow_mut() += 1;
        let bytes = self.bytes.borrow();
        let missing = WalError::SegmentMissing {
            segment_start: Lsn(page_start.0 - page_start.0 % SEGMENT),
        };
        let Some(offset) = page_start.0.checked_sub(self.base.0) else {
            return Err(missing);
        };
        let offset = offset as usize;
        match bytes.get(offset..offset + buf.len()) {
            Some(page) => {
                buf.copy_from_slice(page);
                Ok(())
            }
            None => Err(missing),
        }
    }
}
