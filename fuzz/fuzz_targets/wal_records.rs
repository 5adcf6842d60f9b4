//! Records with arbitrary bodies (fragment headers and payload), each with a
//! correct length, prev-link and CRC, laid out on pages as PostgreSQL's
//! `CopyXLogRecordToWAL` does, across page and segment boundaries; then,
//! optionally, damaged. The reader must return exactly the records written,
//! where they were written, each as soon as the limit reaches its end, or
//! stop with an error at the record whose body does not decode.
//!
//! Input:
//!
//! * byte 0: bits 0-1 the major; bit 2 read with a limit that moves in steps
//!   (byte 3); bit 3 the bytes after the records are damage (5 bytes each:
//!   offset u32, xor mask).
//! * byte 1: the first record's page, counted back from the end of the
//!   first segment; byte 2: its offset in that page, in 8-byte units.
//! * byte 3: the limit's step, in units of 97 bytes.
//! * byte 4: how many records follow (at most 48).
//! * each record: rmgr u8, info u8, big u8, header length u16, headers,
//!   payload length u16, payload. A `big` of 0xF0 or more adds a main data of
//!   (`big` − 0xEF) × 12 kB, up to 192 kB (a long main-data header between
//!   the headers and the payload, the data after the payload); one such
//!   record per input, so that inputs stay quick.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use ptrack_core::wal::crc32c::Crc32c;
use ptrack_core::wal::{record_effects, WalError, WalFormat, WalReader, WalSource};
use ptrack_core::Lsn;

const PAGE: u64 = 8192;
const SEGMENT: u64 = 1 << 20;
/// The first segment written: segment 6, as the PostgreSQL 17 fixture.
const BASE: u64 = 6 * SEGMENT;
const SYSTEM_ID: u64 = 7_300_000_000_000_000_001;

/// Sparse pages: only those written exist.
struct Sparse {
    pages: HashMap<u64, Vec<u8>>,
}

impl Sparse {
    fn page(&mut self, page: u64) -> &mut Vec<u8> {
        self.pages
            .entry(page)
            .or_insert_with(|| vec![0; PAGE as usize])
    }
}

impl WalSource for &Sparse {
    fn read_page(&mut self, page_start: Lsn, buf: &mut [u8]) -> Result<(), WalError> {
        match self.pages.get(&page_start.0) {
            Some(page) => {
                buf.copy_from_slice(page);
                Ok(())
            }
            None => Err(WalError::SegmentMissing {
                segment_start: Lsn(page_start.0 - page_start.0 % SEGMENT),
            }),
        }
    }
}

struct Placed {
    start: u64,
    raw_end: u64,
    end: u64,
    rmgr: u8,
    info: u8,
    total_len: u32,
}

struct Writer {
    wal: Sparse,
    magic: u16,
    insert: u64,
    prev: u64,
}

fn header_size(page: u64) -> u64 {
    if page % SEGMENT == 0 {
        40
    } else {
        24
    }
}

impl Writer {
    fn page_header(&mut self, page: u64, info: u16, remaining: u32) {
        let magic = self.magic;
        let bytes = self.wal.page(page);
        let long = page % SEGMENT == 0;
        let info = if long { info | 2 } else { info };
        bytes[0..2].copy_from_slice(&magic.to_le_bytes());
        bytes[2..4].copy_from_slice(&info.to_le_bytes());
        bytes[4..8].copy_from_slice(&1u32.to_le_bytes());
        bytes[8..16].copy_from_slice(&page.to_le_bytes());
        bytes[16..20].copy_from_slice(&remaining.to_le_bytes());
        if long {
            bytes[24..32].copy_from_slice(&SYSTEM_ID.to_le_bytes());
            bytes[32..36].copy_from_slice(&(SEGMENT as u32).to_le_bytes());
            bytes[36..40].copy_from_slice(&(PAGE as u32).to_le_bytes());
        }
    }

    /// Writes `record` (whose header lacks length, prev-link and CRC) at the
    /// insert position, in pieces, as the server does.
    fn push(&mut self, rmgr: u8, info: u8, body: &[&[u8]]) -> Placed {
        let body_len: usize = body.iter().map(|piece| piece.len()).sum();
        let total_len = 24 + body_len as u32;
        let mut header = [0u8; 24];
        header[0..4].copy_from_slice(&total_len.to_le_bytes());
        header[4..8].copy_from_slice(&7u32.to_le_bytes());
        header[8..16].copy_from_slice(&self.prev.to_le_bytes());
        header[16] = info;
        header[17] = rmgr;
        let mut crc = Crc32c::new();
        for piece in body {
            crc.update(piece);
        }
        crc.update(&header[..20]);
        header[20..24].copy_from_slice(&crc.finish().to_le_bytes());

        let mut position = self.insert;
        if position % PAGE == 0 {
            self.page_header(position, 0, 0);
            position += header_size(position);
        }
        let start = position;
        let mut remaining = total_len as u64;
        for piece in std::iter::once(&header[..]).chain(body.iter().copied()) {
            let mut piece = piece;
            while !piece.is_empty() {
                if position % PAGE == 0 {
                    self.page_header(position, 1, remaining as u32);
                    position += header_size(position);
                }
                let page = position - position % PAGE;
                let room = (page + PAGE - position) as usize;
                let n = room.min(piece.len());
                let at = (position - page) as usize;
                self.wal.page(page)[at..at + n].copy_from_slice(&piece[..n]);
                piece = &piece[n..];
                position += n as u64;
                remaining -= n as u64;
            }
        }
        let raw_end = position;
        let mut end = (raw_end + 7) & !7;
        if rmgr == 0 && info & 0xF0 == 0x40 {
            // XLOG_SWITCH: the rest of the segment is unused.
            end = end.div_ceil(SEGMENT) * SEGMENT;
        }
        self.insert = end;
        self.prev = start;
        Placed {
            start,
            raw_end,
            end,
            rmgr,
            info,
            total_len,
        }
    }
}

struct Input<'a> {
    bytes: &'a [u8],
}

impl<'a> Input<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u16(&mut self) -> Option<u16> {
        let bytes = self.take(2)?;
        Some(u16::from_le_bytes([bytes[0], bytes[1]]))
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input { bytes: data };
    let Some(config) = input.take(5) else { return };
    let major = [15, 16, 17, 18][usize::from(config[0] & 3)];
    let format = WalFormat::for_major(major, SEGMENT).expect("a known major");
    let stepping = config[0] & 4 != 0;
    let damaged = config[0] & 8 != 0;
    let first_page = BASE + SEGMENT - (1 + u64::from(config[1]) % (SEGMENT / PAGE)) * PAGE;
    let header = header_size(first_page);
    let offset = (8 * u64::from(config[2])).min(PAGE - header - 24);
    let step = 97 * u64::from(config[3]).max(1);
    const MAX_BIG: usize = 16 * 12 * 1024;
    static FILLER: [u8; MAX_BIG] = [0x5A; MAX_BIG];
    let count = usize::from(config[4]).min(48);

    let mut writer = Writer {
        wal: Sparse {
            pages: HashMap::new(),
        },
        magic: format.page_magic,
        insert: first_page,
        prev: first_page - 0x100,
    };
    // The segment's first page, with its long header, which the reader
    // checks on entering the segment.
    writer.page_header(BASE, 0, 0);
    writer.page_header(first_page, 0, 0);
    if offset > 0 {
        writer.insert = first_page + header + offset;
    }
    let first_start = writer.insert;
    let mut placed = Vec::new();
    let mut big_used = false;
    for _ in 0..count {
        let (Some(rmgr), Some(info), Some(big)) = (input.u8(), input.u8(), input.u8()) else {
            break;
        };
        let Some(headers) = input.u16().and_then(|n| input.take(usize::from(n))) else {
            break;
        };
        let Some(payload) = input.u16().and_then(|n| input.take(usize::from(n))) else {
            break;
        };
        let main_len = if big >= 0xF0 && !big_used {
            big_used = true;
            usize::from(big - 0xEF) * 12 * 1024
        } else {
            0
        };
        let mut main_header = [254u8, 0, 0, 0, 0];
        main_header[1..].copy_from_slice(&(main_len as u32).to_le_bytes());
        let body: Vec<&[u8]> = if main_len == 0 {
            vec![headers, payload]
        } else {
            vec![headers, &main_header, payload, &FILLER[..main_len]]
        };
        placed.push(writer.push(rmgr, info, &body));
    }
    let Some(last) = placed.last() else { return };
    let wal_end = last.raw_end;
    if damaged {
        let pages: Vec<u64> = {
            let mut pages: Vec<u64> = writer.wal.pages.keys().copied().collect();
            pages.sort_unstable();
            pages
        };
        while let Some(op) = input.take(5) {
            let at = u32::from_le_bytes(op[..4].try_into().unwrap()) as usize;
            let page = pages[(at / PAGE as usize) % pages.len()];
            writer.wal.page(page)[at % PAGE as usize] ^= op[4];
        }
    }

    // At most 256 steps: each one reads the record it stops in again.
    let step = step.max((wal_end - first_start) / 256);
    let mut reader = WalReader::at_record(&writer.wal, format, Lsn(first_start));
    let mut limit = if stepping {
        (first_start + step).min(wal_end)
    } else {
        wal_end
    };
    let mut next = 0usize;
    let mut rounds = 0usize;
    loop {
        rounds += 1;
        assert!(rounds < 100_000, "the reader does not get anywhere");
        match reader.next_record(Lsn(limit)) {
            Ok(Some(record)) => {
                for _ in record_effects(&record) {}
                if damaged {
                    continue;
                }
                let expected = placed.get(next).expect("a record nobody wrote");
                assert_eq!(record.start.0, expected.start);
                assert_eq!(record.end.0, expected.end);
                assert_eq!(record.rmgr, expected.rmgr);
                assert_eq!(record.info, expected.info);
                assert_eq!(record.total_len, expected.total_len);
                assert!(
                    expected.raw_end <= limit,
                    "a record returned before its end {} is below the limit {limit}",
                    expected.raw_end
                );
                assert!(record.main_data.len() <= record.total_len as usize);
                next += 1;
            }
            Ok(None) => {
                if !damaged {
                    if let Some(expected) = placed.get(next) {
                        assert!(
                            expected.raw_end > limit,
                            "the record at {:X} ends at {:X}, below the limit {limit:X}, \
                             but was not returned",
                            expected.start,
                            expected.raw_end
                        );
                    }
                }
                if limit >= wal_end {
                    break;
                }
                limit = (limit + step).min(wal_end);
            }
            Err(error) => {
                if !damaged {
                    let expected = placed.get(next).expect("an error after the last record");
                    match error {
                        WalError::InvalidRecord { at, .. } => assert_eq!(at.0, expected.start),
                        other => panic!("unexpected error at record {next}: {other}"),
                    }
                }
                break;
            }
        }
    }
    if !damaged && next == placed.len() {
        assert_eq!(reader.next_record_start().0, placed[next - 1].end);
    }
});
