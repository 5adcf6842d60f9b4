//! Arbitrary bytes as WAL pages, through the public reader API: page headers,
//! record assembly across pages and segments, block references, effects.
//!
//! Input: 8 bytes of configuration, then the WAL, laid out from the page its
//! first page header names (`xlp_pageaddr`, rounded down to a page):
//!
//! * byte 0: bits 0-1 the major (15, 16, 17, 18); bit 2 repair every page
//!   header (magic, address, long header) so that mutations reach the
//!   records; bit 3 search with `find_first_record_from` instead of
//!   `at_record`; bits 4-7 the segment size, 1 MB << n (n up to 10).
//! * bytes 1-2: where reading starts, in 8-byte units after the base.
//! * bytes 3-4: the limit's step in 64-byte units (0: one read to the end).
//! * bytes 5-6: how many bytes short of the data's end the final limit is.
//! * byte 7: bit 0 read once more after an error (the reader promises the
//!   same error again).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ptrack_core::wal::source::parse_segment_file_name;
use ptrack_core::wal::{
    record_effects, record_truncation, RecordEffect, WalError, WalFormat, WalReader, WalSource,
};
use ptrack_core::Lsn;

const CONFIG: usize = 8;
const PAGE: usize = 8192;
/// Records read per input at most (every one needs at least 24 bytes, so
/// this only bounds inputs that keep hitting the same position).
const MAX_RECORDS: usize = 20_000;

struct Pages<'a> {
    base: u64,
    bytes: &'a [u8],
}

impl WalSource for Pages<'_> {
    fn read_page(&mut self, page_start: Lsn, buf: &mut [u8]) -> Result<(), WalError> {
        let missing = WalError::SegmentMissing {
            segment_start: page_start,
        };
        let offset = page_start.0.checked_sub(self.base).ok_or(missing)?;
        let offset = usize::try_from(offset).map_err(|_| WalError::SegmentMissing {
            segment_start: page_start,
        })?;
        let end = offset.checked_add(buf.len());
        match end.and_then(|end| self.bytes.get(offset..end)) {
            Some(page) => {
                buf.copy_from_slice(page);
                Ok(())
            }
            None => Err(WalError::SegmentMissing {
                segment_start: page_start,
            }),
        }
    }
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

/// Makes every page header of `wal` one the reader accepts, keeping its info
/// bits (but the long-header bit) and remaining length.
fn repair_headers(wal: &mut [u8], base: u64, format: &WalFormat) {
    for (index, page) in wal.chunks_exact_mut(PAGE).enumerate() {
        let address = base + (index * PAGE) as u64;
        let first_of_segment = address % format.segment_size == 0;
        page[0..2].copy_from_slice(&format.page_magic.to_le_bytes());
        let mut info = u16_at(page, 2) & 0x000D;
        if first_of_segment {
            info |= 0x0002;
            page[32..36].copy_from_slice(&(format.segment_size as u32).to_le_bytes());
            page[36..40].copy_from_slice(&(PAGE as u32).to_le_bytes());
        }
        page[2..4].copy_from_slice(&info.to_le_bytes());
        page[8..16].copy_from_slice(&address.to_le_bytes());
    }
}

fn check_record(record: &ptrack_core::wal::DecodedRecord, format: &WalFormat) {
    assert!(record.end > record.start, "{record:?}");
    assert!(u64::from(record.total_len) >= 24);
    assert!(
        record.end.0 - record.start.0 >= u64::from(record.total_len),
        "{record:?}"
    );
    if record.is_switch() {
        assert_eq!(record.end.0 % format.segment_size, 0);
    } else {
        assert_eq!(record.end.0 % 8, 0);
    }
    assert!(record.blocks.len() <= 33);
    assert!(record.blocks.windows(2).all(|w| w[0].id < w[1].id));
    assert!(record.main_data.len() <= record.total_len as usize);
    let effects = record_effects(record);
    let blocks = effects
        .iter()
        .filter(|e| matches!(e, RecordEffect::Block(_)))
        .count();
    assert_eq!(blocks, record.blocks.len());
    assert!(effects.len() <= record.blocks.len() + 2);
    let _ = record_truncation(record);
}

fuzz_target!(|data: &[u8]| {
    if data.len() < CONFIG {
        return;
    }
    let (config, wal) = data.split_at(CONFIG);
    if let Ok(name) = std::str::from_utf8(wal.get(..24).unwrap_or(wal)) {
        let _ = parse_segment_file_name(name, 1 << 24);
    }
    let major = [15, 16, 17, 18][usize::from(config[0] & 3)];
    let segment_size = 1u64 << (20 + u32::from(config[0] >> 4).min(10));
    let Some(format) = WalFormat::for_major(major, segment_size) else {
        return;
    };
    let base = if wal.len() >= 16 {
        u64::from_le_bytes(wal[8..16].try_into().unwrap()) & !(PAGE as u64 - 1)
    } else {
        0
    };
    // Keep clear of the top of the LSN space, where no WAL ever is.
    let base = base & ((1 << 62) - 1);
    let mut wal = wal.to_vec();
    if config[0] & 4 != 0 {
        repair_headers(&mut wal, base, &format);
    }
    let start = Lsn(base + 8 * u64::from(u16_at(config, 1)));
    let step = 64 * u64::from(u16_at(config, 3));
    let end = Lsn((base + wal.len() as u64).saturating_sub(u64::from(u16_at(config, 5))));
    let retry = config[7] & 1 != 0;
    let source = Pages { base, bytes: &wal };
    let mut limit = if step == 0 {
        end
    } else {
        Lsn((start.0 + step).min(end.0))
    };
    let mut reader = if config[0] & 8 != 0 {
        match WalReader::find_first_record_from(source, format, start, limit) {
            Ok(reader) => reader,
            Err(_) => return,
        }
    } else {
        WalReader::at_record(source, format, start)
    };
    let mut previous_end = None;
    for _ in 0..MAX_RECORDS {
        let before = reader.next_record_start();
        // While searching, skipped records move the position.
        let settled = !reader.is_searching();
        match reader.next_record(limit) {
            Ok(Some(record)) => {
                check_record(&record, &format);
                if let Some(previous_end) = previous_end {
                    // Records only go forward (an abandoned record restarts
                    // at a later page).
                    assert!(record.start >= previous_end, "{record:?} {previous_end}");
                }
                assert_eq!(reader.next_record_start(), record.end);
                assert!(!reader.is_searching());
                previous_end = Some(record.end);
            }
            Ok(None) => {
                if settled {
                    assert_eq!(
                        reader.next_record_start(),
                        before,
                        "no record, yet the position moved"
                    );
                }
                if limit >= end {
                    break;
                }
                limit = Lsn((limit.0 + step).min(end.0));
            }
            Err(first) => {
                let at = reader.next_record_start();
                if settled {
                    assert_eq!(at, before, "an error moved the position");
                }
                if !retry {
                    break;
                }
                let again = reader
                    .next_record(limit)
                    .expect_err("the same call must fail again");
                assert_eq!(first.to_string(), again.to_string());
                assert_eq!(reader.next_record_start(), at);
                break;
            }
        }
    }
});
