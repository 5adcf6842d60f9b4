//! The LSN map's slot layout, side by side: today's two independent slots
//! against layouts that put both of a block's slots in one 64-byte cache line
//! (the open issue's item 4, "one cache miss per mark"), for mark cost, lookup
//! cost, false-positive rate at the sizing rule and flush bytes.
//!
//! `cargo bench -p ptrack-core --bench layout`. Under `cargo bench` it first
//! prints the simulated tables (false positives, flush regions) as markdown,
//! then criterion times marks and lookups. Results: benches/results/layout-*.md.
//!
//! Every layout works over a plain `Vec<AtomicU64>` with the same `raise` as
//! core/src/map.rs. Today's layout calls the shipped `slot_pair` on the shipped
//! block hashes, and the shipped `LsnMap::mark` is timed alongside it, as are
//! two references: the hashing alone, and the raise of one slot only (the
//! floor of any layout with one miss per mark).
//!
//! The layouts:
//! - `today`: `slot_pair(hash, slot_count)`, two independent slots;
//! - `one-line`: the line (8 slots) from the block's hash, two distinct slots
//!   within it from other bits of the same hash;
//! - `clustered-8`: the line from the hash of (relation, block / 8), so 8
//!   neighbouring blocks share a line; the slots within it from the block's hash;
//! - `clustered-64`: the 512-byte region (8 lines) from the hash of
//!   (relation, block / 64), the line within it from block / 8 mod 8, the slots
//!   within the line from the block's hash: 64 neighbouring blocks share a
//!   flush region, 8 a line.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{criterion_group, BenchmarkGroup, Criterion, Throughput};
use ptrack_core::block::{slot_pair, BlockHasher};
use ptrack_core::{Fork, Lsn, OwnedLsnMap, RelFileKey};

const MB: usize = 1024 * 1024;
/// Slots per 64-byte cache line.
const LINE: usize = 8;
/// Slots per 512-byte flush region.
const REGION: usize = 64;
/// Blocks of 8 kB per byte of map under the sizing rule (map ≈ data / 1000).
const BLOCKS_PER_MAP_BYTE: f64 = 1000.0 / 8192.0;

/// Where a layout puts a block's two slots.
trait Layout {
    const NAME: &'static str;

    /// The slots of `block` of the fork `file` hashes, in a map of
    /// `slot_count` slots (a multiple of [`REGION`]).
    fn slots(file: &BlockHasher, block: u32, slot_count: usize) -> (usize, usize);

    /// The expected false-positive rate of an unmarked block, if derived.
    fn theory(case: &Case) -> Option<f64>;
}

/// Lemire's multiply-shift reduction of `hash` into `0..count`, as `slot_pair` does.
#[inline(always)]
fn reduce(hash: u64, count: usize) -> usize {
    ((u128::from(hash) * count as u128) >> 64) as usize
}

/// Two distinct slots of one line from the low 19 bits of `hash` (a line
/// index taken by [`reduce`] depends on its high bits).
#[inline(always)]
fn within_line(hash: u64) -> (usize, usize) {
    let first = (hash & 7) as usize;
    // 1..=7 from 16 further bits by multiply-shift: never the first slot again.
    let step = 1 + ((((hash >> 3) & 0xffff) * 7) >> 16) as usize;
    (first, (first + step) % LINE)
}

/// The key whose hash picks the line of a group of 8 blocks (clustered-8) and
/// the region of a group of 64 (clustered-64): block numbers from 2^31 up,
/// beyond every block this bench uses, so no block shares a group's hash.
const GROUP8_KEY: u32 = 1 << 31;
const GROUP64_KEY: u32 = 3 << 30;

struct Today;
struct OneLine;
struct Clustered8;
struct Clustered64;

impl Layout for Today {
    const NAME: &'static str = "today";

    #[inline(always)]
    fn slots(file: &BlockHasher, block: u32, slot_count: usize) -> (usize, usize) {
        slot_pair(file.hash(block), slot_count)
    }

    /// A slot is raised with probability q = 1 − e^(−2k/m); a false positive
    /// needs both: q². The hash scatters runs, so this holds for any workload.
    fn theory(case: &Case) -> Option<f64> {
        let q = 1.0 - (-2.0 * case.marked / case.slots).exp();
        Some(q * q)
    }
}

/// The false-positive rate of an unmarked block whose line holds j marks,
/// each a uniform pair of its 8 slots, given the generating function g of j:
/// its slot x is missed by one mark with probability 21/28 = 3/4, both of its
/// slots with 15/28, so P(both raised | j) = 1 − 2 (3/4)^j + (15/28)^j.
fn one_line_fp(pgf: impl Fn(f64) -> f64) -> f64 {
    1.0 - 2.0 * pgf(0.75) + pgf(15.0 / 28.0)
}

impl Layout for OneLine {
    const NAME: &'static str = "one-line";

    #[inline(always)]
    fn slots(file: &BlockHasher, block: u32, slot_count: usize) -> (usize, usize) {
        let hash = file.hash(block);
        let line = reduce(hash, slot_count / LINE) * LINE;
        let (first, second) = within_line(hash);
        (line + first, line + second)
    }

    /// j is Poisson with mean λ = 8k/m (k marks over m/8 lines), g(x) = e^(−λ(1−x)):
    /// 1 − 2(1−q) + (1−q)^(13/7) ≈ q/7 for small q, with q as today's.
    fn theory(case: &Case) -> Option<f64> {
        let lambda = LINE as f64 * case.marked / case.slots;
        Some(one_line_fp(|x| (-lambda * (1.0 - x)).exp()))
    }
}

/// Clustered layouts with changes at random: j is the marks of the block's 7
/// neighbours in its group of 8, Binomial(7, f), plus those of the other groups
/// on its line, Poisson(N/m) many, Binomial(8, f) each. Not derived for runs.
fn clustered_theory(case: &Case) -> Option<f64> {
    if !case.random {
        return None;
    }
    let f = case.marked / case.blocks;
    let groups_per_line = case.blocks / case.slots;
    Some(one_line_fp(|x| {
        let one = 1.0 - f + f * x;
        one.powi(7) * (groups_per_line * (one.powi(8) - 1.0)).exp()
    }))
}

impl Layout for Clustered8 {
    const NAME: &'static str = "clustered-8";

    #[inline(always)]
    fn slots(file: &BlockHasher, block: u32, slot_count: usize) -> (usize, usize) {
        let line = reduce(file.hash(GROUP8_KEY | block >> 3), slot_count / LINE) * LINE;
        let (first, second) = within_line(file.hash(block));
        (line + first, line + second)
    }

    fn theory(case: &Case) -> Option<f64> {
        clustered_theory(case)
    }
}

impl Layout for Clustered64 {
    const NAME: &'static str = "clustered-64";

    #[inline(always)]
    fn slots(file: &BlockHasher, block: u32, slot_count: usize) -> (usize, usize) {
        let region = reduce(file.hash(GROUP64_KEY | block >> 6), slot_count / REGION);
        let line = region * REGION + ((block as usize >> 3) % (REGION / LINE)) * LINE;
        let (first, second) = within_line(file.hash(block));
        (line + first, line + second)
    }

    /// Each line of a region takes one group of 8 from every group of 64 on
    /// the region: the same distribution of j as clustered-8.
    fn theory(case: &Case) -> Option<f64> {
        clustered_theory(case)
    }
}

type SlotsFn = fn(&BlockHasher, u32, usize) -> (usize, usize);
type TheoryFn = fn(&Case) -> Option<f64>;

/// The layouts, for the simulations (which need no inlining).
const LAYOUTS: [(&str, SlotsFn, TheoryFn); 4] = [
    (Today::NAME, Today::slots, Today::theory),
    (OneLine::NAME, OneLine::slots, OneLine::theory),
    (Clustered8::NAME, Clustered8::slots, Clustered8::theory),
    (Clustered64::NAME, Clustered64::slots, Clustered64::theory),
];

/// The algorithm of `raise` in core/src/map.rs: a relaxed load first, then
/// compare-exchange (Release on success) while the slot is below `lsn`.
#[inline(always)]
fn raise(slot: &AtomicU64, lsn: u64) {
    let mut current = slot.load(Ordering::Relaxed);
    while current < lsn {
        match slot.compare_exchange_weak(current, lsn, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return,
            Err(actual) => current = actual,
        }
    }
}

/// Whether both slots of `block` are at least `since`, the second loaded only
/// if the first passes (as `LsnMap`'s lookups do).
#[inline(always)]
fn reaches<L: Layout>(map: &[AtomicU64], file: &BlockHasher, block: u32, since: u64) -> bool {
    let (first, second) = L::slots(file, block, map.len());
    map[first].load(Ordering::Relaxed) >= since && map[second].load(Ordering::Relaxed) >= since
}

/// A map of `slot_count` zero slots with every page written, so that no timing
/// includes first-touch page faults.
fn zeroed_map(slot_count: usize) -> Vec<AtomicU64> {
    let map: Vec<AtomicU64> = (0..slot_count).map(|_| AtomicU64::new(0)).collect();
    touch(&map);
    map
}

/// Writes every slot. The collect above may become a calloc, whose pages the
/// kernel maps only on first touch; `black_box` keeps the compiler from
/// assuming the slots are still zero and dropping these stores.
fn touch(slots: &[AtomicU64]) {
    for slot in black_box(slots) {
        slot.store(0, Ordering::Relaxed);
    }
}

/// SplitMix64: a fast, well-mixed stream of 64-bit numbers from a seed.
struct Rng(u64);

impl Rng {
    #[inline(always)]
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    #[inline(always)]
    fn below(&mut self, count: usize) -> usize {
        reduce(self.next(), count)
    }
}

fn relation(relfilenode: u32) -> RelFileKey {
    RelFileKey {
        tablespace: 1663,
        database: 5,
        relfilenode,
        fork: Fork::Main,
    }
}

/// Relations of a simulated data directory: two tablespaces, four databases.
fn relation_hashers(count: usize) -> Vec<BlockHasher> {
    (0..count as u32)
        .map(|i| {
            RelFileKey {
                tablespace: if i % 8 == 7 { 16_500 } else { 1663 },
                database: 16_384 + i % 4,
                relfilenode: 16_384 + 3 * i,
                fork: Fork::Main,
            }
            .hasher()
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Timings

/// One mark of a random block of one of 4096 relations (block numbers below
/// 2^20), the hash computed from the relation's key as `LsnMap::mark` does,
/// at an LSN above every slot's so that every raise compare-exchanges.
fn bench_mark<L: Layout>(
    group: &mut BenchmarkGroup<WallTime>,
    map: &[AtomicU64],
    lsn: &mut u64,
    megabytes: usize,
) {
    let mut rng = Rng(0x6d61_726b);
    group.bench_function(format!("{}, {megabytes} MB map", L::NAME), |b| {
        b.iter(|| {
            let r = rng.next();
            let file = relation(16_384 + (r & 4095) as u32);
            let block = (r >> 44) as u32;
            *lsn += 1;
            let (first, second) = L::slots(&file.hasher(), block, map.len());
            raise(&map[first], *lsn);
            raise(&map[second], *lsn);
        })
    });
}

fn marking(c: &mut Criterion) {
    let mut group = c.benchmark_group("layout mark");
    group.throughput(Throughput::Elements(1));
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    for megabytes in [64, 1024] {
        group.sample_size(if megabytes > 64 { 10 } else { 50 });
        let slot_count = megabytes * MB / 8;
        let map = zeroed_map(slot_count);
        let mut lsn = 1u64;
        bench_mark::<Today>(&mut group, &map, &mut lsn, megabytes);
        bench_mark::<OneLine>(&mut group, &map, &mut lsn, megabytes);
        bench_mark::<Clustered8>(&mut group, &map, &mut lsn, megabytes);
        bench_mark::<Clustered64>(&mut group, &map, &mut lsn, megabytes);
        // Two references. The hash and slot arithmetic alone (today's), no
        // map access: what any layout pays before touching memory.
        let mut rng = Rng(0x6d61_726b);
        group.bench_function(
            format!("reference: hash and slots only, {megabytes} MB map"),
            |b| {
                b.iter(|| {
                    let r = rng.next();
                    let file = relation(16_384 + (r & 4095) as u32);
                    black_box(Today::slots(&file.hasher(), (r >> 44) as u32, slot_count))
                })
            },
        );
        // One raise of one slot: the floor of any layout with one miss per mark.
        group.bench_function(
            format!("reference: one slot raised, {megabytes} MB map"),
            |b| {
                b.iter(|| {
                    let r = rng.next();
                    let file = relation(16_384 + (r & 4095) as u32);
                    let (first, _) = Today::slots(&file.hasher(), (r >> 44) as u32, slot_count);
                    lsn += 1;
                    raise(&map[first], lsn);
                })
            },
        );
        drop(map);
        // The shipped map, same blocks: checks that `today` measures what ships.
        let owned = OwnedLsnMap::new(slot_count);
        let shipped = owned.view();
        touch(shipped.words());
        let mut rng = Rng(0x6d61_726b);
        let mut lsn = 1u64;
        group.bench_function(format!("shipped LsnMap::mark, {megabytes} MB map"), |b| {
            b.iter(|| {
                let r = rng.next();
                let file = relation(16_384 + (r & 4095) as u32);
                lsn += 1;
                shipped.mark(&file.block((r >> 44) as u32), Lsn(lsn));
            })
        });
    }
    group.finish();
}

/// `changed since` of random blocks of one relation as large as the map's
/// sizing rule allows, 1 % of them (random, with repeats) marked.
fn bench_lookup<L: Layout>(
    group: &mut BenchmarkGroup<WallTime>,
    map: &[AtomicU64],
    megabytes: usize,
) {
    for slot in map {
        slot.store(0, Ordering::Relaxed);
    }
    let blocks = (map.len() as f64 * 8.0 * BLOCKS_PER_MAP_BYTE) as usize;
    let file = relation(16_384).hasher();
    let mut rng = Rng(0x6c6f_6f6b);
    for _ in 0..blocks / 100 {
        let (first, second) = L::slots(&file, rng.below(blocks) as u32, map.len());
        raise(&map[first], 1000);
        raise(&map[second], 1000);
    }
    let mut rng = Rng(0x7570);
    group.bench_function(
        format!("{}, 1% changed, {megabytes} MB map", L::NAME),
        |b| b.iter(|| black_box(reaches::<L>(map, &file, rng.below(blocks) as u32, 500))),
    );
}

fn lookups(c: &mut Criterion) {
    let mut group = c.benchmark_group("layout lookup");
    group.throughput(Throughput::Elements(1));
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    for megabytes in [64, 1024] {
        group.sample_size(if megabytes > 64 { 10 } else { 50 });
        let map = zeroed_map(megabytes * MB / 8);
        bench_lookup::<Today>(&mut group, &map, megabytes);
        bench_lookup::<OneLine>(&mut group, &map, megabytes);
        bench_lookup::<Clustered8>(&mut group, &map, megabytes);
        bench_lookup::<Clustered64>(&mut group, &map, megabytes);
    }
    group.finish();
}

// ---------------------------------------------------------------------------
// Simulations

/// Blocks per relation in the simulated data directories (4096 × 8 kB = 32 MB).
const RELATION_BLOCKS: usize = 4096;

/// How the changed blocks are chosen.
#[derive(Clone, Copy)]
enum Workload {
    /// Distinct blocks at random.
    Random,
    /// Runs of this many consecutive blocks of a relation, each starting at a
    /// random block (not aligned), cut at the relation's end; runs may overlap.
    Runs(usize),
}

impl Workload {
    fn name(self) -> String {
        match self {
            Workload::Random => "random".into(),
            Workload::Runs(len) => format!("runs of {len}"),
        }
    }
}

/// The changed blocks: a bitmap over block indexes (relation × RELATION_BLOCKS
/// + block) and their list, in marking order.
struct Changed {
    bits: Vec<u64>,
    list: Vec<usize>,
}

impl Changed {
    fn contains(&self, index: usize) -> bool {
        self.bits[index / 64] >> (index % 64) & 1 == 1
    }

    /// Adds `index` if new; whether `wanted` blocks are in now.
    fn add(&mut self, index: usize, wanted: usize) -> bool {
        if !self.contains(index) {
            self.bits[index / 64] |= 1 << (index % 64);
            self.list.push(index);
        }
        self.list.len() == wanted
    }

    fn choose(workload: Workload, relations: usize, wanted: usize, rng: &mut Rng) -> Changed {
        let blocks = relations * RELATION_BLOCKS;
        let mut changed = Changed {
            bits: vec![0; blocks.div_ceil(64)],
            list: Vec::with_capacity(wanted),
        };
        match workload {
            Workload::Random => while !changed.add(rng.below(blocks), wanted) {},
            Workload::Runs(len) => 'runs: loop {
                let first = rng.below(blocks);
                let end = (first + len).min((first / RELATION_BLOCKS + 1) * RELATION_BLOCKS);
                for index in first..end {
                    if changed.add(index, wanted) {
                        break 'runs;
                    }
                }
            },
        }
        changed
    }
}

/// What a theory needs: k marked blocks of N in a map of m slots.
struct Case {
    marked: f64,
    blocks: f64,
    slots: f64,
    random: bool,
}

fn percent(rate: f64) -> String {
    if rate >= 0.01 {
        format!("{:.2} %", rate * 100.0)
    } else {
        format!("{:.4} %", rate * 100.0)
    }
}

/// The false-positive rate at the sizing rule: a 64 GB data directory (2048
/// relations of 4096 blocks), m = N × 8192 / 1000 / 8 slots (rounded down to
/// whole regions), a fraction of the blocks marked at LSN 2 in a zeroed map,
/// then every unmarked block asked `changed since 2`.
fn false_positive_table() {
    let relations = 2048;
    let blocks = relations * RELATION_BLOCKS;
    let slot_count = (blocks as f64 / BLOCKS_PER_MAP_BYTE / 8.0) as usize / REGION * REGION;
    let hashers = relation_hashers(relations);
    println!(
        "\n### False positives at the sizing rule\n\n{blocks} blocks (64 GB) in {relations} \
         relations of {RELATION_BLOCKS}, {slot_count} slots ({:.1} MB, {:.3} slots per block); \
         changed blocks marked at LSN 2, every unchanged block asked `changed since 2`. \
         q = fraction of nonzero slots. Theory from k and m (see benches/layout.rs).\n",
        (slot_count * 8) as f64 / 1e6,
        slot_count as f64 / blocks as f64,
    );
    println!("| workload | changed | layout | q | false positives / unchanged | simulated | theory | × today (simulated) |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut slots = vec![0u64; slot_count];
    for workload in [Workload::Random, Workload::Runs(8), Workload::Runs(64)] {
        for fraction in [0.001, 0.01, 0.1, 0.3] {
            let wanted = (blocks as f64 * fraction) as usize;
            let mut rng = Rng(0x6670 ^ wanted as u64);
            let changed = Changed::choose(workload, relations, wanted, &mut rng);
            let case = Case {
                marked: wanted as f64,
                blocks: blocks as f64,
                slots: slot_count as f64,
                random: matches!(workload, Workload::Random),
            };
            let mut today_rate = None;
            for (name, slots_of, theory) in LAYOUTS {
                slots.fill(0);
                let pair = |index: usize| {
                    let block = (index % RELATION_BLOCKS) as u32;
                    slots_of(&hashers[index / RELATION_BLOCKS], block, slot_count)
                };
                for &index in &changed.list {
                    let (first, second) = pair(index);
                    slots[first] = slots[first].max(2);
                    slots[second] = slots[second].max(2);
                }
                let nonzero = slots.iter().filter(|&&s| s != 0).count();
                let mut reported = 0usize;
                for index in (0..blocks).filter(|&i| !changed.contains(i)) {
                    let (first, second) = pair(index);
                    if slots[first] >= 2 && slots[second] >= 2 {
                        reported += 1;
                    }
                }
                let unchanged = blocks - wanted;
                let rate = reported as f64 / unchanged as f64;
                let today = *today_rate.get_or_insert(rate);
                println!(
                    "| {} | {} | {name} | {:.4} | {reported} / {unchanged} | {} | {} | {} |",
                    workload.name(),
                    percent(fraction),
                    nonzero as f64 / slot_count as f64,
                    percent(rate),
                    theory(&case).map_or("—".into(), percent),
                    if today > 0.0 {
                        format!("{:.2}", rate / today)
                    } else {
                        "—".into()
                    },
                );
            }
        }
    }
}

/// Flush regions of 512 bytes (64 slots) dirtied by marking 10,000 blocks in a
/// 1 GB map, the data directory at the sizing rule (1 TB: 32,000 relations).
fn flush_table() {
    let slot_count = 1024 * MB / 8;
    let relations = (slot_count as f64 * 8.0 * BLOCKS_PER_MAP_BYTE) as usize / RELATION_BLOCKS;
    let hashers = relation_hashers(relations);
    let marks = 10_000;
    println!(
        "\n### Flush regions\n\nMarking {marks} blocks in a 1 GB map ({} regions of 512 bytes), \
         {relations} relations of {RELATION_BLOCKS} blocks: distinct regions dirtied.\n",
        slot_count / REGION
    );
    println!("| workload | layout | regions | bytes | × today |");
    println!("|---|---|---|---|---|");
    let mut dirty = vec![0u64; (slot_count / REGION).div_ceil(64)];
    for workload in [Workload::Random, Workload::Runs(8), Workload::Runs(64)] {
        let changed = Changed::choose(workload, relations, marks, &mut Rng(0x666c));
        let mut today = None;
        for (name, slots_of, _) in LAYOUTS {
            dirty.fill(0);
            let mut regions = 0usize;
            for &index in &changed.list {
                let file = &hashers[index / RELATION_BLOCKS];
                let (first, second) = slots_of(file, (index % RELATION_BLOCKS) as u32, slot_count);
                for region in [first / REGION, second / REGION] {
                    if dirty[region / 64] >> (region % 64) & 1 == 0 {
                        dirty[region / 64] |= 1 << (region % 64);
                        regions += 1;
                    }
                }
            }
            let today = *today.get_or_insert(regions);
            println!(
                "| {} | {name} | {regions} | {:.2} MB | {:.3} |",
                workload.name(),
                (regions * 512) as f64 / 1e6,
                regions as f64 / today as f64,
            );
        }
    }
}

criterion_group!(benches, marking, lookups);

fn main() {
    // Only under `cargo bench` (which passes --bench): `cargo test --benches`
    // runs this unoptimized, where the simulations would take minutes.
    if std::env::args().any(|arg| arg == "--bench") {
        let start = Instant::now();
        println!("## Simulations (benches/layout.rs)");
        false_positive_table();
        flush_table();
        println!(
            "\n(simulations took {:.0} s)\n",
            start.elapsed().as_secs_f64()
        );
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
