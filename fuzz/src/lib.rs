//! What the `map_delta` target and the seed writer (`examples/write_seeds.rs`)
//! must agree on: a delta record only applies to the base whose nonce and
//! size it names, so seeds are worth something only if they continue the
//! very base the target builds from the same configuration bytes.

use std::sync::atomic::Ordering;

use ptrack_core::mapfile::{write_map, MapFileMeta};
use ptrack_core::{Fork, Lsn, LsnMap, OwnedLsnMap, RelFileKey};

pub const SYSID: u64 = 7_300_000_000_000_000_001;
/// Fixed rather than random as `flush_map` makes it, so that records in the
/// corpus keep naming the base across runs.
pub const BASE_NONCE: u64 = 0x5EED_0000_DE17_A001;
pub const BASE_INIT_LSN: Lsn = Lsn(0x100);
pub const BASE_REDO: Lsn = Lsn(0x5000);
pub const BASE_WAL_TRACKED_THROUGH: Lsn = Lsn(0x4F00);
pub const BASE_SIDE_FORKS_FROM: Lsn = Lsn(0x4000);
pub const DATA_CHECKSUM_VERSION: u32 = 1;

/// `map_delta`'s input: these bytes, then what follows the base's full
/// part in the map file, the delta records (also read as marks by the round
/// trip).
pub const CONFIG_LEN: usize = 4;
/// Byte 0 of the configuration.
pub mod flags {
    /// Rewrite every record's CRC, so that mutations reach the checks after
    /// it.
    pub const RESEAL: u8 = 1;
    /// Also rewrite every record's nonce and offset before resealing: a
    /// mutation that changes a record's length would otherwise leave every
    /// later record at the wrong offset.
    pub const FIX_HEADERS: u8 = 2;
    /// A WAL-mode base (and round trip): never stale, whatever the REDO.
    pub const WAL_MODE: u8 = 4;
    /// Damage one byte of the base's words: the load must refuse the base
    /// and leave nothing of the delta in the map either.
    pub const DAMAGE_BASE: u8 = 8;
    /// Also flush a live map to disk and read it back.
    pub const ROUND_TRIP: u8 = 16;
}

/// Byte 1: the base's slot count, small so that runs often reach its end.
pub fn delta_slot_count(config: &[u8]) -> usize {
    1 + usize::from(config[1])
}

/// Byte 2: pg_control's latest checkpoint REDO, on both sides of the base's.
pub fn latest_redo(config: &[u8]) -> Lsn {
    Lsn(0x4000 + u64::from(config[2]) * 0x80)
}

/// Byte 3: the round trip's slot count. Never below 64 slots (2,128 bytes
/// of file): the delta records may take up to half the full part, and a
/// smaller map would have every flush write a full one, leaving the delta path
/// untested.
pub fn round_trip_slot_count(config: &[u8]) -> usize {
    64 * (1 + usize::from(config[3]))
}

/// The round trip reads the input in groups of this many bytes: relation,
/// block (2 bytes, little-endian), control (the `ctl` bits below).
pub const MARK_LEN: usize = 4;
pub mod ctl {
    /// Flush after this mark.
    pub const FLUSH: u8 = 0x80;
    /// Record a cut at the block number instead of marking it: the cut
    /// table's words are in the map and its delta too.
    pub const CUT: u8 = 0x40;
    /// That flush fails at its first chunk.
    pub const FAIL: u8 = 0x20;
}

pub fn relation(index: u8) -> RelFileKey {
    RelFileKey {
        tablespace: 1663,
        database: 5,
        relfilenode: 16_384 + u32::from(index),
        fork: Fork::Main,
    }
}

pub struct Base {
    /// The base's map, its dirty bits clear: what a server holds right
    /// after the full write.
    pub map: OwnedLsnMap,
    pub meta: MapFileMeta,
    /// The full part of the map file.
    pub image: Vec<u8>,
}

/// The base for `map_delta`: a few slots set, one cut in the cut table (so
/// that its words are not all zero), written by the core's writer.
pub fn base(slot_count: usize, wal: bool) -> Base {
    let map = OwnedLsnMap::new(slot_count);
    let view = map.view();
    let slots = (0..slot_count as u64).map(|i| if i % 3 == 0 { 0x5000 + 0x11 * i } else { 0 });
    view.load(
        BASE_INIT_LSN,
        slots.chain(std::iter::repeat(0)).take(view.words().len()),
    );
    let _ = view.record_cut(&relation(0), 7, Lsn(0x4800));
    if !wal {
        view.track_side_forks_from(BASE_SIDE_FORKS_FROM);
    }
    view.dirty_regions().take_all();
    let meta = MapFileMeta {
        system_identifier: SYSID,
        slot_count: slot_count as u64,
        init_lsn: view.init_lsn(),
        checkpoint_redo: BASE_REDO,
        data_checksum_version: DATA_CHECKSUM_VERSION,
        wal_tracked_through: if wal {
            BASE_WAL_TRACKED_THROUGH
        } else {
            Lsn::INVALID
        },
        base_nonce: BASE_NONCE,
        side_forks_tracked_from: view.side_forks_tracked_from(),
    };
    let mut image = Vec::new();
    write_map(&mut image, &meta, view.words()).expect("writing to memory");
    Base { map, meta, image }
}

pub fn words_of(map: &LsnMap<'_>) -> Vec<u64> {
    map.words()
        .iter()
        .map(|word| word.load(Ordering::Relaxed))
        .collect()
}
