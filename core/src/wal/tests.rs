//! The reader against WAL laid out by the test writer (`testing.rs`).

use proptest::prelude::*;

use super::record::{BKPIMAGE_APPLY, BKPIMAGE_COMPRESS_LZ4, BKPIMAGE_COMPRESS_PGLZ};
use super::record::{BKPIMAGE_COMPRESS_ZSTD, BKPIMAGE_HAS_HOLE};
use super::testing::*;
use super::*;
use crate::block::{Fork, RelFileKey};

const BASE: Lsn = Lsn(0x3_0000_0000); // a segment start past the first 4 GB

fn reader_at(writer: &WalWriter, start: Lsn) -> WalReader<MemorySource> {
    WalReader::at_record(writer.source(), format(), start)
}

/// Every record up to `limit`, or the first error.
fn read_all(
    reader: &mut WalReader<MemorySource>,
    limit: Lsn,
) -> Result<Vec<DecodedRecord>, WalError> {
    let mut records = Vec::new();
    while let Some(record) = reader.next_record(limit)? {
        records.push(record);
    }
    Ok(records)
}

fn relation(relfilenode: u32, fork: Fork) -> RelFileKey {
    RelFileKey {
        tablespace: 1663,
        database: 5,
        relfilenode,
        fork,
    }
}

fn block(id: u8, relation: Option<(u32, u32, u32)>, block: u32) -> BlockSpec {
    BlockSpec {
        id,
        relation,
        block,
        ..BlockSpec::default()
    }
}

/// A heap-like record with five block references of every kind.
fn rich_record() -> RecordSpec {
    RecordSpec {
        rmgr: rmgr::HEAP,
        info: 0x20,
        xid: 741,
        blocks: vec![
            BlockSpec {
                image: Some(ImageSpec {
                    bytes: vec![0x5A; 8192 - 1000],
                    hole_offset: 40,
                    info: BKPIMAGE_HAS_HOLE | BKPIMAGE_APPLY,
                    hole_length: None,
                }),
                ..block(0, Some((1663, 5, 16384)), 7)
            },
            BlockSpec {
                fork: 2,
                will_init: true,
                ..block(1, None, 0)
            },
            BlockSpec {
                data: vec![1, 2, 3],
                ..block(4, Some((1664, 0, 1262)), 4_000_000_000)
            },
            BlockSpec {
                fork: 3,
                image: Some(ImageSpec {
                    bytes: vec![0x77; 8192],
                    hole_offset: 0,
                    info: 0,
                    hole_length: None,
                }),
                data: vec![9; 300],
                ..block(5, None, 1)
            },
            block(32, Some((16400, 16390, 16500)), 2),
        ],
        origin: Some(3),
        toplevel_xid: Some(740),
        main_data: b"main data".to_vec(),
    }
}

#[test]
fn decodes_every_kind_of_block_reference() {
    let mut writer = WalWriter::new(BASE);
    let first = writer.push(&filler(64));
    let placed = writer.push(&rich_record());
    let mut reader = reader_at(&writer, first.start);
    let records = read_all(&mut reader, writer.end()).unwrap();
    assert_eq!(records.len(), 2);
    let record = &records[1];
    assert_eq!((record.start, record.end), (placed.start, placed.end));
    assert_eq!(record.end.0 % 8, 0);
    assert_eq!(record.prev, first.start);
    assert_eq!(
        (record.rmgr, record.info, record.xid),
        (rmgr::HEAP, 0x20, 741)
    );
    assert_eq!(record.main_data, b"main data");
    let summary: Vec<_> = record
        .blocks
        .iter()
        .map(|b| (b.id, b.file, b.block, b.has_image, b.will_init, b.data_len))
        .collect();
    let ts_key = |ts, db, rel, fork| RelFileKey {
        tablespace: ts,
        database: db,
        relfilenode: rel,
        fork,
    };
    assert_eq!(
        summary,
        [
            (0, relation(16384, Fork::Main), 7, true, false, 0),
            (1, relation(16384, Fork::Visibility), 0, false, true, 0),
            (
                4,
                ts_key(1664, 0, 1262, Fork::Main),
                4_000_000_000,
                false,
                false,
                3
            ),
            (5, ts_key(1664, 0, 1262, Fork::Init), 1, true, false, 300),
            (
                32,
                ts_key(16400, 16390, 16500, Fork::Main),
                2,
                false,
                false,
                0
            ),
        ]
    );
    let hole = record.blocks[0].image.unwrap();
    assert!(hole.has_hole() && hole.applies() && !hole.is_compressed());
    assert_eq!(
        (hole.length, hole.hole_offset, hole.hole_length(8192)),
        (7192, 40, 1000)
    );
    let whole = record.blocks[3].image.unwrap();
    assert!(!whole.has_hole() && !whole.applies());
    assert_eq!(whole.hole_length(8192), 0);
    assert_eq!(
        record_effects(record),
        summary
            .iter()
            .map(|(_, file, block, ..)| RecordEffect::Block(file.block(*block)))
            .collect::<Vec<_>>()
    );
}

#[test]
fn compressed_images_store_their_hole_length() {
    let image = |info: u8, hole_length: Option<u16>, hole_offset: u16| ImageSpec {
        bytes: vec![0xC0; 1234],
        hole_offset,
        info,
        hole_length,
    };
    let spec = RecordSpec {
        rmgr: rmgr::XLOG,
        info: 0xB0, // XLOG_FPI
        blocks: vec![
            BlockSpec {
                image: Some(image(
                    BKPIMAGE_COMPRESS_PGLZ | BKPIMAGE_HAS_HOLE,
                    Some(900),
                    100,
                )),
                ..block(0, Some((1663, 5, 1)), 0)
            },
            BlockSpec {
                image: Some(image(BKPIMAGE_COMPRESS_LZ4, None, 0)),
                ..block(1, None, 1)
            },
            BlockSpec {
                image: Some(image(
                    BKPIMAGE_COMPRESS_ZSTD | BKPIMAGE_HAS_HOLE,
                    Some(17),
                    8,
                )),
                ..block(2, None, 2)
            },
        ],
        ..RecordSpec::default()
    };
    let mut writer = WalWriter::new(BASE);
    let placed = writer.push(&spec);
    let records = read_all(&mut reader_at(&writer, placed.start), writer.end()).unwrap();
    let images: Vec<_> = records[0]
        .blocks
        .iter()
        .map(|b| {
            let image = b.image.unwrap();
            (
                image.length,
                image.hole_offset,
                image.hole_length(8192),
                image.is_compressed(),
            )
        })
        .collect();
    assert_eq!(
        images,
        [
            (1234, 100, 900, true),
            (1234, 0, 0, true),
            (1234, 8, 17, true)
        ]
    );
}

#[test]
fn main_data_headers_short_and_long() {
    let mut writer = WalWriter::new(BASE);
    let lengths = [0usize, 1, 255, 256, 5000];
    let first = writer.insert;
    for len in lengths {
        writer.push(&RecordSpec {
            rmgr: rmgr::TRANSACTION,
            main_data: (0..len).map(|i| i as u8).collect(),
            ..RecordSpec::default()
        });
    }
    let records = read_all(&mut reader_at(&writer, first), writer.end()).unwrap();
    let decoded: Vec<usize> = records.iter().map(|r| r.main_data.len()).collect();
    assert_eq!(decoded, lengths);
    assert!(records[4]
        .main_data
        .iter()
        .enumerate()
        .all(|(i, b)| *b == i as u8));
}

#[test]
fn record_header_split_across_pages() {
    for header_bytes_on_first_page in [8u64, 16] {
        let mut writer = WalWriter::new(BASE);
        let first = writer.insert;
        let split_at = Lsn(BASE.0 + 3 * PAGE - header_bytes_on_first_page);
        writer.pad_to(split_at);
        let placed = writer.push(&rich_record());
        assert_eq!(placed.start, split_at);
        let records = read_all(&mut reader_at(&writer, first), writer.end()).unwrap();
        let last = records.last().unwrap();
        assert_eq!((last.start, last.end), (placed.start, placed.end));
        assert_eq!(last.blocks.len(), 5);
    }
}

#[test]
fn record_spanning_three_pages_and_a_segment_boundary() {
    let mut writer = WalWriter::new(BASE);
    let first = writer.insert;
    // Starts on page 1 and ends on page 3.
    let three_pages = writer.push(&RecordSpec {
        rmgr: rmgr::HEAP2,
        main_data: (0..17_000u32).map(|i| (i % 251) as u8).collect(),
        ..RecordSpec::default()
    });
    // From the last page of the segment into the next segment's long-header
    // page and beyond.
    writer.pad_to(Lsn(BASE.0 + SEGMENT - 4000));
    let across = writer.push(&RecordSpec {
        rmgr: rmgr::HEAP,
        blocks: vec![BlockSpec {
            data: vec![0xEE; 6000],
            ..block(0, Some((1663, 5, 99)), 3)
        }],
        main_data: vec![0xDD; 9000],
        ..RecordSpec::default()
    });
    let after = writer.push(&filler(40));
    assert_eq!(three_pages.start.0 / PAGE, BASE.0 / PAGE);
    assert_eq!(three_pages.raw_end.0 / PAGE, BASE.0 / PAGE + 2);
    assert!(across.start.0 < BASE.0 + SEGMENT && across.raw_end.0 > BASE.0 + SEGMENT + PAGE);
    let records = read_all(&mut reader_at(&writer, first), writer.end()).unwrap();
    let find = |start: Lsn| records.iter().find(|r| r.start == start).unwrap();
    assert_eq!(find(three_pages.start).main_data.len(), 17_000);
    assert!(find(three_pages.start)
        .main_data
        .iter()
        .enumerate()
        .all(|(i, b)| *b == (i % 251) as u8));
    assert_eq!(find(three_pages.start).end, three_pages.end);
    let decoded = find(across.start);
    assert_eq!(decoded.end, across.end);
    assert_eq!(decoded.main_data, vec![0xDD; 9000]);
    assert_eq!(decoded.blocks[0].data_len, 6000);
    assert_eq!(records.last().unwrap().start, after.start);
    assert_eq!(records.last().unwrap().prev, across.start);
}

#[test]
fn a_record_ending_at_a_page_end_leaves_the_reader_at_the_page_boundary() {
    let mut writer = WalWriter::new(BASE);
    let first = writer.insert;
    let page_end = Lsn(BASE.0 + 2 * PAGE);
    writer.pad_to(page_end);
    let next = writer.push(&filler(48));
    assert_eq!(next.start, Lsn(page_end.0 + 24));
    let mut reader = reader_at(&writer, first);
    while reader.next_record_start() < page_end {
        reader.next_record(writer.end()).unwrap().unwrap();
    }
    assert_eq!(reader.next_record_start(), page_end);
    assert_eq!(
        reader.next_record(writer.end()).unwrap().unwrap().start,
        next.start
    );
    // Resuming from the boundary works the same way.
    let mut resumed = reader_at(&writer, page_end);
    assert_eq!(
        resumed.next_record(writer.end()).unwrap().unwrap().start,
        next.start
    );
}

#[test]
fn xlog_switch_skips_the_rest_of_the_segment() {
    let mut writer = WalWriter::new(BASE);
    let first = writer.push(&filler(100));
    let switch = writer.switch();
    let after = writer.push(&filler(100));
    assert_eq!(switch.end, Lsn(BASE.0 + SEGMENT));
    assert_eq!(after.start, Lsn(BASE.0 + SEGMENT + 40));
    // The rest of the switched segment is garbage: the reader must not look.
    let garbage_from = writer.source().bytes.borrow().len();
    let mut source = writer.source();
    {
        let mut bytes = source.bytes.borrow_mut();
        let start = (switch.raw_end.0 - BASE.0) as usize;
        bytes[start..(SEGMENT as usize)].fill(0xFF);
        assert_eq!(bytes.len(), garbage_from);
    }
    let mut reader = WalReader::at_record(&mut source, format(), first.start);
    let records: Vec<_> =
        std::iter::from_fn(|| reader.next_record(writer.end()).unwrap()).collect();
    let summary: Vec<_> = records
        .iter()
        .map(|r| (r.start, r.end, r.is_switch()))
        .collect();
    assert_eq!(
        summary,
        [
            (first.start, first.end, false),
            (switch.start, Lsn(BASE.0 + SEGMENT), true),
            (after.start, after.end, false),
        ]
    );
    assert_eq!(records[2].prev, switch.start);
}

#[test]
fn a_stale_page_address_is_recycled_wal() {
    let mut writer = WalWriter::new(BASE);
    let first = writer.insert;
    writer.pad_to(Lsn(BASE.0 + PAGE - 4000));
    let spanning = writer.push(&filler(6000));
    writer.pad_to(Lsn(BASE.0 + 3 * PAGE));
    // Page 1 claims to be the page of an older cycle of this segment file.
    let stale = BASE.0 + PAGE - 16 * SEGMENT;
    let source = writer.source();
    source.bytes.borrow_mut()[PAGE as usize + 8..PAGE as usize + 16]
        .copy_from_slice(&stale.to_le_bytes());
    let mut reader = WalReader::at_record(source, format(), first);
    let error = read_all(&mut reader, writer.end()).unwrap_err();
    assert!(
        matches!(error, WalError::UnexpectedPageAddress { page, found }
            if page == Lsn(BASE.0 + PAGE) && found == Lsn(stale)),
        "{error}"
    );
    // Everything before the record that needs the page was returned, and the
    // reader stays at that record.
    assert_eq!(reader.next_record_start(), spanning.start);
}

#[test]
fn a_bad_crc_is_refused() {
    let mut writer = WalWriter::new(BASE);
    let first = writer.push(&filler(100));
    let second = writer.push(&rich_record());
    for offset in [30u64, 24 + 200, 16] {
        let source = writer.source();
        source.bytes.borrow_mut()[(second.start.0 - BASE.0 + offset) as usize] ^= 0x01;
        let mut reader = WalReader::at_record(source, format(), first.start);
        assert!(reader.next_record(writer.end()).unwrap().is_some());
        let error = reader.next_record(writer.end()).unwrap_err();
        assert!(
            matches!(error, WalError::BadCrc { at, .. } if at == second.start),
            "offset {offset}: {error}"
        );
    }
}

#[test]
fn a_wrong_prev_link_is_refused() {
    let mut writer = WalWriter::new(BASE);
    let first = writer.push(&filler(100));
    let record = rich_record().encode(Lsn(first.start.0 - 8));
    let second = writer.push_bytes(&record);
    let mut reader = reader_at(&writer, first.start);
    reader.next_record(writer.end()).unwrap().unwrap();
    assert!(matches!(
        reader.next_record(writer.end()),
        Err(WalError::InvalidRecord { at, .. }) if at == second.start
    ));
    // Read directly from the second record, only "before it" is required.
    let mut direct = reader_at(&writer, second.start);
    assert!(direct.next_record(writer.end()).unwrap().is_some());
}

#[test]
fn the_limit_cuts_records_and_a_higher_limit_retries_them() {
    let mut writer = WalWriter::new(BASE);
    let first = writer.push(&filler(200));
    writer.pad_to(Lsn(BASE.0 + PAGE - 1000));
    let before = writer.insert;
    let long = writer.push(&RecordSpec {
        rmgr: rmgr::HEAP,
        main_data: vec![3; 20_000],
        ..RecordSpec::default()
    });
    let mut reader = reader_at(&writer, first.start);
    // Consume everything before the long record.
    while reader.next_record_start() < before {
        reader.next_record(before).unwrap().unwrap();
    }
    let mut limit = before.0;
    while limit < long.raw_end.0 {
        assert_eq!(
            reader.next_record(Lsn(limit)).unwrap(),
            None,
            "limit {limit:X}"
        );
        assert_eq!(reader.next_record_start(), long.start);
        limit += 97;
    }
    let record = reader.next_record(long.raw_end).unwrap().unwrap();
    assert_eq!((record.start, record.end), (long.start, long.end));
    assert_eq!(reader.next_record_start(), long.end);
    assert_eq!(reader.next_record(writer.end()).unwrap(), None);
}

#[test]
fn bytes_written_after_a_read_are_seen() {
    // A page read while the server was still filling it is read again once
    // the limit covers more of it.
    let mut writer = WalWriter::new(BASE);
    let first = writer.push(&filler(64));
    let second = writer.push(&rich_record());
    let third = writer.push(&filler(80));
    let complete = writer.bytes.clone();
    let source = writer.source();
    // At first only the first record is on disk; the rest of the page is zeros.
    source.bytes.borrow_mut()[(second.start.0 - BASE.0) as usize..].fill(0);
    let mut reader = WalReader::at_record(source.clone(), format(), first.start);
    assert_eq!(
        reader.next_record(first.raw_end).unwrap().unwrap().start,
        first.start
    );
    assert_eq!(reader.next_record(first.raw_end).unwrap(), None);
    *source.bytes.borrow_mut() = complete;
    let records = read_all(&mut reader, writer.end()).unwrap();
    let starts: Vec<_> = records.iter().map(|r| r.start).collect();
    assert_eq!(starts, [second.start, third.start]);
    // Sequential records on one page do not re-read it.
    let reads_before = *source.reads.borrow();
    let mut writer2 = WalWriter::new(BASE);
    let a = writer2.push(&filler(64));
    for _ in 0..20 {
        writer2.push(&filler(64));
    }
    let source2 = writer2.source();
    let mut reader2 = WalReader::at_record(source2.clone(), format(), a.start);
    assert_eq!(read_all(&mut reader2, writer2.end()).unwrap().len(), 21);
    assert_eq!(*source2.reads.borrow(), 1);
    assert!(reads_before >= 2);
}

#[test]
fn find_first_record_from_any_position() {
    let mut writer = WalWriter::new(BASE);
    let mut placed = vec![writer.push(&filler(64))];
    for size in [30_000usize, 100, 8000, 16_500, 48, 3000] {
        placed.push(writer.push(&RecordSpec {
            rmgr: rmgr::HEAP,
            main_data: vec![1; size],
            ..RecordSpec::default()
        }));
    }
    writer.pad_to(Lsn(BASE.0 + SEGMENT - 2000));
    placed.push(writer.push(&filler(5000))); // into the next segment
    placed.push(writer.push(&filler(64)));
    let limit = writer.end();
    let all_starts: Vec<Lsn> = {
        let mut reader = reader_at(&writer, placed[0].start);
        read_all(&mut reader, limit)
            .unwrap()
            .iter()
            .map(|r| r.start)
            .collect()
    };
    for target in (BASE.0..placed.last().unwrap().start.0 + 1).step_by(331) {
        let target = Lsn(target);
        let expected = *all_starts.iter().find(|s| **s >= target).unwrap();
        let mut reader =
            WalReader::find_first_record_from(writer.source(), format(), target, limit).unwrap();
        assert!(!reader.is_searching());
        let found = reader.next_record(limit).unwrap().unwrap();
        assert_eq!(found.start, expected, "from {target}");
    }
    // Exactly at record starts and at page boundaries.
    for target in all_starts.iter().copied().chain([
        Lsn(BASE.0 + PAGE),
        Lsn(BASE.0 + 4 * PAGE),
        Lsn(BASE.0 + SEGMENT),
    ]) {
        let expected = *all_starts.iter().find(|s| **s >= target).unwrap();
        let mut reader =
            WalReader::find_first_record_from(writer.source(), format(), target, limit).unwrap();
        assert_eq!(reader.next_record(limit).unwrap().unwrap().start, expected);
    }
}

#[test]
fn find_first_record_continues_the_search_as_the_limit_moves() {
    let mut writer = WalWriter::new(BASE);
    writer.push(&filler(64));
    let long = writer.push(&RecordSpec {
        rmgr: rmgr::HEAP,
        main_data: vec![1; 30_000],
        ..RecordSpec::default()
    });
    let next = writer.push(&filler(64));
    // From inside the long record, with only its second page written.
    let target = Lsn(long.start.0 + 9000);
    let low = Lsn(BASE.0 + 2 * PAGE + 24);
    let mut reader =
        WalReader::find_first_record_from(writer.source(), format(), target, low).unwrap();
    assert!(reader.is_searching());
    assert_eq!(reader.next_record_start(), target);
    assert_eq!(reader.next_record(low).unwrap(), None);
    assert_eq!(reader.next_record(long.raw_end).unwrap(), None);
    assert!(!reader.is_searching());
    assert_eq!(reader.next_record_start(), next.start);
    assert_eq!(
        reader.next_record(writer.end()).unwrap().unwrap().start,
        next.start
    );
}

#[test]
fn an_overwritten_continuation_abandons_the_record() {
    // The server crashed while the record at `lost` was being written: its
    // continuation on page 2 never reached disk. After recovery the server
    // wrote XLOG_OVERWRITE_CONTRECORD at page 2, flagged
    // XLP_FIRST_IS_OVERWRITE_CONTRECORD, and went on from there.
    let mut writer = WalWriter::new(BASE);
    let first = writer.insert;
    writer.pad_to(Lsn(BASE.0 + 2 * PAGE - 2000));
    let last_good = writer.push(&filler(200));
    let lost = writer.push(&filler(5000));
    let page2 = Lsn(BASE.0 + 2 * PAGE);
    assert!(lost.start < page2 && lost.raw_end > page2);
    writer.bytes.truncate((page2.0 - BASE.0) as usize);
    writer.insert = page2;
    writer.write_page_header(page2, 0x0008, 0);
    writer.insert = Lsn(page2.0 + 24);
    writer.prev = last_good.start;
    let mut overwrite = lost.start.0.to_le_bytes().to_vec();
    overwrite.extend_from_slice(&0x2A_u64.to_le_bytes());
    let marker = writer.push(&RecordSpec {
        rmgr: rmgr::XLOG,
        info: info::XLOG_OVERWRITE_CONTRECORD,
        main_data: overwrite,
        ..RecordSpec::default()
    });
    let after = writer.push(&filler(64));
    assert_eq!(marker.start, Lsn(page2.0 + 24));

    let mut reader = reader_at(&writer, first);
    let records = read_all(&mut reader, writer.end()).unwrap();
    let starts: Vec<Lsn> = records.iter().map(|r| r.start).collect();
    assert!(!starts.contains(&lost.start));
    assert_eq!(
        starts[starts.len() - 3..],
        [last_good.start, marker.start, after.start]
    );
    assert_eq!(reader.last_abandoned_record(), Some(lost.start));
    assert_eq!(
        records[records.len() - 2].main_data[..8],
        lost.start.0.to_le_bytes()
    );

    // A page without either flag where a continuation belongs is an error.
    let source = writer.source();
    source.bytes.borrow_mut()[(page2.0 - BASE.0) as usize + 2] = 0;
    let mut broken = WalReader::at_record(source, format(), lost.start);
    assert!(matches!(
        broken.next_record(writer.end()),
        Err(WalError::InvalidRecord { .. })
    ));
}

#[test]
fn timelines_never_go_backwards() {
    let mut writer = WalWriter::new(BASE);
    let first = writer.insert;
    writer.timeline = 3;
    writer.pad_to(Lsn(BASE.0 + PAGE));
    writer.timeline = 2;
    writer.pad_to(Lsn(BASE.0 + 2 * PAGE));
    let mut reader = reader_at(&writer, first);
    let error = read_all(&mut reader, writer.end()).unwrap_err();
    assert!(
        matches!(error, WalError::InvalidPageHeader { page, .. } if page == Lsn(BASE.0 + PAGE))
    );
}

/// Records whose fragment headers are wrong in one way each.
#[test]
fn malformed_fragment_headers_are_errors() {
    let rel = |body: &mut Vec<u8>| {
        for oid in [1663u32, 5, 16384] {
            body.extend_from_slice(&oid.to_le_bytes());
        }
    };
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut same_rel_first = vec![0u8, 0x80, 0, 0];
    same_rel_first.extend_from_slice(&7u32.to_le_bytes());
    cases.push(("SAME_REL on the first block", same_rel_first));
    let mut out_of_order = vec![1u8, 0, 0, 0];
    rel(&mut out_of_order);
    out_of_order.extend_from_slice(&[0, 0, 0, 0, 1, 0x80, 0, 0, 0, 0, 0, 0]);
    cases.push(("block ids out of order", out_of_order));
    cases.push(("block id 33", vec![33u8, 0, 0, 0]));
    let mut bad_fork = vec![0u8, 4, 0, 0];
    rel(&mut bad_fork);
    bad_fork.extend_from_slice(&[0; 4]);
    cases.push(("fork 4", bad_fork));
    let mut data_without_flag = vec![0u8, 0, 5, 0];
    rel(&mut data_without_flag);
    data_without_flag.extend_from_slice(&[0; 4 + 5]);
    cases.push(("data length without HAS_DATA", data_without_flag));
    let mut flag_without_data = vec![0u8, 0x20, 0, 0];
    rel(&mut flag_without_data);
    flag_without_data.extend_from_slice(&[0; 4]);
    cases.push(("HAS_DATA without data", flag_without_data));
    let mut hole_at_zero = vec![0u8, 0x10, 0, 0, 0x10, 0, 0, 0, BKPIMAGE_HAS_HOLE];
    rel(&mut hole_at_zero);
    hole_at_zero.extend_from_slice(&[0; 4]);
    hole_at_zero.extend_from_slice(&[0; 16]);
    cases.push(("hole at offset 0", hole_at_zero));
    cases.push(("main data longer than the record", vec![255u8, 10, 1, 2]));
    cases.push(("main data shorter than the record", vec![255u8, 1, 1, 2]));
    cases.push(("truncated block header", vec![0u8, 0, 0]));
    cases.push(("truncated long main-data header", vec![254u8, 1, 0]));
    cases.push((
        "file-copy CREATE DATABASE with a short payload",
        vec![255u8, 8, 1, 0, 0, 0, 2, 0, 0, 0],
    ));
    let mut short_truncation = vec![255u8, 16];
    short_truncation.extend_from_slice(&[0; 16]);
    cases.push(("truncation with a short payload", short_truncation));
    for (what, body) in cases {
        let mut writer = WalWriter::new(BASE);
        let (rmgr_id, info) = if what.contains("DATABASE") {
            (rmgr::DATABASE, info::DBASE_CREATE_FILE_COPY)
        } else if what.contains("truncation") {
            (rmgr::STORAGE, info::SMGR_TRUNCATE)
        } else {
            (rmgr::HEAP, 0)
        };
        let placed = writer.push_bytes(&record_from_body(rmgr_id, info, 1, Lsn(8), &body));
        let result = reader_at(&writer, placed.start).next_record(writer.end());
        assert!(
            matches!(result, Err(WalError::InvalidRecord { at, .. }) if at == placed.start),
            "{what}: {result:?}"
        );
    }
}

#[test]
fn invalid_record_headers_are_errors() {
    for (what, total_len, rmgr_id) in [
        ("length below the header size", 20u32, rmgr::HEAP),
        ("length above the maximum", 1 << 31, rmgr::HEAP),
        ("unknown resource manager", 24, 50),
    ] {
        let mut record = record_from_body(rmgr_id, 0, 1, Lsn(8), &[]);
        record[0..4].copy_from_slice(&total_len.to_le_bytes());
        let mut writer = WalWriter::new(BASE);
        let placed = writer.push_bytes(&record);
        let result = reader_at(&writer, placed.start).next_record(writer.end());
        assert!(
            matches!(result, Err(WalError::InvalidRecord { .. })),
            "{what}: {result:?}"
        );
    }
    // Positions no record can start at.
    let mut writer = WalWriter::new(BASE);
    let placed = writer.push(&filler(64));
    for at in [Lsn(BASE.0 + 8), Lsn(placed.start.0 + 4)] {
        let result = reader_at(&writer, at).next_record(writer.end());
        assert!(
            matches!(result, Err(WalError::InvalidRecord { .. })),
            "{at}: {result:?}"
        );
    }
}

#[test]
fn file_copy_database_creation_is_a_copied_directory() {
    let mut main_data = Vec::new();
    for oid in [16390u32, 16400, 1, 1663] {
        main_data.extend_from_slice(&oid.to_le_bytes());
    }
    let mut writer = WalWriter::new(BASE);
    let copy = writer.push(&RecordSpec {
        rmgr: rmgr::DATABASE,
        info: info::DBASE_CREATE_FILE_COPY | 0x01, // | XLR_SPECIAL_REL_UPDATE
        main_data: main_data.clone(),
        ..RecordSpec::default()
    });
    writer.push(&RecordSpec {
        rmgr: rmgr::DATABASE,
        info: info::DBASE_CREATE_WAL_LOG,
        main_data: main_data[..8].to_vec(),
        ..RecordSpec::default()
    });
    let records = read_all(&mut reader_at(&writer, copy.start), writer.end()).unwrap();
    assert_eq!(
        record_effects(&records[0]),
        [RecordEffect::CopiedDatabase {
            tablespace: 16400,
            database: 16390
        }]
    );
    assert_eq!(record_effects(&records[1]), []);
}

#[test]
fn truncations_are_reported() {
    let mut main_data = Vec::new();
    for field in [3u32, 1663, 5, 16414, 7] {
        main_data.extend_from_slice(&field.to_le_bytes());
    }
    let mut writer = WalWriter::new(BASE);
    let placed = writer.push(&RecordSpec {
        rmgr: rmgr::STORAGE,
        info: info::SMGR_TRUNCATE | 0x01, // | XLR_SPECIAL_REL_UPDATE
        main_data,
        ..RecordSpec::default()
    });
    writer.push(&filler(64));
    let records = read_all(&mut reader_at(&writer, placed.start), writer.end()).unwrap();
    assert_eq!(
        record_truncation(&records[0]),
        Some(Truncation {
            relation: relation(16414, Fork::Main),
            blocks: 3,
            flags: Truncation::MAIN_FORK | Truncation::VISIBILITY_MAP | Truncation::FREE_SPACE_MAP,
        })
    );
    assert_eq!(
        record_effects(&records[0]),
        [RecordEffect::Cut {
            file: relation(16414, Fork::Main),
            length: 3
        }]
    );
    assert_eq!(record_truncation(&records[1]), None);
}

#[test]
fn truncations_of_the_maps_only_and_creations() {
    let mut writer = WalWriter::new(BASE);
    let mut maps_only = Vec::new();
    for field in [3u32, 1663, 5, 16414, 2] {
        maps_only.extend_from_slice(&field.to_le_bytes());
    }
    let first = writer.push(&RecordSpec {
        rmgr: rmgr::STORAGE,
        info: info::SMGR_TRUNCATE,
        main_data: maps_only,
        ..RecordSpec::default()
    });
    let mut create = Vec::new();
    for field in [1663u32, 5, 16420, 3] {
        create.extend_from_slice(&field.to_le_bytes());
    }
    writer.push(&RecordSpec {
        rmgr: rmgr::STORAGE,
        info: info::SMGR_CREATE,
        main_data: create,
        ..RecordSpec::default()
    });
    let records = read_all(&mut reader_at(&writer, first.start), writer.end()).unwrap();
    assert_eq!(
        record_effects(&records[0]),
        [],
        "the maps are reported whole anyway"
    );
    assert_eq!(
        record_effects(&records[1]),
        [RecordEffect::Cut {
            file: relation(16420, Fork::Init),
            length: 0
        }]
    );
}

#[test]
fn formats_by_major() {
    let magic = |major| WalFormat::for_major(major, 16 << 20).map(|f| f.page_magic);
    assert_eq!(
        [
            magic(14),
            magic(15),
            magic(16),
            magic(17),
            magic(18),
            magic(19)
        ],
        [
            None,
            Some(0xD110),
            Some(0xD113),
            Some(0xD116),
            Some(0xD118),
            None
        ]
    );
    assert_eq!(WalFormat::for_major(17, 16 << 20).unwrap().page_size, 8192);
    for bad_size in [0, 1 << 19, (16 << 20) + 8192, 2 << 30] {
        assert_eq!(WalFormat::for_major(17, bad_size), None, "{bad_size}");
    }
}

#[test]
fn an_unusable_format_is_an_error_not_a_panic() {
    let writer = WalWriter::new(BASE);
    let broken = WalFormat {
        page_magic: 0xD116,
        segment_size: 0,
        page_size: 0,
    };
    let mut reader = WalReader::at_record(writer.source(), broken, BASE);
    assert!(reader.next_record(Lsn(u64::MAX)).is_err());
    assert!(
        WalReader::find_first_record_from(writer.source(), broken, BASE, Lsn(u64::MAX)).is_err()
    );
}

/// A stream of varied records over two segments, for the property tests.
fn sample_wal() -> (WalWriter, Vec<Placed>) {
    let mut writer = WalWriter::new(BASE);
    let mut placed = Vec::new();
    for i in 0..40usize {
        let spec = match i % 5 {
            0 => rich_record(),
            1 => filler(26 + (i * 37) % 300),
            2 => RecordSpec {
                rmgr: rmgr::HEAP,
                main_data: vec![i as u8; (i * 997) % 20_000],
                ..RecordSpec::default()
            },
            3 => filler(32),
            _ => RecordSpec {
                rmgr: rmgr::STORAGE,
                blocks: vec![BlockSpec {
                    data: vec![1; 1 + i],
                    ..block(0, Some((1663, 5, i as u32)), i as u32)
                }],
                ..RecordSpec::default()
            },
        };
        placed.push(writer.push(&spec));
        if i == 25 {
            placed.push(writer.switch());
        }
    }
    (writer, placed)
}

#[test]
fn sample_wal_round_trips() {
    let (writer, placed) = sample_wal();
    let mut reader = reader_at(&writer, placed[0].start);
    let records = read_all(&mut reader, writer.end()).unwrap();
    let decoded: Vec<(Lsn, Lsn)> = records.iter().map(|r| (r.start, r.end)).collect();
    let expected: Vec<(Lsn, Lsn)> = placed.iter().map(|p| (p.start, p.end)).collect();
    assert_eq!(decoded, expected);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Garbage pages: the reader returns errors, never panics.
    #[test]
    fn garbage_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..40_000),
        start in 0u64..40_000,
        limit in 0u64..50_000,
    ) {
        let source = MemorySource::new(BASE, bytes);
        let mut reader = WalReader::at_record(source.clone(), format(), Lsn(BASE.0 + start));
        for _ in 0..50 {
            match reader.next_record(Lsn(BASE.0 + limit)) {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        let found = WalReader::find_first_record_from(source, format(), Lsn(BASE.0 + start), Lsn(BASE.0 + limit));
        if let Ok(mut reader) = found {
            let _ = reader.next_record(Lsn(BASE.0 + limit));
        }
    }

    /// Valid WAL with a few bytes changed or cut off: no panic, and every
    /// record returned before the damage is one the writer wrote.
    #[test]
    fn damaged_wal_never_panics_or_invents_records(
        flips in proptest::collection::vec((0usize..(SEGMENT as usize + 3 * PAGE as usize), any::<u8>()), 0..6),
        cut in 0usize..(SEGMENT as usize + 4 * PAGE as usize),
        limit_back in 0u64..70_000,
    ) {
        let (writer, placed) = sample_wal();
        let mut bytes = writer.bytes.clone();
        for (at, value) in &flips {
            if let Some(byte) = bytes.get_mut(*at) {
                *byte = *value;
            }
        }
        bytes.truncate(cut.min(bytes.len()));
        let limit = Lsn(writer.end().0 - limit_back);
        let mut reader = WalReader::at_record(MemorySource::new(BASE, bytes), format(), placed[0].start);
        for _ in 0..placed.len() + 1 {
            match reader.next_record(limit) {
                Ok(Some(record)) => {
                    prop_assert!(placed.iter().any(|p| p.start == record.start && p.end == record.end));
                    prop_assert!(record.end.0 <= limit.0 + 7 || record.is_switch());
                }
                Ok(None) | Err(_) => break,
            }
        }
    }

    /// Fragment headers of random bytes under a valid CRC: the decoder's own
    /// checks, not the CRC, must stop them.
    #[test]
    fn random_record_bodies_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..600),
        kind in 0usize..4,
    ) {
        let (rmgr_id, info) = [
            (rmgr::HEAP, 0),
            (rmgr::DATABASE, info::DBASE_CREATE_FILE_COPY),
            (rmgr::STORAGE, info::SMGR_TRUNCATE),
            (rmgr::XLOG, info::XLOG_SWITCH),
        ][kind];
        let mut writer = WalWriter::new(BASE);
        let placed = writer.push_bytes(&record_from_body(rmgr_id, info, 1, Lsn(8), &body));
        if let Ok(Some(record)) = reader_at(&writer, placed.start).next_record(writer.end()) {
            prop_assert!(record.blocks.len() <= 33);
            prop_assert!(record.main_data.len() <= body.len());
            let _ = (record_effects(&record), record_truncation(&record));
        }
    }

    /// A valid record's fragments with a few bytes changed, CRC recomputed.
    #[test]
    fn mutated_record_bodies_never_panic(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        cut in any::<usize>(),
    ) {
        let mut body = rich_record().body();
        for (at, value) in flips {
            let len = body.len();
            body[at % len] = value;
        }
        body.truncate(cut % (body.len() + 1));
        let mut writer = WalWriter::new(BASE);
        let placed = writer.push_bytes(&record_from_body(rmgr::HEAP, 0, 1, Lsn(8), &body));
        if let Ok(Some(record)) = reader_at(&writer, placed.start).next_record(writer.end()) {
            prop_assert!(record.blocks.len() <= 33);
        }
    }

    /// Random limits: a record is returned exactly when all its bytes are
    /// below the limit.
    #[test]
    fn records_are_returned_exactly_when_complete(limit_offset in 0u64..(SEGMENT + 4 * PAGE)) {
        let (writer, placed) = sample_wal();
        let limit = Lsn(BASE.0 + limit_offset);
        let mut reader = reader_at(&writer, placed[0].start);
        let records = read_all(&mut reader, limit).unwrap();
        let expected = placed.iter().take_while(|p| p.raw_end <= limit).count();
        prop_assert_eq!(records.len(), expected);
    }
}
