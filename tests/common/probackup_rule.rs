//! pg_probackup's restore rule applied to `ptrack-backup`'s chains: each
//! block from the newest backup that carries it, the file's length from the
//! newest backup alone ("if the file was truncated in an intermediate backup
//! … old blocks will be overwritten by new blocks from the next backup").
//! Stricter than `pg_combinebackup`, which also stops looking back at an
//! intermediate incremental file's truncation length: a block ptrack failed
//! to report that only that length papers over comes back stale here.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use super::BLCKSZ;

/// `INCREMENTAL_MAGIC` of PostgreSQL's incremental files.
const INCREMENTAL_MAGIC: u32 = 0xd3ae_1f0d;

/// One backup's copy of a relation segment file.
enum Stored {
    Whole(Vec<u8>),
    Incremental {
        /// The file's length at the backup, in blocks.
        blocks: usize,
        carried: BTreeMap<usize, Vec<u8>>,
    },
}

impl Stored {
    fn block(&self, b: usize) -> Option<&[u8]> {
        match self {
            Stored::Whole(bytes) => bytes.get(b * BLCKSZ..(b + 1) * BLCKSZ),
            Stored::Incremental { carried, .. } => carried.get(&b).map(Vec::as_slice),
        }
    }
}

/// An incremental file: magic, block count n, truncation length, n block
/// numbers, padding to a block boundary when n > 0, then the n blocks.
fn parse_incremental(path: &Path, bytes: &[u8]) -> Stored {
    let word = |i: usize| {
        let at = 4 * i;
        let field = bytes
            .get(at..at + 4)
            .unwrap_or_else(|| panic!("{}: truncated header", path.display()));
        u32::from_ne_bytes(field.try_into().expect("four bytes")) as usize
    };
    assert_eq!(
        word(0),
        INCREMENTAL_MAGIC as usize,
        "{}: not an incremental file",
        path.display()
    );
    let count = word(1);
    let truncation_length = word(2);
    let numbers: Vec<usize> = (0..count).map(|i| word(3 + i)).collect();
    let header = if count == 0 {
        12
    } else {
        (12 + 4 * count).div_ceil(BLCKSZ) * BLCKSZ
    };
    let carried = numbers
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            let at = header + i * BLCKSZ;
            let block = bytes
                .get(at..at + BLCKSZ)
                .unwrap_or_else(|| panic!("{}: block {b} is cut short", path.display()));
            (b, block.to_vec())
        })
        .collect();
    let blocks = numbers
        .iter()
        .map(|b| b + 1)
        .fold(truncation_length, usize::max);
    Stored::Incremental { blocks, carried }
}

/// `file` (relative to PGDATA) as `backup` holds it, if it does.
fn stored(backup: &Path, file: &str) -> Option<Stored> {
    if let Ok(bytes) = fs::read(backup.join(file)) {
        return Some(Stored::Whole(bytes));
    }
    let (dir, name) = file.rsplit_once('/')?;
    let path = backup.join(dir).join(format!("INCREMENTAL.{name}"));
    let bytes = fs::read(&path).ok()?;
    Some(parse_incremental(&path, &bytes))
}

/// `file` restored from `chain` (FULL first) by pg_probackup's rule, or None
/// when the newest backup has no copy of it.
pub fn restore_file(chain: &[&Path], file: &str) -> Option<Vec<u8>> {
    let newest_first: Vec<Option<Stored>> = chain
        .iter()
        .rev()
        .map(|backup| stored(backup, file))
        .collect();
    let blocks = match newest_first.first()? {
        None => return None,
        Some(Stored::Whole(bytes)) => return Some(bytes.clone()),
        Some(Stored::Incremental { blocks, .. }) => *blocks,
    };
    let mut restored = Vec::with_capacity(blocks * BLCKSZ);
    for b in 0..blocks {
        let block = newest_first
            .iter()
            .flatten()
            .find_map(|copy| copy.block(b))
            .unwrap_or(&[0; BLCKSZ]);
        restored.extend_from_slice(block);
    }
    Some(restored)
}
