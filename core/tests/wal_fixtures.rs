//! The WAL reader against WAL written by real servers (PostgreSQL 15, 17 and
//! 18), compared record by record with `pg_waldump -b`'s decoding of the same
//! range, which `fixtures/wal/regenerate.sh` saved beside each fixture.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use ptrack_core::wal::{
    record_effects, record_truncation, rmgr, DecodedRecord, RecordEffect, SegmentDirSource,
    Truncation, WalError, WalFormat, WalReader,
};
use ptrack_core::{Fork, Lsn, RelFileKey};

/// One fixture: a directory of trimmed segment files and what made them.
struct Fixture {
    dir: PathBuf,
    format: WalFormat,
    start: Lsn,
    end: Lsn,
}

fn load_fixture(dir: &Path) -> Fixture {
    let conf = fs::read_to_string(dir.join("fixture.conf"))
        .unwrap_or_else(|e| panic!("{}/fixture.conf: {e}", dir.display()));
    let value = |key: &str| -> String {
        conf.lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.split_once('='))
            .find(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| panic!("{key} missing from {}/fixture.conf", dir.display()))
    };
    let major: u32 = value("major").parse().unwrap();
    let segment_size: u64 = value("segment_size").parse().unwrap();
    Fixture {
        dir: dir.to_owned(),
        format: WalFormat::for_major(major, segment_size).expect("supported major"),
        start: value("start").parse().unwrap(),
        end: value("end").parse().unwrap(),
    }
}

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/wal")
        .join(name)
}

/// A full-page image as pg_waldump describes it.
#[derive(Debug, PartialEq, Eq)]
struct DumpImage {
    applied: bool,
    hole_offset: u32,
    hole_length: u32,
    method: Option<String>,
}

/// A block reference as pg_waldump prints it.
#[derive(Debug, PartialEq, Eq)]
struct DumpBlock {
    id: u8,
    relation: (u32, u32, u32),
    fork: String,
    block: u32,
    image: Option<DumpImage>,
}

/// A record as pg_waldump prints it.
#[derive(Debug, PartialEq, Eq)]
struct DumpRecord {
    rmgr: String,
    total_len: u32,
    xid: u32,
    lsn: Lsn,
    prev: Lsn,
    desc: String,
    blocks: Vec<DumpBlock>,
}

/// The text between `prefix` and the next `terminator` (or the end).
fn field<'a>(line: &'a str, prefix: &str, terminator: &str) -> &'a str {
    let from = line
        .find(prefix)
        .unwrap_or_else(|| panic!("no {prefix:?} in {line:?}"))
        + prefix.len();
    let rest = &line[from..];
    rest.find(terminator).map_or(rest, |to| &rest[..to]).trim()
}

/// Parses `pg_waldump -b` output: a `rmgr: …` line per record
/// (`XLogDumpDisplayRecord`), then one `\tblkref #N: …` line per block
/// reference (`XLogRecGetBlockRefInfo` in detailed, pretty form).
fn parse_waldump(text: &str) -> Vec<DumpRecord> {
    let mut records: Vec<DumpRecord> = Vec::new();
    for line in text.lines() {
        if line.starts_with("rmgr: ") {
            let lengths = field(line, "len (rec/tot):", ",");
            let (_, total) = lengths.split_once('/').unwrap();
            records.push(DumpRecord {
                rmgr: field(line, "rmgr: ", " ").to_owned(),
                total_len: total.trim().parse().unwrap(),
                xid: field(line, "tx:", ",").parse().unwrap(),
                lsn: field(line, "lsn: ", ",").parse().unwrap(),
                prev: field(line, "prev ", ",").parse().unwrap(),
                desc: line[line.find("desc: ").unwrap() + 6..].trim().to_owned(),
                blocks: Vec::new(),
            });
        } else if let Some(blkref) = line.strip_prefix("\tblkref #") {
            let (id, rest) = blkref.split_once(": rel ").unwrap();
            let relation: Vec<u32> = field(rest, "", " ")
                .split('/')
                .map(|oid| oid.parse().unwrap())
                .collect();
            let image = rest.contains("(FPW").then(|| DumpImage {
                applied: !rest.contains("for WAL verification"),
                hole_offset: field(rest, "hole: offset: ", ",").parse().unwrap(),
                hole_length: field(rest, ", length: ", ",").parse().unwrap(),
                method: rest
                    .contains("method: ")
                    .then(|| field(rest, "method: ", " ").to_owned()),
            });
            records
                .last_mut()
                .expect("a blkref line after a record line")
                .blocks
                .push(DumpBlock {
                    id: id.parse().unwrap(),
                    relation: (relation[0], relation[1], relation[2]),
                    fork: field(rest, " fork ", " ").to_owned(),
                    block: field(rest, " blk ", " ").parse().unwrap(),
                    image,
                });
        } else {
            assert!(
                line.trim().is_empty(),
                "unexpected pg_waldump line {line:?}"
            );
        }
    }
    records
}

fn fork_name(fork: Fork) -> &'static str {
    match fork {
        Fork::Main => "main",
        Fork::FreeSpace => "fsm",
        Fork::Visibility => "vm",
        Fork::Init => "init",
    }
}

/// Our decoding, in pg_waldump's terms.
fn as_dump(record: &DecodedRecord, desc: &str) -> DumpRecord {
    DumpRecord {
        rmgr: rmgr::name(record.rmgr).unwrap_or("custom").to_owned(),
        total_len: record.total_len,
        xid: record.xid,
        lsn: record.start,
        prev: record.prev,
        // The description is PostgreSQL's rendering of the main data.
        desc: desc.to_owned(),
        blocks: record
            .blocks
            .iter()
            .map(|block| DumpBlock {
                id: block.id,
                relation: (
                    block.file.tablespace,
                    block.file.database,
                    block.file.relfilenode,
                ),
                fork: fork_name(block.file.fork).to_owned(),
                block: block.block,
                image: block.image.map(|image| DumpImage {
                    applied: image.applies(),
                    hole_offset: u32::from(image.hole_offset),
                    hole_length: image.hole_length(8192),
                    method: image.is_compressed().then(|| {
                        let method = match image.info {
                            info if info & 0x04 != 0 => "pglz",
                            info if info & 0x08 != 0 => "lz4",
                            _ => "zstd",
                        };
                        method.to_owned()
                    }),
                }),
            })
            .collect(),
    }
}

/// Every record from `start` (any position) up to `end`.
fn decode(dir: &Path, format: WalFormat, start: Lsn, end: Lsn) -> Vec<DecodedRecord> {
    let source = SegmentDirSource::new(dir.to_owned(), format, 1);
    let mut reader = WalReader::find_first_record_from(source, format, start, end).unwrap();
    let mut records = Vec::new();
    while let Some(record) = reader
        .next_record(end)
        .unwrap_or_else(|e| panic!("after {} records: {e}", records.len()))
    {
        records.push(record);
    }
    records
}

/// Asserts that the reader decodes `dir` exactly as pg_waldump did.
fn compare_with_waldump(dir: &Path, format: WalFormat, start: Lsn, end: Lsn) -> Vec<DecodedRecord> {
    let dump = parse_waldump(&fs::read_to_string(dir.join("waldump.txt")).unwrap());
    let records = decode(dir, format, start, end);
    assert!(
        dump.len() > 100,
        "{}: only {} records",
        dir.display(),
        dump.len()
    );
    for (index, (ours, theirs)) in records.iter().zip(&dump).enumerate() {
        assert_eq!(
            as_dump(ours, &theirs.desc),
            *theirs,
            "{}: record #{index}",
            dir.display()
        );
    }
    assert_eq!(records.len(), dump.len(), "{}: record count", dir.display());
    // Records follow each other: each starts where the previous one ended,
    // or, at a page start, right after the page header.
    for pair in records.windows(2) {
        let header = if pair[0].end.0 % format.segment_size == 0 {
            40
        } else {
            24
        };
        let expected = if pair[0].end.0 % 8192 == 0 {
            pair[0].end.0 + header
        } else {
            pair[0].end.0
        };
        assert_eq!(pair[1].start.0, expected, "after {}", pair[0].start);
        assert_eq!(pair[1].prev, pair[0].start);
    }
    records
}

fn check_fixture(name: &str) {
    let fixture = load_fixture(&fixture_dir(name));
    let records = compare_with_waldump(&fixture.dir, fixture.format, fixture.start, fixture.end);
    let dump = parse_waldump(&fs::read_to_string(fixture.dir.join("waldump.txt")).unwrap());

    // The range ends with its last record.
    let last = records.last().unwrap();
    assert!(last.end <= fixture.end && fixture.end.0 - last.end.0 <= 40);

    // The switch ends its segment; the next record starts the next one.
    let switches: Vec<&DecodedRecord> = records.iter().filter(|r| r.is_switch()).collect();
    assert_eq!(switches.len(), 1, "{name}: one pg_switch_wal()");
    assert_eq!(switches[0].end.0 % fixture.format.segment_size, 0);
    assert!(records.iter().any(|r| r.start.0 == switches[0].end.0 + 40));

    // The effects: every block reference, and a copied directory exactly for
    // the records pg_waldump describes as "CREATE_FILE_COPY copy dir S/D to T/D'".
    let mut copies = Vec::new();
    for (record, theirs) in records.iter().zip(&dump) {
        let effects = record_effects(record);
        let blocks: Vec<RecordEffect> = record
            .blocks
            .iter()
            .map(|b| RecordEffect::Block(b.file.block(b.block)))
            .collect();
        assert_eq!(effects[..blocks.len()], blocks[..]);
        let expected_copy = theirs
            .desc
            .strip_prefix("CREATE_FILE_COPY copy dir ")
            .map(|text| {
                let (_, target) = text.split_once(" to ").unwrap();
                let (tablespace, database) = target.trim().split_once('/').unwrap();
                RecordEffect::CopiedDatabase {
                    tablespace: tablespace.parse().unwrap(),
                    database: database.parse().unwrap(),
                }
            });
        // Cuts: "TRUNCATE <path> to N blocks flags F" (the main fork when
        // F has SMGR_TRUNCATE_HEAP) and "CREATE <path>" (length 0).
        let expected_cut = if let Some(text) = theirs.desc.strip_prefix("TRUNCATE ") {
            let (path, rest) = text.split_once(" to ").unwrap();
            let (blocks, flags) = rest.split_once(" blocks flags ").unwrap();
            let flags: u32 = flags.trim().parse().unwrap();
            (flags & Truncation::MAIN_FORK != 0).then(|| RecordEffect::Cut {
                file: relation_of_path(path),
                length: blocks.parse().unwrap(),
            })
        } else {
            theirs
                .desc
                .strip_prefix("CREATE ")
                .filter(|_| theirs.rmgr == "Storage")
                .map(|path| RecordEffect::Cut {
                    file: relation_of_path(path.trim()),
                    length: 0,
                })
        };
        assert_eq!(
            effects[blocks.len()..].to_vec(),
            expected_copy
                .into_iter()
                .chain(expected_cut)
                .collect::<Vec<_>>(),
            "{name}: {}",
            theirs.desc
        );
        copies.extend(expected_copy);
    }
    // Truncations, against pg_waldump's "TRUNCATE <path> to N blocks flags F".
    let mut truncations = 0;
    for (record, theirs) in records.iter().zip(&dump) {
        let expected = theirs.desc.strip_prefix("TRUNCATE ").map(|text| {
            let (path, rest) = text.split_once(" to ").unwrap();
            let (blocks, flags) = rest.split_once(" blocks flags ").unwrap();
            let parts: Vec<u32> = path.split('/').filter_map(|p| p.parse().ok()).collect();
            let (tablespace, database) = match path.split('/').next().unwrap() {
                "base" => (1663, parts[0]),
                "global" => (1664, 0),
                _ => (parts[0], parts[parts.len() - 2]),
            };
            Truncation {
                relation: RelFileKey {
                    tablespace,
                    database,
                    relfilenode: *parts.last().unwrap(),
                    fork: Fork::Main,
                },
                blocks: blocks.parse().unwrap(),
                flags: flags.trim().parse().unwrap(),
            }
        });
        assert_eq!(
            record_truncation(record),
            expected,
            "{name}: {}",
            theirs.desc
        );
        truncations += usize::from(expected.is_some());
    }
    assert!(truncations >= 1, "{name}: VACUUM truncated a table");

    // CREATE DATABASE … STRATEGY file_copy into pg_default, then ALTER
    // DATABASE … SET TABLESPACE into the other tablespace.
    assert_eq!(copies.len(), 2, "{name}: {copies:?}");
    assert!(matches!(
        copies[0],
        RecordEffect::CopiedDatabase {
            tablespace: 1663,
            ..
        }
    ));
    assert!(
        matches!(copies[1], RecordEffect::CopiedDatabase { tablespace, .. } if tablespace > 16383)
    );

    // The fixture has what it is for.
    let blocks = || records.iter().flat_map(|r| &r.blocks);
    let rmgrs: BTreeSet<&str> = records.iter().filter_map(|r| rmgr::name(r.rmgr)).collect();
    for expected in [
        "Heap", "Heap2", "Btree", "Hash", "Gin", "Gist", "SPGist", "BRIN", "Database", "Storage",
    ] {
        assert!(rmgrs.contains(expected), "{name}: no {expected} record");
    }
    assert!(blocks().any(|b| b.image.is_some_and(|i| i.has_hole())));
    assert!(blocks().any(|b| b.file.tablespace > 16383));
    assert!(blocks().any(|b| b.file.fork == Fork::Visibility));
    let crosses_a_page =
        |r: &&DecodedRecord| !r.is_switch() && r.start.0 / 8192 != (r.end.0 - 1) / 8192;
    assert!(
        records.iter().any(|r| crosses_a_page(&r)),
        "{name}: a record spanning pages"
    );

    // The last page holds more WAL past the limit (the shutdown checkpoint),
    // which the reader leaves alone; the trimmed files end soon after it,
    // which the reader reports only when asked to read past them.
    let source = SegmentDirSource::new(fixture.dir.clone(), fixture.format, 1);
    let mut reader = WalReader::at_record(source, fixture.format, last.end);
    assert!(reader.next_record(fixture.end).unwrap().is_none());
    let beyond = Lsn(fixture.end.0 + 2 * 8192);
    let mut past_the_limit = 0;
    let error = loop {
        match reader.next_record(beyond) {
            Ok(Some(_)) => past_the_limit += 1,
            Ok(None) => panic!("{name}: the trimmed file should end before {beyond}"),
            Err(error) => break error,
        }
    };
    assert!(
        past_the_limit >= 1,
        "{name}: the shutdown checkpoint follows the range"
    );
    assert!(
        matches!(
            error,
            WalError::ShortSegment { .. } | WalError::InvalidRecord { .. }
        ),
        "{name}: {error}"
    );
}

#[test]
fn postgres_15_wal_decodes_like_pg_waldump() {
    check_fixture("pg15");
}

#[test]
fn postgres_17_wal_decodes_like_pg_waldump() {
    check_fixture("pg17");
}

#[test]
fn postgres_18_wal_decodes_like_pg_waldump() {
    check_fixture("pg18");
}

/// Finding the first record from positions inside records, on real pages.
#[test]
fn first_record_from_any_position_in_real_wal() {
    for name in ["pg15", "pg17", "pg18"] {
        let fixture = load_fixture(&fixture_dir(name));
        let records = decode(&fixture.dir, fixture.format, fixture.start, fixture.end);
        let starts: Vec<Lsn> = records.iter().map(|r| r.start).collect();
        // After a switch the segment's rest holds no records: PostgreSQL
        // finds none from there either (the trimmed file does not even
        // have those pages).
        let switch = records.iter().find(|r| r.is_switch()).unwrap();
        let dead = switch.start.0 + 24..switch.end.0;
        let last = *starts.last().unwrap();
        let mut position = fixture.start.0;
        while position <= last.0 {
            if dead.contains(&position) {
                position += 1999;
                continue;
            }
            let expected = *starts.iter().find(|s| s.0 >= position).unwrap();
            let source = SegmentDirSource::new(fixture.dir.clone(), fixture.format, 1);
            let mut reader = WalReader::find_first_record_from(
                source,
                fixture.format,
                Lsn(position),
                fixture.end,
            )
            .unwrap();
            let found = reader.next_record(fixture.end).unwrap().unwrap();
            assert_eq!(found.start, expected, "{name}: from {}", Lsn(position));
            position += 1999;
        }
    }
}

/// A record cut by the limit is not returned until the limit covers it.
#[test]
fn real_records_wait_for_the_limit() {
    let fixture = load_fixture(&fixture_dir("pg17"));
    let records = decode(&fixture.dir, fixture.format, fixture.start, fixture.end);
    let long = records
        .iter()
        .find(|r| r.total_len > 8192)
        .expect("a record spanning pages");
    let source = SegmentDirSource::new(fixture.dir.clone(), fixture.format, 1);
    let mut reader = WalReader::at_record(source, fixture.format, long.start);
    for cut in [long.start.0 + 24, long.start.0 + 8192, long.end.0 - 8] {
        assert!(
            reader.next_record(Lsn(cut)).unwrap().is_none(),
            "limit {}",
            Lsn(cut)
        );
        assert_eq!(reader.next_record_start(), long.start);
    }
    assert_eq!(reader.next_record(long.end).unwrap().as_ref(), Some(long));
}

/// A source that loses the segment the reader needs: the error names it.
#[test]
fn a_removed_segment_is_reported_as_missing() {
    let fixture = load_fixture(&fixture_dir("pg15"));
    let empty = std::env::temp_dir().join(format!("ptrack-empty-pg_wal-{}", std::process::id()));
    fs::create_dir_all(&empty).unwrap();
    let source = SegmentDirSource::new(empty.clone(), fixture.format, 1);
    let result =
        WalReader::find_first_record_from(source, fixture.format, fixture.start, fixture.end);
    fs::remove_dir_all(&empty).unwrap();
    assert!(matches!(
        result,
        Err(WalError::SegmentMissing { segment_start }) if segment_start == fixture.start
    ));
}

/// A one-off comparison with any WAL directory and its pg_waldump -b output
/// (`BIG=<dir> regenerate.sh …` makes them): PTRACK_WAL_COMPARE=<dir>.
#[test]
#[ignore]
fn compare_with_waldump_from_environment() {
    let dir = PathBuf::from(std::env::var("PTRACK_WAL_COMPARE").expect("PTRACK_WAL_COMPARE"));
    let fixture = load_fixture(&dir);
    let records = compare_with_waldump(&fixture.dir, fixture.format, fixture.start, fixture.end);
    let blocks: usize = records.iter().map(|r| r.blocks.len()).sum();
    let bytes = fixture.end.0 - fixture.start.0;
    eprintln!(
        "{}: {} records, {blocks} block references, {bytes} bytes of WAL: all equal to pg_waldump's",
        dir.display(),
        records.len()
    );
}

/// A relation fork named by its path as `relpathperm` prints it:
/// `base/D/R[_fork]`, `global/R[_fork]`, `pg_tblspc/S/<version>/D/R[_fork]`.
fn relation_of_path(path: &str) -> RelFileKey {
    let parts: Vec<&str> = path.split('/').collect();
    let (tablespace, database) = match parts[0] {
        "base" => (1663, parts[1].parse().unwrap()),
        "global" => (1664, 0),
        _ => (parts[1].parse().unwrap(), parts[3].parse().unwrap()),
    };
    let last = parts.last().unwrap();
    let (relfilenode, fork) = match last.split_once('_') {
        None => (*last, Fork::Main),
        Some((node, "fsm")) => (node, Fork::FreeSpace),
        Some((node, "vm")) => (node, Fork::Visibility),
        Some((node, "init")) => (node, Fork::Init),
        Some(_) => panic!("unknown fork in {path}"),
    };
    RelFileKey {
        tablespace,
        database,
        relfilenode: relfilenode.parse().unwrap(),
        fork,
    }
}
