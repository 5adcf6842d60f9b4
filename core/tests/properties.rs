//! Property tests of the map's one promise: no false negatives.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use proptest::prelude::*;
use ptrack_core::walk::{segment_pagemap, Layout, SegmentFile};
use ptrack_core::{BlockKey, Fork, Lsn, OwnedLsnMap, RelFileKey};

fn fork() -> impl Strategy<Value = Fork> {
    prop::sample::select(Fork::ALL.to_vec())
}

fn block_key() -> impl Strategy<Value = BlockKey> {
    (
        prop::sample::select(vec![1663u32, 1664, 16400]),
        0u32..4,
        16384u32..16390,
        fork(),
        0u32..5000,
    )
        .prop_map(|(tablespace, database, relfilenode, fork, block)| {
            RelFileKey {
                tablespace,
                database,
                relfilenode,
                fork,
            }
            .block(block)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A marked block is reported for every LSN from the init LSN up to its
    /// latest mark, however small the map and however many other blocks share
    /// its slots.
    #[test]
    fn every_mark_is_reported_up_to_its_lsn(
        slot_count in 1usize..512,
        init in 1u64..1000,
        marks in prop::collection::vec((block_key(), 0u64..100_000), 1..400),
    ) {
        let owned = OwnedLsnMap::new(slot_count);
        let map = owned.view();
        map.start_tracking_at(Lsn(init));
        let mut latest: HashMap<BlockKey, u64> = HashMap::new();
        for (key, offset) in &marks {
            let lsn = init + offset;
            map.mark(key, Lsn(lsn));
            let entry = latest.entry(*key).or_insert(lsn);
            *entry = (*entry).max(lsn);
        }
        for (key, &lsn) in &latest {
            for since in [init, (init + lsn) / 2, lsn] {
                prop_assert!(map.changed_since(key, Lsn(since)), "{key:?} marked {lsn} missed for {since}");
            }
            // Below the init LSN nothing is known, so everything is reported.
            prop_assert!(map.changed_since(key, Lsn(init - 1)));
        }
    }

    /// The pagemap of a segment has a bit for exactly the blocks the map
    /// reports, with the segment-relative numbering and byte order of ptrack 2.4.
    #[test]
    fn pagemap_bits_match_the_map(
        segment in 0u32..3,
        blocks in 1u32..300,
        marked in prop::collection::btree_set(0u32..900, 0..40),
        fork in fork(),
    ) {
        let layout = Layout { block_size: 8192, segment_blocks: 300, tablespace_version_dir: "PG_17_0".into() };
        let key = RelFileKey { tablespace: 1663, database: 5, relfilenode: 16384, fork };
        let owned = OwnedLsnMap::new(1 << 14);
        let map = owned.view();
        map.start_tracking_at(Lsn(1));
        for &block in &marked {
            map.mark(&key.block(block), Lsn(50));
        }
        let file = SegmentFile { path: "base/5/16384".into(), key, segment, blocks };
        let pagemap = segment_pagemap(&map, &file, Lsn(50), &layout);
        let mut expected_count = 0u64;
        for offset in 0..blocks {
            let absolute = segment * layout.segment_blocks + offset;
            let expected = map.changed_since(&key.block(absolute), Lsn(50));
            let bit = pagemap.as_ref().is_some_and(|p| {
                p.pagemap.get((offset / 8) as usize).is_some_and(|byte| byte & (1 << (offset % 8)) != 0)
            });
            prop_assert_eq!(bit, expected, "block {}", absolute);
            if marked.contains(&absolute) {
                prop_assert!(bit, "marked block {} missing", absolute);
            }
            expected_count += u64::from(expected);
        }
        match pagemap {
            None => prop_assert_eq!(expected_count, 0),
            Some(p) => {
                prop_assert_eq!(p.pagecount, expected_count);
                prop_assert!(p.pagemap.last().is_some_and(|&b| b != 0), "no trailing zero bytes");
            }
        }
    }
}

/// Two threads (the machine has two cores) marking disjoint and shared blocks
/// at rising LSNs lose no mark.
#[test]
fn concurrent_marking_loses_nothing() {
    let owned = OwnedLsnMap::new(1 << 12);
    let map = owned.view();
    map.start_tracking_at(Lsn(1));
    let threads = 4u32;
    let per_thread = 50_000u32;
    std::thread::scope(|scope| {
        for thread in 0..threads {
            scope.spawn(move || {
                for i in 0..per_thread {
                    let file = RelFileKey {
                        tablespace: 1663,
                        database: 5,
                        relfilenode: 16384 + thread,
                        fork: Fork::Main,
                    };
                    map.mark(&file.block(i % 7000), Lsn(u64::from(i) + 2));
                    // A block every thread writes, with the thread's own LSNs.
                    let shared = RelFileKey {
                        relfilenode: 1,
                        ..file
                    };
                    map.mark(&shared.block(i % 13), Lsn(u64::from(i) + 2));
                }
            });
        }
    });
    for thread in 0..threads {
        let file = RelFileKey {
            tablespace: 1663,
            database: 5,
            relfilenode: 16384 + thread,
            fork: Fork::Main,
        };
        for i in per_thread - 7000..per_thread {
            let key = file.block(i % 7000);
            assert!(
                map.changed_since(&key, Lsn(u64::from(i) + 2)),
                "thread {thread} lost {key:?} at {i}"
            );
        }
    }
    let shared = RelFileKey {
        tablespace: 1663,
        database: 5,
        relfilenode: 1,
        fork: Fork::Main,
    };
    for i in per_thread - 13..per_thread {
        assert!(map.changed_since(&shared.block(i % 13), Lsn(u64::from(i) + 2)));
    }
    // No slot ever exceeds the largest LSN written.
    assert!(map
        .slots()
        .iter()
        .all(|s| s.load(Ordering::Relaxed) <= u64::from(per_thread) + 1));
}
