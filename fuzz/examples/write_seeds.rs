//! Writes the seeds of `corpus/map_file` and `corpus/map_delta` with the
//! core's own writers, so that they follow the format when it changes:
//!
//!   cd fuzz && cargo run --example write_seeds
//!
//! (`corpus/map_file/regression-*` are inputs the fuzzer found, kept as
//! they are.) Not a fuzz target: cargo-fuzz builds only the `[[bin]]`s.

use std::fs;
use std::path::Path;

use ptrack_core::cuts::CutTable;
use ptrack_core::mapfile::delta::{self, RecordMeta};
use ptrack_core::mapfile::{write_map, MapFileMeta};
use ptrack_core::{Lsn, LsnMap, OwnedLsnMap};
use ptrack_fuzz::{ctl, flags, relation, BASE_NONCE, BASE_REDO, SYSID};

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::write(dir.join(name), bytes).unwrap();
    println!("{} ({} bytes)", dir.join(name).display(), bytes.len());
}

/// `map_file`'s 8 configuration bytes: flags, data checksum version 1,
/// latest REDO 0x5000 (what the files below were written at).
fn map_file_config(flags: u8) -> [u8; 8] {
    [flags, 1, 0, 0, 0, 0x00, 0x50, 0x00]
}

const MAP_FILE_NONCE: u64 = 0x5EED;

/// A map file of `slot_count` slots, every third set (the pattern the
/// version 1 seeds had), with a cut if `cut` and a delta record after the
/// full part if `with_record`.
fn map_file(slot_count: usize, wal: bool, cut: bool, with_record: bool) -> Vec<u8> {
    let map = OwnedLsnMap::new(slot_count);
    let view = map.view();
    let slots = (0..slot_count as u64).map(|i| if i % 3 == 0 { 0x5000 + 0x11 * i } else { 0 });
    let cut_words = CutTable::words_for(slot_count);
    view.load(Lsn(0x100), slots.chain(std::iter::repeat_n(0, cut_words)));
    if cut {
        view.record_cut(&relation(3), 12, Lsn(0x4000)).unwrap();
    }
    let meta = MapFileMeta {
        system_identifier: SYSID,
        slot_count: slot_count as u64,
        init_lsn: Lsn(0x100),
        checkpoint_redo: Lsn(0x5000),
        data_checksum_version: 1,
        wal_tracked_through: if wal { Lsn(0x3000) } else { Lsn::INVALID },
        base_nonce: MAP_FILE_NONCE,
        side_forks_tracked_from: if wal { Lsn::INVALID } else { Lsn(0x4000) },
    };
    let mut bytes = Vec::new();
    write_map(&mut bytes, &meta, view.words()).unwrap();
    if with_record {
        view.dirty_regions().take_all();
        view.mark(&relation(2).block(5), Lsn(0x5800));
        let mut tail = Vec::new();
        append_record(&mut tail, MAP_FILE_NONCE, &view, 0x6000, wal);
        bytes.extend(tail);
    }
    bytes
}

fn map_file_seeds(dir: &Path) {
    // Flags as the version 1 seeds had them (see fuzz_targets/map_file.rs).
    for (name, flags, slot_count, wal, cut, record) in [
        ("hooks-1", 0x06, 1, false, false, false),
        ("hooks-16", 0x00, 16, false, false, false),
        ("wal-64", 0x0e, 64, true, false, false),
        ("wal-500-write", 0x2f, 500, true, false, false),
        ("wal-600-cut", 0x0e, 600, true, true, false),
        ("hooks-64-record", 0x06, 64, false, false, true),
    ] {
        let mut seed = map_file_config(flags).to_vec();
        seed.extend(map_file(slot_count, wal, cut, record));
        write(dir, name, &seed);
    }
}

/// Appends to `out`, the bytes after a full part, one record of the regions `map` dirtied since the
/// last, as a checkpoint with REDO `redo` writes it.
fn append_record(out: &mut Vec<u8>, nonce: u64, map: &LsnMap<'_>, redo: u64, wal: bool) {
    let meta = RecordMeta {
        init_lsn: map.init_lsn(),
        checkpoint_redo: Lsn(redo),
        wal_tracked_through: if wal { Lsn(redo + 0x10) } else { Lsn::INVALID },
        side_forks_tracked_from: map.side_forks_tracked_from(),
    };
    let offset = out.len() as u64;
    delta::write_record(out, nonce, offset, &meta, map, 256 * 1024, &mut |_| Ok(())).unwrap();
}

/// A delta continuing `map_delta`'s base of `slot_count` slots: one record
/// per batch of blocks marked (a cut where the block is negative).
fn delta_seed(config: [u8; 4], batches: &[&[i64]], redos: &[u64]) -> Vec<u8> {
    let wal = config[0] & flags::WAL_MODE != 0;
    let base = ptrack_fuzz::base(ptrack_fuzz::delta_slot_count(&config), wal);
    let map = base.map.view();
    let mut delta = Vec::new();
    let mut lsn = 0x5100;
    for (batch, &redo) in batches.iter().zip(redos) {
        for &block in *batch {
            lsn += 0x10;
            if block < 0 {
                map.record_cut(&relation(1), (-block) as u32, Lsn(lsn))
                    .unwrap();
            } else {
                map.mark(&relation(1).block(block as u32), Lsn(lsn));
            }
        }
        append_record(&mut delta, BASE_NONCE, &map, redo, wal);
    }
    [&config[..], &delta].concat()
}

/// Round-trip groups: relation, block, control.
fn marks(groups: &[(u8, u16, u8)]) -> Vec<u8> {
    groups
        .iter()
        .flat_map(|&(rel, block, control)| {
            let [lo, hi] = block.to_le_bytes();
            [rel, lo, hi, control]
        })
        .collect()
}

fn map_delta_seeds(dir: &Path) {
    // Byte 2 = 0x20: pg_control's REDO is the base's.
    assert_eq!(ptrack_fuzz::latest_redo(&[0, 0, 0x20]), BASE_REDO);
    write(dir, "empty-16", &[0, 15, 0x20, 0]);
    write(
        dir,
        "one-record-16",
        &delta_seed([0, 15, 0x20, 0], &[&[1, 2, 3]], &[0x6000]),
    );
    write(
        dir,
        "three-records-64-resealed",
        &delta_seed(
            [flags::RESEAL | flags::FIX_HEADERS, 63, 0x40, 0],
            &[&[1, 9, 40], &[2, 500], &[]],
            &[0x6000, 0x7000, 0x7000],
        ),
    );
    write(
        dir,
        "wal-256-cuts",
        &delta_seed(
            [flags::WAL_MODE, 255, 0xff, 0],
            &[&[-5, 10, 11], &[-300, 7]],
            &[0x6000, 0x6800],
        ),
    );
    // A crash in the middle of an append: the whole records count.
    let mut torn = delta_seed(
        [0, 199, 0x30, 0],
        &[&[4], &[5, 6], &[7, 8, 9]],
        &[0x6000, 0x7000, 0x8000],
    );
    let cut_at = torn.len() - 20;
    torn.truncate(cut_at);
    write(dir, "torn-append-200", &torn);
    // A REDO going back ends the delta there.
    write(
        dir,
        "redo-back-32",
        &delta_seed(
            [0, 31, 0x20, 0],
            &[&[1], &[2], &[3]],
            &[0x6000, 0x5800, 0x9000],
        ),
    );
    write(
        dir,
        "damaged-base-16",
        &delta_seed([flags::DAMAGE_BASE, 15, 0x10, 0], &[&[1, 2]], &[0x6000]),
    );
    let round_trip = marks(&[
        (1, 10, 0),
        (1, 11, ctl::FLUSH),
        (2, 400, 0),
        (2, 3, ctl::CUT | ctl::FLUSH),
        (3, 9, ctl::FLUSH | ctl::FAIL),
        (3, 60_000, 0),
        (1, 10, ctl::FLUSH),
        (4, 77, 0),
    ]);
    for (name, flag, rt_slots) in [
        ("round-trip-hooks-64", 0, 0),
        ("round-trip-wal-256", flags::WAL_MODE, 3),
    ] {
        let mut seed = vec![flags::ROUND_TRIP | flag, 15, 0x20, rt_slots];
        seed.extend(&round_trip);
        write(dir, name, &seed);
    }
    // Both halves on the same bytes: records as marks.
    let mut both = delta_seed(
        [flags::ROUND_TRIP, 63, 0x20, 1],
        &[&[1, 2], &[3]],
        &[0x6000, 0x7000],
    );
    both[0] |= flags::RESEAL;
    write(dir, "records-and-round-trip-64", &both);
}

fn main() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let map_delta = corpus.join("map_delta");
    fs::create_dir_all(&map_delta).unwrap();
    map_file_seeds(&corpus.join("map_file"));
    map_delta_seeds(&map_delta);
}
