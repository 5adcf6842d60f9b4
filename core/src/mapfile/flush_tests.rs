//! The flush sequence on disk: full file, delta records after it,
//! compaction, and what a start reads back after a crash at any byte of an
//! append.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use crate::block::{Fork, RelFileKey};
use crate::mapfile::{
    file_len, flush_map, highest_lsn_recorded, hook_mode_expectation, open_header_verified,
    Expectation, Flushed, MapFileError, MapFileMeta, MAP_FILE_NAME,
};
use crate::{Lsn, OwnedLsnMap};

const SYSID: u64 = 7_300_000_000_000_000_003;
const SLOTS: usize = 1 << 16;

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ptrack-flush-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn file() -> RelFileKey {
    RelFileKey {
        tablespace: 1663,
        database: 5,
        relfilenode: 16_384,
        fork: Fork::Main,
    }
}

fn meta_at(map: &OwnedLsnMap, redo: u64) -> MapFileMeta {
    MapFileMeta {
        system_identifier: SYSID,
        slot_count: SLOTS as u64,
        init_lsn: map.view().init_lsn(),
        checkpoint_redo: Lsn(redo),
        data_checksum_version: 1,
        wal_tracked_through: Lsn::INVALID,
        base_nonce: 0,
        side_forks_tracked_from: map.view().side_forks_tracked_from(),
    }
}

fn expect_at(redo: u64) -> Expectation {
    Expectation {
        latest_checkpoint_redo: Lsn(redo),
        ..hook_mode_expectation(SYSID, SLOTS as u64)
    }
}

fn flush(dir: &Path, map: &OwnedLsnMap, redo: u64) -> Flushed {
    flush_map(dir, &map.view(), &meta_at(map, redo), &mut |_| Ok(())).unwrap()
}

fn words_of(map: &OwnedLsnMap) -> Vec<u64> {
    let view = map.view();
    view.words()
        .iter()
        .map(|w| w.load(Ordering::Relaxed))
        .collect()
}

/// What a start would load from `dir`: the words and the REDO.
fn load(dir: &Path, expect: &Expectation) -> Result<(Vec<u64>, Lsn), MapFileError> {
    let file = open_header_verified(&dir.join(MAP_FILE_NAME), expect)?;
    let loaded = OwnedLsnMap::new(SLOTS);
    file.load_into(&loaded.view())?;
    Ok((words_of(&loaded), file.meta().checkpoint_redo))
}

fn mark_some(map: &OwnedLsnMap, blocks: std::ops::Range<u32>, lsn: u64) {
    for block in blocks {
        map.view().mark(&file().block(block), Lsn(lsn));
    }
}

#[test]
fn deltas_follow_a_full_write_and_load_back_exactly() {
    let dir = TempDir::new("sequence");
    let map = OwnedLsnMap::new(SLOTS);
    mark_some(&map, 0..100, 0x1000);
    assert!(matches!(flush(&dir.0, &map, 0x1000), Flushed::Full { .. }));
    assert_eq!(
        load(&dir.0, &expect_at(0x1000)).unwrap(),
        (words_of(&map), Lsn(0x1000))
    );
    let full_bytes = file_len(SLOTS as u64);
    for round in 1..=5u64 {
        let lsn = 0x1000 + round * 0x100;
        mark_some(&map, (round as u32 * 7)..(round as u32 * 7 + 20), lsn);
        map.view()
            .record_cut(&file(), round as u32, Lsn(lsn))
            .unwrap();
        match flush(&dir.0, &map, lsn) {
            Flushed::Delta { bytes, .. } => assert!(
                bytes * 20 < full_bytes,
                "a delta of {bytes} bytes for 20 marks, the map is {full_bytes}"
            ),
            other => panic!("round {round}: {other:?}"),
        }
        assert_eq!(
            load(&dir.0, &expect_at(lsn)).unwrap(),
            (words_of(&map), Lsn(lsn)),
            "round {round}"
        );
    }
}

#[test]
fn nothing_changed_still_records_the_checkpoint() {
    let dir = TempDir::new("empty");
    let map = OwnedLsnMap::new(SLOTS);
    mark_some(&map, 0..10, 0x1000);
    flush(&dir.0, &map, 0x1000);
    assert!(matches!(
        flush(&dir.0, &map, 0x2000),
        Flushed::Delta { regions: 0, .. }
    ));
    assert_eq!(load(&dir.0, &expect_at(0x2000)).unwrap().1, Lsn(0x2000));
}

/// A crash at any byte of an append leaves the map of the flush before, and
/// its REDO: pg_control still names that checkpoint.
#[test]
fn an_append_cut_anywhere_leaves_the_map_before_it() {
    let dir = TempDir::new("torn");
    let map = OwnedLsnMap::new(SLOTS);
    mark_some(&map, 0..50, 0x1000);
    flush(&dir.0, &map, 0x1000);
    mark_some(&map, 50..60, 0x2000);
    flush(&dir.0, &map, 0x2000);
    let before = words_of(&map);
    let path = dir.0.join(MAP_FILE_NAME);
    let len_before = fs::metadata(&path).unwrap().len();
    mark_some(&map, 60..90, 0x3000);
    flush(&dir.0, &map, 0x3000);
    let whole = fs::read(&path).unwrap();
    for cut in len_before as usize..whole.len() {
        fs::write(&path, &whole[..cut]).unwrap();
        assert_eq!(
            load(&dir.0, &expect_at(0x2000)).unwrap(),
            (before.clone(), Lsn(0x2000)),
            "cut at byte {cut}"
        );
    }
    // Any flipped bit of the last record ends the delta before it too.
    for byte in (len_before as usize..whole.len()).step_by(7) {
        let mut damaged = whole.clone();
        damaged[byte] ^= 0x20;
        fs::write(&path, &damaged).unwrap();
        assert_eq!(
            load(&dir.0, &expect_at(0x2000)).unwrap().1,
            Lsn(0x2000),
            "byte {byte}"
        );
    }
    // And hook mode then refuses the map if pg_control names the later checkpoint.
    assert!(matches!(
        load(&dir.0, &expect_at(0x3000)),
        Err(MapFileError::Stale { .. })
    ));
}

/// Records name the full part they follow: the same records after another
/// full part (of the same cluster and size) are ignored.
#[test]
fn records_never_apply_to_another_full_part() {
    let dir = TempDir::new("rebase");
    let map = OwnedLsnMap::new(SLOTS);
    mark_some(&map, 0..50, 0x1000);
    flush(&dir.0, &map, 0x1000);
    let path = dir.0.join(MAP_FILE_NAME);
    let base_len = file_len(SLOTS as u64) as usize;
    mark_some(&map, 50..60, 0x3000);
    flush(&dir.0, &map, 0x3000);
    let records = fs::read(&path).unwrap()[base_len..].to_vec();
    assert!(!records.is_empty());
    // Another full part, as after a start.
    let fresh = OwnedLsnMap::new(SLOTS);
    mark_some(&fresh, 0..5, 0x3000);
    assert!(matches!(
        flush(&dir.0, &fresh, 0x3000),
        Flushed::Full { .. }
    ));
    let mut grafted = fs::read(&path).unwrap();
    grafted.extend_from_slice(&records);
    fs::write(&path, &grafted).unwrap();
    assert_eq!(
        load(&dir.0, &expect_at(0x3000)).unwrap(),
        (words_of(&fresh), Lsn(0x3000))
    );
}

#[test]
fn a_failed_append_makes_the_next_flush_full() {
    let dir = TempDir::new("failed");
    let map = OwnedLsnMap::new(SLOTS);
    mark_some(&map, 0..50, 0x1000);
    flush(&dir.0, &map, 0x1000);
    mark_some(&map, 50..60, 0x2000);
    let failed = flush_map(&dir.0, &map.view(), &meta_at(&map, 0x2000), &mut |_| {
        Err(io::Error::other("injected"))
    });
    assert!(failed.is_err());
    assert_eq!(map.view().delta_position(), None);
    // The taken bits were lost with the failed record: only a full write
    // still holds blocks 50..60.
    assert!(matches!(flush(&dir.0, &map, 0x3000), Flushed::Full { .. }));
    assert_eq!(
        load(&dir.0, &expect_at(0x3000)).unwrap(),
        (words_of(&map), Lsn(0x3000))
    );
}

#[test]
fn a_delta_past_half_the_map_is_compacted() {
    let dir = TempDir::new("compact");
    let map = OwnedLsnMap::new(SLOTS);
    flush(&dir.0, &map, 0x1000);
    let mut kinds = Vec::new();
    for round in 0..6u32 {
        // Each round dirties about an eighth of the map's regions.
        mark_some(
            &map,
            round * 4000..round * 4000 + 600,
            0x2000 + u64::from(round),
        );
        kinds.push(flush(&dir.0, &map, 0x2000 + u64::from(round)));
        let delta_len =
            fs::metadata(dir.0.join(MAP_FILE_NAME)).unwrap().len() - file_len(SLOTS as u64);
        assert!(
            delta_len <= file_len(SLOTS as u64) / 2,
            "delta of {delta_len} bytes"
        );
        assert_eq!(
            load(&dir.0, &expect_at(0x2000 + u64::from(round)))
                .unwrap()
                .0,
            words_of(&map)
        );
    }
    assert!(
        kinds.iter().any(|k| matches!(k, Flushed::Full { .. })),
        "{kinds:?}"
    );
    assert!(
        kinds.iter().any(|k| matches!(k, Flushed::Delta { .. })),
        "{kinds:?}"
    );
}

#[test]
fn a_rejected_maps_highest_lsn_includes_its_delta_records() {
    let dir = TempDir::new("highest");
    let map = OwnedLsnMap::new(SLOTS);
    mark_some(&map, 0..10, 0x1000);
    flush(&dir.0, &map, 0x1000);
    mark_some(&map, 10..11, 0x9_0000);
    flush(&dir.0, &map, 0x2000);
    let file = fs::read(dir.0.join(MAP_FILE_NAME)).unwrap();
    let base_len = file_len(SLOTS as u64) as usize;
    assert_eq!(
        highest_lsn_recorded(&file[..base_len], SYSID),
        Some(Lsn(0x1000))
    );
    assert_eq!(highest_lsn_recorded(&file, SYSID), Some(Lsn(0x9_0000)));
}

/// A map file of another size is carried over with its delta applied.
#[test]
fn a_resized_map_is_read_with_its_delta() {
    let dir = TempDir::new("resized");
    let map = OwnedLsnMap::new(SLOTS);
    mark_some(&map, 0..10, 0x1000);
    flush(&dir.0, &map, 0x1000);
    mark_some(&map, 10..20, 0x2000);
    flush(&dir.0, &map, 0x2000);
    let other_size = Expectation {
        slot_count: SLOTS as u64 * 2,
        ..expect_at(0x2000)
    };
    let old = crate::resize::open_resized(&dir.0.join(MAP_FILE_NAME), &other_size).unwrap();
    assert_eq!(old.meta().checkpoint_redo, Lsn(0x2000));
    let view = old.view();
    let carried: Vec<u64> = view
        .words()
        .iter()
        .map(|w| w.load(Ordering::Relaxed))
        .collect();
    assert_eq!(carried, words_of(&map));
}

/// The position from which the free space and visibility maps are tracked
/// is carried by the full part and by every record.
#[test]
fn the_side_fork_position_is_kept_by_full_writes_and_records() {
    let dir = TempDir::new("side-forks");
    let map = OwnedLsnMap::new(SLOTS);
    mark_some(&map, 0..10, 0x1000);
    flush(&dir.0, &map, 0x1000);
    let read = |redo: u64| {
        *open_header_verified(&dir.0.join(MAP_FILE_NAME), &expect_at(redo))
            .unwrap()
            .meta()
    };
    assert_eq!(read(0x1000).side_forks_tracked_from, Lsn::INVALID);
    map.view().track_side_forks_from(Lsn(0x1800));
    flush(&dir.0, &map, 0x2000);
    assert_eq!(read(0x2000).side_forks_tracked_from, Lsn(0x1800));
    map.view().set_delta_position(None);
    assert!(matches!(flush(&dir.0, &map, 0x3000), Flushed::Full { .. }));
    assert_eq!(read(0x3000).side_forks_tracked_from, Lsn(0x1800));
    map.view().forget_side_forks();
    flush(&dir.0, &map, 0x4000);
    assert_eq!(read(0x4000).side_forks_tracked_from, Lsn::INVALID);
}
