use super::*;
use crate::block::Fork;
use crate::map::OwnedLsnMap;

const SEGMENT_BLOCKS: u32 = 8;

fn fork(relfilenode: u32) -> RelFileKey {
    RelFileKey {
        tablespace: 1663,
        database: 5,
        relfilenode,
        fork: Fork::Main,
    }
}

/// The segment files of a fork of `blocks` blocks.
fn segments(file: RelFileKey, blocks: u32) -> Vec<SegmentFile> {
    let count = blocks.div_ceil(SEGMENT_BLOCKS).max(1);
    (0..count)
        .map(|segment| SegmentFile {
            path: format!("base/5/{}.{segment}", file.relfilenode),
            key: file,
            segment,
            blocks: (blocks - segment * SEGMENT_BLOCKS).min(SEGMENT_BLOCKS),
        })
        .collect()
}

fn walk(lengths: &[(RelFileKey, u32)]) -> Vec<io::Result<SegmentFile>> {
    lengths
        .iter()
        .flat_map(|&(file, blocks)| segments(file, blocks))
        .map(Ok)
        .collect()
}

/// Every existing block answers in `new` at least as in `old` for every
/// `since`, and every fork's blocks past its end (as far as `past`) too,
/// where a cut reports them in `old`.
fn assert_never_falls(
    old: &LsnMap<'_>,
    new: &LsnMap<'_>,
    lengths: &[(RelFileKey, u32)],
    sinces: impl IntoIterator<Item = u64>,
    past: u32,
) {
    assert_eq!(new.init_lsn(), old.init_lsn());
    for since in sinces.into_iter().map(Lsn) {
        for &(file, blocks) in lengths {
            let (was, now) = (old.file_query(&file, since), new.file_query(&file, since));
            for block in 0..blocks {
                assert!(
                    now.changed(block) || !was.changed(block),
                    "{file:?} block {block} since {since}: the answer fell"
                );
            }
            let past_end = |query: &crate::map::FileQuery<'_>| {
                (blocks..blocks + past)
                    .filter(|&b| {
                        query.changed(b) && query.reported_from().is_some_and(|from| b >= from)
                    })
                    .count()
            };
            assert!(
                now.reported_from().unwrap_or(u32::MAX) <= was.reported_from().unwrap_or(u32::MAX),
                "{file:?} since {since}: a cut was lost ({:?} -> {:?})",
                was.reported_from(),
                now.reported_from()
            );
            assert!(past_end(&now) >= past_end(&was), "{file:?} since {since}");
        }
    }
}

fn no_fork_gone(_: &RelFileKey) -> io::Result<bool> {
    Ok(true)
}

#[test]
fn marks_cuts_and_the_cut_table_are_carried_both_ways() {
    for (from, to) in [(1 << 12, 1 << 14), (1 << 14, 1 << 10), (1 << 12, 97)] {
        let old_owned = OwnedLsnMap::new(from);
        let old = old_owned.view();
        old.start_tracking_at(Lsn(100));
        let (a, b, c) = (fork(1), fork(2), fork(3));
        for block in 0..40 {
            old.mark(&a.block(block), Lsn(200 + u64::from(block)));
        }
        old.mark_cut(&b, 5, Lsn(300));
        old.record_cut(&c, 3, Lsn(400)).unwrap();
        let lengths = [(a, 50), (b, 9), (c, 2)];
        let new_owned = OwnedLsnMap::new(to);
        let new = new_owned.view();
        let carried = carry_over(&old, &new, walk(&lengths), SEGMENT_BLOCKS, no_fork_gone).unwrap();
        assert_eq!(carried.files, 7 + 2 + 1);
        assert!(carried.blocks >= 40, "{carried:?}");
        assert_eq!((carried.cut_forks, carried.cut_table_entries), (2, 1));
        assert_never_falls(
            &old,
            &new,
            &lengths,
            [1, 99, 100, 150, 220, 239, 240, 300, 301, 400, 401],
            30,
        );
        assert_eq!(new.cut_table().reported_from(&c), Some(3));
        // Exact where the new map has no collisions.
        if to > from {
            assert!(!new.changed_since(&a.block(45), Lsn(101)));
            assert!(!new.changed_since(&a.block(10), Lsn(211)));
            assert!(new.changed_since(&a.block(10), Lsn(210)));
        }
    }
}

#[test]
fn a_gone_fork_leaves_the_cut_table_and_an_unstarted_map_carries_nothing() {
    let old_owned = OwnedLsnMap::new(1 << 12);
    let old = old_owned.view();
    let new_owned = OwnedLsnMap::new(1 << 10);
    let new = new_owned.view();
    let carried = carry_over(
        &old,
        &new,
        walk(&[(fork(1), 10)]),
        SEGMENT_BLOCKS,
        no_fork_gone,
    )
    .unwrap();
    assert_eq!(carried, CarriedOver::default());
    assert_eq!(new.init_lsn(), Lsn::INVALID);

    old.start_tracking_at(Lsn(10));
    old.record_cut(&fork(1), 0, Lsn(20)).unwrap();
    old.record_cut(&fork(2), 0, Lsn(20)).unwrap();
    let carried = carry_over(&old, &new, walk(&[(fork(1), 1)]), SEGMENT_BLOCKS, |f| {
        Ok(*f == fork(1))
    })
    .unwrap();
    assert_eq!(carried.cut_table_entries, 1);
    assert_eq!(new.cut_table().reported_from(&fork(2)), None);
    assert_eq!(new.cut_table().reported_from(&fork(1)), Some(0));
}

#[test]
fn errors_fail_the_carry_over() {
    let old_owned = OwnedLsnMap::new(1 << 12);
    let old = old_owned.view();
    old.start_tracking_at(Lsn(10));
    let new_owned = OwnedLsnMap::new(1 << 10);
    let files = vec![Err(io::Error::other("EIO"))];
    assert!(matches!(
        carry_over(&old, &new_owned.view(), files, SEGMENT_BLOCKS, no_fork_gone),
        Err(CarryError::Walk(_))
    ));
    // More forks in the old table than the new one holds.
    let big_owned = OwnedLsnMap::new(1 << 17);
    let big = big_owned.view();
    big.start_tracking_at(Lsn(10));
    let capacity = OwnedLsnMap::new(1).view().cut_table().capacity() as u32;
    for relation in 0..=capacity {
        big.record_cut(&fork(relation), 0, Lsn(20)).unwrap();
    }
    let small_owned = OwnedLsnMap::new(1);
    assert!(matches!(
        carry_over(
            &big,
            &small_owned.view(),
            walk(&[]),
            SEGMENT_BLOCKS,
            no_fork_gone
        ),
        Err(CarryError::CutTable(_))
    ));
}

proptest::proptest! {
    /// For random marks, cuts and lengths, in small maps full of collisions,
    /// no existing block's answer falls, and no cut past a fork's end is lost.
    #[test]
    fn no_answer_falls(
        marks in proptest::collection::vec((0u32..5, 0u32..60, 1u64..1000), 0..300),
        cuts in proptest::collection::vec((0u32..5, 0u32..60, 1u64..1000, proptest::bool::ANY), 0..6),
        lengths in proptest::collection::vec(0u32..60, 5),
        init in 1u64..500,
        old_slots in 1usize..300,
        new_slots in 1usize..300,
    ) {
        let old_owned = OwnedLsnMap::new(old_slots);
        let old = old_owned.view();
        old.start_tracking_at(Lsn(init));
        for (relation, block, lsn) in marks {
            old.mark(&fork(relation).block(block), Lsn(lsn));
        }
        for (relation, length, lsn, recorded) in cuts {
            if recorded {
                let _ = old.record_cut(&fork(relation), length, Lsn(lsn));
            } else {
                old.mark_cut(&fork(relation), length, Lsn(lsn));
            }
        }
        let lengths: Vec<_> = lengths.into_iter().enumerate().map(|(r, n)| (fork(r as u32), n)).collect();
        let new_owned = OwnedLsnMap::new(new_slots);
        let new = new_owned.view();
        match carry_over(&old, &new, walk(&lengths), SEGMENT_BLOCKS, no_fork_gone) {
            Ok(_) => assert_never_falls(&old, &new, &lengths, (0..1002).step_by(7).chain([init, init + 1]), 20),
            Err(CarryError::CutTable(_)) => {}
            Err(error) => panic!("{error}"),
        }
    }
}

mod file {
    use super::*;

    const SYSID: u64 = 7_300_000_000_000_000_042;

    fn expect(slot_count: u64) -> Expectation {
        crate::mapfile::hook_mode_expectation(SYSID, slot_count)
    }

    fn write(dir: &Path, map: &LsnMap<'_>, system_identifier: u64) {
        let meta = MapFileMeta {
            system_identifier,
            slot_count: map.slot_count() as u64,
            init_lsn: map.init_lsn(),
            checkpoint_redo: Lsn(0x5000),
            data_checksum_version: 1,
            wal_tracked_through: Lsn::INVALID,
            base_nonce: 0x5EED,
            side_forks_tracked_from: Lsn::INVALID,
        };
        mapfile::persist(dir, &meta, map.words()).unwrap();
    }

    #[test]
    fn a_map_file_of_another_size_is_verified_and_read_as_it_was() {
        let dir = std::env::temp_dir().join(format!("ptrack-resize-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(mapfile::MAP_FILE_NAME);
        let owned = OwnedLsnMap::new(1000);
        let map = owned.view();
        map.start_tracking_at(Lsn(0x100));
        map.mark(&fork(1).block(7), Lsn(0x300));
        map.record_cut(&fork(2), 4, Lsn(0x400)).unwrap();
        write(&dir, &map, SYSID);

        let old = open_resized(&path, &expect(5000)).unwrap();
        assert_eq!(old.meta().slot_count, 1000);
        let view = old.view();
        assert_eq!(view.init_lsn(), Lsn(0x100));
        assert!(view
            .words()
            .iter()
            .zip(map.words())
            .all(|(a, b)| a.load(Ordering::Relaxed) == b.load(Ordering::Relaxed)));
        assert_eq!(view.cut_table().reported_from(&fork(2)), Some(4));
        drop(old);

        // Every check of a map of the right size applies.
        let stale = Expectation {
            latest_checkpoint_redo: Lsn(0x6000),
            ..expect(5000)
        };
        assert!(matches!(
            open_resized(&path, &stale),
            Err(MapFileError::Stale { .. })
        ));
        let restored = Expectation {
            backup_label_present: true,
            ..expect(5000)
        };
        assert!(matches!(
            open_resized(&path, &restored),
            Err(MapFileError::RestoredOrRewound)
        ));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER_LEN + 8 * 500] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            open_resized(&path, &expect(5000)),
            Err(MapFileError::ChecksumMismatch { .. })
        ));
        bytes.truncate(bytes.len() - 8);
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            open_resized(&path, &expect(5000)),
            Err(MapFileError::WrongLength { .. })
        ));
        write(&dir, &map, SYSID + 1);
        assert!(matches!(
            open_resized(&path, &expect(5000)),
            Err(MapFileError::ForeignCluster { .. })
        ));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            open_resized(&path, &expect(5000)),
            Err(MapFileError::Missing)
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
