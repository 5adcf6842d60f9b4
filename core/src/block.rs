//! The identity of a relation block, and where it lives in the map.
//!
//! A block is named by (tablespace, database, relfilenode, fork, block number),
//! exactly as PostgreSQL's storage manager names it. One 64-bit hash of that
//! name picks the block's two slots. The hash is part of the map file format:
//! changing it requires a new [`crate::mapfile::FORMAT_VERSION`].

/// A relation fork, numbered as PostgreSQL's `ForkNumber`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fork {
    Main = 0,
    FreeSpace = 1,
    Visibility = 2,
    Init = 3,
}

impl Fork {
    pub const ALL: [Fork; 4] = [Fork::Main, Fork::FreeSpace, Fork::Visibility, Fork::Init];

    pub fn from_number(number: i32) -> Option<Fork> {
        Self::ALL.into_iter().find(|fork| *fork as i32 == number)
    }

    /// The suffix PostgreSQL appends to a relation file name for this fork.
    pub fn file_suffix(self) -> &'static str {
        match self {
            Fork::Main => "",
            Fork::FreeSpace => "_fsm",
            Fork::Visibility => "_vm",
            Fork::Init => "_init",
        }
    }

    /// Forks whose changes PostgreSQL does not reliably WAL-log.
    ///
    /// The free space map is never WAL-logged, and a visibility-map bit cleared
    /// by a heap change is not WAL-logged on the map page itself: a write of such
    /// a page whose mark is lost (after the last map flush, in a crash; or by a
    /// process killed between its write and its mark) is not replayed and so not
    /// marked again. These forks are answered block by block only where no mark
    /// can have been lost ([`crate::LsnMap::file_query`]), and reported in full
    /// otherwise, as PostgreSQL's own incremental backup does for the free space
    /// map. Both are tiny (one page per ~4000 and ~32000 heap pages).
    pub fn not_wal_logged(self) -> bool {
        matches!(self, Fork::FreeSpace | Fork::Visibility)
    }
}

/// One fork of one relation: everything of a block's name but its number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelFileKey {
    pub tablespace: u32,
    pub database: u32,
    pub relfilenode: u32,
    pub fork: Fork,
}

/// One block of one relation fork.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockKey {
    pub file: RelFileKey,
    pub block: u32,
}

const SEED: u64 = 0x7074_7261_636b_3234; // "ptrack24"
const BLOCK_MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;

/// The finalizer of MurmurHash3: a bijection on u64 with full avalanche.
#[inline(always)]
fn avalanche(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

impl RelFileKey {
    /// The hash of everything but the block number. A scan of one file computes
    /// it once and then only [`BlockHasher::hash`] per block.
    #[inline]
    pub fn hasher(&self) -> BlockHasher {
        let location = (u64::from(self.tablespace) << 32) | u64::from(self.database);
        let relation = (u64::from(self.relfilenode) << 32) | self.fork as u64;
        BlockHasher {
            prefix: avalanche(avalanche(SEED ^ location) ^ relation),
        }
    }

    /// A hash of the fork alone (that of a block number no block has), for
    /// tables keyed by fork ([`crate::cuts`]).
    #[inline]
    pub fn identity_hash(&self) -> u64 {
        self.hasher().hash(u32::MAX)
    }

    pub fn block(self, block: u32) -> BlockKey {
        BlockKey { file: self, block }
    }
}

/// Hashes the blocks of one relation fork.
#[derive(Clone, Copy, Debug)]
pub struct BlockHasher {
    prefix: u64,
}

impl BlockHasher {
    /// `avalanche` is a bijection, so distinct blocks of one file never share a hash.
    #[inline(always)]
    pub fn hash(&self, block: u32) -> u64 {
        avalanche(self.prefix ^ u64::from(block).wrapping_mul(BLOCK_MULTIPLIER))
    }
}

/// Salt of the keys that record where a relation fork was cut short or
/// created ([`crate::LsnMap::mark_cut`]): a different key space from blocks.
const CUT_SALT: u64 = 0x6375_745f_6c69_6d74; // "cut_limt"

impl BlockHasher {
    /// The key of the dyadic range `[index << level, (index + 1) << level)` of
    /// block numbers, for cut marks. It can equal a block's hash only by
    /// chance, which costs a false positive and nothing else.
    #[inline]
    pub fn cut_range_hash(&self, level: u32, index: u64) -> u64 {
        avalanche(
            self.prefix
                ^ CUT_SALT.rotate_left(level)
                ^ index.wrapping_mul(BLOCK_MULTIPLIER)
                ^ u64::from(level),
        )
    }
}

impl BlockKey {
    #[inline]
    pub fn hash(&self) -> u64 {
        self.file.hasher().hash(self.block)
    }
}

/// The two slots of a hash in a map of `slot_count` slots.
///
/// The first slot comes from the high half of the hash and the second from the
/// low half (by rotation), so the two are independent. Reduction is Lemire's
/// multiply-shift, which needs no division. `slot_count` must be non-zero.
#[inline(always)]
pub fn slot_pair(hash: u64, slot_count: usize) -> (usize, usize) {
    let reduce = |h: u64| ((u128::from(h) * slot_count as u128) >> 64) as usize;
    (reduce(hash), reduce(hash.rotate_left(32)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn key(relfilenode: u32, fork: Fork, block: u32) -> BlockKey {
        RelFileKey {
            tablespace: 1663,
            database: 5,
            relfilenode,
            fork,
        }
        .block(block)
    }

    #[test]
    fn fork_numbers_match_postgres() {
        assert_eq!(Fork::from_number(0), Some(Fork::Main));
        assert_eq!(Fork::from_number(1), Some(Fork::FreeSpace));
        assert_eq!(Fork::from_number(2), Some(Fork::Visibility));
        assert_eq!(Fork::from_number(3), Some(Fork::Init));
        assert_eq!(Fork::from_number(4), None);
        assert_eq!(Fork::from_number(-1), None);
    }

    #[test]
    fn every_part_of_the_name_changes_the_hash() {
        let base = key(16384, Fork::Main, 7);
        let variants = [
            BlockKey {
                file: RelFileKey {
                    tablespace: 1664,
                    ..base.file
                },
                ..base
            },
            BlockKey {
                file: RelFileKey {
                    database: 6,
                    ..base.file
                },
                ..base
            },
            BlockKey {
                file: RelFileKey {
                    relfilenode: 16385,
                    ..base.file
                },
                ..base
            },
            BlockKey {
                file: RelFileKey {
                    fork: Fork::Init,
                    ..base.file
                },
                ..base
            },
            BlockKey { block: 8, ..base },
        ];
        for variant in variants {
            assert_ne!(base.hash(), variant.hash(), "{variant:?}");
        }
    }

    #[test]
    fn hash_is_stable_across_builds() {
        // The hash is persisted with the map: this pins it to the file format.
        assert_eq!(key(16384, Fork::Main, 0).hash(), 0x548d_e0de_c4f9_8de2);
    }

    #[test]
    fn slots_are_in_range_and_spread() {
        let slot_count = 1000;
        let mut used = HashSet::new();
        for block in 0..10_000 {
            let (first, second) = slot_pair(key(1, Fork::Main, block).hash(), slot_count);
            assert!(first < slot_count && second < slot_count);
            used.insert(first);
            used.insert(second);
        }
        // 20000 draws into 1000 slots leave essentially none unused.
        assert!(
            used.len() > 990,
            "only {} of {slot_count} slots used",
            used.len()
        );
    }

    #[test]
    fn first_and_second_slot_are_independent() {
        let slot_count = 1 << 20;
        let same = (0..100_000)
            .filter(|&b| {
                let (first, second) = slot_pair(key(9, Fork::Main, b).hash(), slot_count);
                first == second
            })
            .count();
        assert!(same < 5, "{same} blocks had both slots equal");
    }
}
