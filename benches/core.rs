//! Micro-benchmarks of ptrack's pure core: the hot path (marking), the
//! backup-side path (lookups and the per-segment walk), the checkpoint path
//! (map flush with CRC, map verification at start), and the WAL decoder a
//! tracker following an unpatched server's WAL runs on every record.
//!
//! `cargo bench -p ptrack-core --bench core`; results are summarised in
//! benches/README.md.

use std::fs;
use std::hint::black_box;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ptrack_core::mapfile::{self, Expectation, MapFileMeta, TrackingMode};
use ptrack_core::wal::{record_effects, SegmentDirSource, WalFormat, WalReader};
use ptrack_core::walk::{self, Layout};
use ptrack_core::{Fork, Lsn, OwnedLsnMap, RelFileKey};

const MB: usize = 1024 * 1024;

fn relation(relfilenode: u32) -> RelFileKey {
    RelFileKey {
        tablespace: 1663,
        database: 5,
        relfilenode,
        fork: Fork::Main,
    }
}

fn map_of(megabytes: usize) -> OwnedLsnMap {
    OwnedLsnMap::new(megabytes * MB / 8)
}

/// Marking one block: what every md write and extend costs.
fn marking(c: &mut Criterion) {
    let mut group = c.benchmark_group("mark");
    group.throughput(Throughput::Elements(1));
    for megabytes in [64, 1024] {
        let owned = map_of(megabytes);
        let map = owned.view();
        let file = relation(16384);
        let mut block = 0u32;
        let mut lsn = 1u64;
        group.bench_function(format!("one thread, {megabytes} MB map"), |b| {
            b.iter(|| {
                block = block.wrapping_add(7919) % 10_000_000;
                lsn += 1;
                map.mark(black_box(&file.block(block)), Lsn(lsn));
            })
        });
    }
    // Two threads marking into one shared map, as two backends would.
    let owned = map_of(64);
    let map = owned.view();
    group.bench_function("two threads, 64 MB map, per mark", |b| {
        b.iter_custom(|iterations| {
            let per_thread = iterations.div_ceil(2);
            let start = Instant::now();
            std::thread::scope(|scope| {
                for thread in 0..2u32 {
                    scope.spawn(move || {
                        let file = relation(20000 + thread);
                        for i in 0..per_thread {
                            map.mark(&file.block((i as u32).wrapping_mul(7919)), Lsn(i + 1));
                        }
                    });
                }
            });
            // Two threads did `iterations` marks in this wall time.
            start.elapsed()
        })
    });
    group.finish();
}

/// Looking a block up, in a map where 1 % of a 64 GB cluster's blocks changed.
fn lookups(c: &mut Criterion) {
    let owned = map_of(64);
    let map = owned.view();
    map.start_tracking_at(Lsn(1));
    let blocks = 8 * MB as u32; // 64 GB of 8 kB blocks
    for block in (0..blocks).step_by(100) {
        map.mark(&relation(16384).block(block), Lsn(1000));
    }
    let mut group = c.benchmark_group("lookup");
    group.throughput(Throughput::Elements(1));
    let query = map.file_query(&relation(16384), Lsn(500));
    let mut block = 0u32;
    group.bench_function("changed_since, 1% changed, 64 MB map", |b| {
        b.iter(|| {
            block = block.wrapping_add(7919) % blocks;
            black_box(query.changed(block))
        })
    });
    group.finish();
    // A run of consecutive blocks, as the walk asks: one by one against the
    // batched, prefetching walk, side by side (per block).
    let mut group = c.benchmark_group("lookup run");
    let run = 131_072u32; // one 1 GB segment
    group.throughput(Throughput::Elements(u64::from(run)));
    for (name, batched) in [("one by one", false), ("batched with prefetch", true)] {
        group.bench_function(format!("{name}, 1% changed, 64 MB map"), |b| {
            let mut first = 0u32;
            b.iter(|| {
                first = (first + run) % (blocks - run);
                let mut changed = 0u32;
                if batched {
                    query.for_each_changed(first, run, |_| changed += 1);
                } else {
                    changed = (first..first + run).filter(|&b| query.changed(b)).count() as u32;
                }
                black_box(changed)
            })
        });
    }
    group.finish();
}

/// Writing the map with its CRC (every checkpoint) and verifying it (every
/// start), per byte of map.
fn flush_and_verify(c: &mut Criterion) {
    let megabytes = 256;
    let owned = map_of(megabytes);
    let map = owned.view();
    for block in 0..1_000_000u32 {
        map.mark(&relation(1).block(block), Lsn(u64::from(block) + 1));
    }
    let meta = MapFileMeta {
        system_identifier: 1,
        slot_count: map.slot_count() as u64,
        init_lsn: Lsn(1),
        checkpoint_redo: Lsn(1),
        data_checksum_version: 1,
        wal_tracked_through: Lsn::INVALID,
        base_nonce: 1,
        side_forks_tracked_from: Lsn::INVALID,
    };
    let mut group = c.benchmark_group("map file");
    group.throughput(Throughput::Bytes((megabytes * MB) as u64));
    group.sample_size(10);
    group.bench_function(format!("write with CRC, {megabytes} MB map"), |b| {
        b.iter(|| mapfile::write_map(&mut io::sink(), &meta, map.words()).unwrap())
    });
    let mut image = Vec::new();
    mapfile::write_map(&mut image, &meta, map.words()).unwrap();
    let expect = Expectation {
        system_identifier: 1,
        slot_count: meta.slot_count,
        latest_checkpoint_redo: Lsn(1),
        data_checksum_version: 1,
        backup_label_present: false,
        mode: TrackingMode::Hooks,
    };
    let target = map_of(megabytes);
    group.bench_function(format!("verify and load, {megabytes} MB map"), |b| {
        b.iter(|| {
            let verified = mapfile::verify(&image[..], &expect).unwrap();
            target
                .view()
                .load(verified.meta().init_lsn, verified.words());
        })
    });
    // What a start does now: the header first, then the CRC on the way in.
    group.bench_function(format!("one-pass load, {megabytes} MB map"), |b| {
        b.iter(|| {
            let file = mapfile::HeaderVerifiedMapFile::new(&image[..], &expect).unwrap();
            file.load_into(&target.view()).unwrap();
        })
    });
    group.finish();
}

struct SyntheticDataDir(PathBuf);

impl Drop for SyntheticDataDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A data directory of `databases` × `files_per_db` relation files of
/// `blocks_per_file` blocks each, sparse so it costs no disk.
fn synthetic_data_dir(databases: u32, files_per_db: u32, blocks_per_file: u64) -> SyntheticDataDir {
    let root = std::env::temp_dir().join(format!("ptrack-bench-pgdata-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(root.join("global")).unwrap();
    for db in 0..databases {
        let dir = root.join(format!("base/{}", 16384 + db));
        fs::create_dir_all(&dir).unwrap();
        for file in 0..files_per_db {
            let f = fs::File::create(dir.join(format!("{}", 20000 + file))).unwrap();
            f.set_len(blocks_per_file * 8192).unwrap();
        }
    }
    SyntheticDataDir(root)
}

/// The backup side: walking a data directory and building every segment's
/// page map, with 1 % of the blocks changed.
fn pagemapset_walk(c: &mut Criterion) {
    let layout = Layout {
        block_size: 8192,
        segment_blocks: 131072,
        tablespace_version_dir: "PG_17_0".into(),
    };
    let (databases, files, blocks) = (4, 250, 1024u64); // 1000 files, 8 GB
    let data_dir = synthetic_data_dir(databases, files, blocks);
    let owned = map_of(64);
    let map = owned.view();
    map.start_tracking_at(Lsn(1));
    for db in 0..databases {
        for file in 0..files {
            let key = RelFileKey {
                tablespace: 1663,
                database: 16384 + db,
                relfilenode: 20000 + file,
                fork: Fork::Main,
            };
            for block in (0..blocks as u32).step_by(100) {
                map.mark(&key.block(block), Lsn(1000));
            }
        }
    }
    let total_blocks = u64::from(databases) * u64::from(files) * blocks;
    let mut group = c.benchmark_group("pagemapset");
    group.throughput(Throughput::Elements(total_blocks));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("walk 8 GB in 1000 files, 1% changed", |b| {
        b.iter_batched(
            || (),
            |()| {
                let files = walk::segment_files(Path::new(&data_dir.0), &layout).unwrap();
                let changed: u64 = files
                    .iter()
                    .filter_map(|f| walk::segment_pagemap(&map, f, Lsn(500), &layout))
                    .map(|p| p.pagecount)
                    .sum();
                assert!(changed >= total_blocks / 100);
                changed
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

/// Decoding real WAL (the PostgreSQL 17 fixture: uncompressed full-page
/// images, heap and index records) and listing each record's effects, per
/// byte of WAL read. The segment files come from the page cache.
fn wal_decode(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wal/pg17");
    let conf = fs::read_to_string(dir.join("fixture.conf")).unwrap();
    let setting = |key: &str| {
        conf.lines()
            .filter_map(|line| line.split_once(" = "))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.to_owned())
            .unwrap()
    };
    let segment_size: u64 = setting("segment_size").parse().unwrap();
    let format = WalFormat::for_major(setting("major").parse().unwrap(), segment_size).unwrap();
    let (start, end): (Lsn, Lsn) = (
        setting("start").parse().unwrap(),
        setting("end").parse().unwrap(),
    );
    let wal_bytes: u64 = fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap())
        .filter(|entry| entry.file_name().len() == 24)
        .map(|entry| entry.metadata().unwrap().len())
        .sum();
    let mut group = c.benchmark_group("wal_decode");
    group.throughput(Throughput::Bytes(wal_bytes));
    group.bench_function("PostgreSQL 17 fixture, records and effects", |b| {
        b.iter(|| {
            let source = SegmentDirSource::new(dir.clone(), format, 1);
            let mut reader = WalReader::find_first_record_from(source, format, start, end).unwrap();
            let mut effects = 0usize;
            while let Some(record) = reader.next_record(end).unwrap() {
                effects += record_effects(&record).len();
            }
            assert!(effects > 0);
            black_box(effects)
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    marking,
    lookups,
    flush_and_verify,
    pagemapset_walk,
    wal_decode
);
criterion_main!(benches);
