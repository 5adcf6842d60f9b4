//! How an incremental backup stores one relation segment file: whole, or as
//! an `INCREMENTAL.` file with some blocks and a `truncation_block_length`.
//!
//! # Why `truncation_block_length` is the size measured before the query
//!
//! `pg_combinebackup` (and this tool's `restore`) rebuild a segment from the
//! newest incremental file: every block below its `truncation_block_length`
//! (call it T) that the file does not carry is taken from the newest older
//! backup that has it — and, for an older *full* file, only if that file is
//! long enough; blocks at or above T come only from the file itself. So each
//! block below T that is left out must have, now, the content the older
//! backups hold for it; and the older backups' own T does not matter.
//!
//! PostgreSQL computes T from the WAL summaries' "limit block" (the lowest
//! truncation since the parent). ptrack has no limit block: it tells which
//! blocks were written since the parent's start LSN P, as of the moment Q of
//! the `ptrack_get_pagemapset` call, taken after this backup's own start L.
//! Every write counts — extending a file, including `mdzeroextend`'s
//! unlogged zero pages, marks each new block; and in WAL mode a truncation
//! marks every block past the cut — so a block that is not reported and
//! existed at some moment between P and Q was neither written nor recreated
//! in [P, Q]: it has held the same bytes since before P, and the parent
//! chain holds those bytes (the parent read it after P).
//!
//! The tool therefore measures each file's size S0 *before* the query (but
//! after L) and uses T = S0 / BLCKSZ: every block below T existed at that
//! moment, so an unreported one is safe to take from older backups. Blocks
//! from S0 up to the size at copy time appeared after the measurement —
//! possibly after Q, where ptrack's answer says nothing about them, and
//! possibly as never-WAL-logged zero pages — so they are all carried in the
//! file, never taken from older backups (where a same-numbered block of a
//! relation truncated since could hold dead rows). Taking T from the size at
//! copy time instead would let such a block come from an old backup.
//!
//! A file shorter at copy time than S0 was truncated after L; its
//! `XLOG_SMGR_TRUNCATE` record is replayed from this backup's WAL, as
//! PostgreSQL's own T = max(size, limit block) relies on too. The changes
//! made after L to blocks below T are replayed from WAL (full-page writes are
//! forced during a backup), like the torn reads of any online copy.
//!
//! Files the parent does not have (new relations) are copied whole: the
//! reconstruction would find no older version. Files the newest backup does
//! not have (dropped relations) are not in the result, because both
//! `pg_combinebackup` and `restore` walk the newest backup.

use ptrack_core::Fork;

/// What the backup knows about one relation segment when it copies it.
#[derive(Clone, Debug)]
pub struct SegmentFacts<'a> {
    pub fork: Fork,
    /// The parent backup holds this file (whole or incremental).
    pub in_parent: bool,
    /// Bytes, measured after the backup started, before the pagemap query.
    pub size_before_query: u64,
    /// Bytes, measured when the file is opened for copying.
    pub size_now: u64,
    /// The segment's blocks ptrack reports changed since the parent's start.
    pub changed: &'a [u32],
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Method {
    Whole,
    Incremental {
        truncation_block_length: u32,
        /// Ascending, relative to the segment.
        blocks: Vec<u32>,
    },
}

/// Chooses how to store the segment. `block_size` is BLCKSZ, `segment_blocks`
/// RELSEG_SIZE.
pub fn choose(facts: &SegmentFacts<'_>, block_size: u32, segment_blocks: u32) -> Method {
    let block_size_64 = u64::from(block_size);
    // The free space map is not WAL-logged: PostgreSQL always copies it
    // whole, so does this tool (it is small). The init fork of an unlogged
    // relation is a page or two.
    if !facts.in_parent || matches!(facts.fork, Fork::FreeSpace | Fork::Init) {
        return Method::Whole;
    }
    // Odd sizes: something unusual is going on; the whole file is safe.
    // An empty file: an incremental file would be larger than it.
    let before = facts.size_before_query;
    if before == 0
        || before % block_size_64 != 0
        || before / block_size_64 > u64::from(segment_blocks)
    {
        return Method::Whole;
    }
    let truncation_block_length = (before / block_size_64) as u32;
    let blocks_now = (facts.size_now / block_size_64).min(u64::from(segment_blocks)) as u32;
    let mut blocks: Vec<u32> = facts
        .changed
        .iter()
        .copied()
        .filter(|&b| b < truncation_block_length.min(blocks_now))
        .collect();
    blocks.sort_unstable();
    blocks.dedup();
    blocks.extend(truncation_block_length..blocks_now);
    // As PostgreSQL: when 90% of the file would be sent anyway, send it
    // whole, which is simpler to restore.
    if blocks.len() as u64 * block_size_64 * 10 > facts.size_now.max(before) * 9 {
        return Method::Whole;
    }
    Method::Incremental {
        truncation_block_length,
        blocks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: u64 = 8192;

    fn facts(size_before: u64, size_now: u64, changed: &[u32]) -> SegmentFacts<'_> {
        SegmentFacts {
            fork: Fork::Main,
            in_parent: true,
            size_before_query: size_before * B,
            size_now: size_now * B,
            changed,
        }
    }

    fn incremental(t: u32, blocks: &[u32]) -> Method {
        Method::Incremental {
            truncation_block_length: t,
            blocks: blocks.to_vec(),
        }
    }

    #[test]
    fn unchanged_file_is_an_empty_incremental() {
        assert_eq!(
            choose(&facts(100, 100, &[]), 8192, 131072),
            incremental(100, &[])
        );
    }

    #[test]
    fn changed_blocks_are_carried() {
        assert_eq!(
            choose(&facts(100, 100, &[7, 3, 99]), 8192, 131072),
            incremental(100, &[3, 7, 99])
        );
    }

    #[test]
    fn growth_after_the_measurement_is_carried_whole() {
        // Blocks 100..104 appeared after the size was measured: carried even
        // though the pagemap does not name them.
        assert_eq!(
            choose(&facts(100, 104, &[5]), 8192, 131072),
            incremental(100, &[5, 100, 101, 102, 103])
        );
    }

    #[test]
    fn shrinking_keeps_the_measured_length() {
        // Truncated after the measurement: blocks past the end cannot be read
        // and are not listed; T stays, the WAL replays the truncation.
        assert_eq!(
            choose(&facts(100, 50, &[10, 60]), 8192, 131072),
            incremental(100, &[10])
        );
    }

    #[test]
    fn whole_copies() {
        let new_file = SegmentFacts {
            in_parent: false,
            ..facts(10, 10, &[])
        };
        assert_eq!(choose(&new_file, 8192, 131072), Method::Whole);
        let fsm = SegmentFacts {
            fork: Fork::FreeSpace,
            ..facts(10, 10, &[])
        };
        assert_eq!(choose(&fsm, 8192, 131072), Method::Whole);
        assert_eq!(choose(&facts(0, 0, &[]), 8192, 131072), Method::Whole);
        let odd = SegmentFacts {
            size_before_query: 100,
            ..facts(0, 0, &[])
        };
        assert_eq!(choose(&odd, 8192, 131072), Method::Whole);
        // Larger than a segment.
        assert_eq!(choose(&facts(65, 65, &[]), 8192, 64), Method::Whole);
        // 90% or more changed.
        let most: Vec<u32> = (0..91).collect();
        assert_eq!(choose(&facts(100, 100, &most), 8192, 131072), Method::Whole);
        let some: Vec<u32> = (0..90).collect();
        assert!(matches!(
            choose(&facts(100, 100, &some), 8192, 131072),
            Method::Incremental { .. }
        ));
    }

    #[test]
    fn growth_is_capped_at_the_segment_size() {
        assert_eq!(
            choose(&facts(60, 70, &[]), 8192, 64),
            incremental(60, &[60, 61, 62, 63])
        );
    }
}
