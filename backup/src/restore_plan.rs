//! Where each block of a reconstructed file comes from, given its versions
//! along a chain of backups: the same rules as `pg_combinebackup`'s
//! `reconstruct.c`, so a chain restores alike with either tool.
//!
//! The newest backup holds the file as an `INCREMENTAL.` file with
//! truncation length T. Its own blocks win; every other block below T comes
//! from the newest older backup that carries it: an older incremental file's
//! block, or, at the first older whole file, that file's block if the file is
//! long enough. Blocks nobody has (below T, or gaps above it) are zeros.

use crate::incremental::IncrementalHeader;

/// One backup's version of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Version {
    Whole {
        size: u64,
    },
    Incremental(IncrementalHeader),
    /// Neither the file nor its `INCREMENTAL.` file is in this backup.
    Missing,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockSource {
    Zero,
    /// Bytes at `offset` of backup `backup`'s version of the file.
    From {
        backup: usize,
        offset: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FilePlan {
    /// Backup `backup`'s whole file is the result as it is.
    Copy {
        backup: usize,
    },
    Blocks(Vec<BlockSource>),
}

/// Plans the reconstruction. `versions` are oldest first; the last one,
/// the newest backup's, must be incremental.
pub fn plan(versions: &[Version], block_size: u32) -> Result<FilePlan, String> {
    let Some((Version::Incremental(latest), older)) = versions.split_last() else {
        return Err("the newest backup does not hold an incremental file".into());
    };
    let newest = older.len();
    let truncation = latest.truncation_block_length;
    let block_size = u64::from(block_size);
    let mut sources: Vec<Option<BlockSource>> = vec![None; latest.reconstructed_blocks() as usize];
    for (index, &block) in latest.blocks.iter().enumerate() {
        sources[block as usize] = Some(BlockSource::From {
            backup: newest,
            offset: latest.block_offset(index, block_size as u32),
        });
    }
    let mut whole_copy_possible = latest.blocks.is_empty();
    let mut found_whole = false;
    for (backup, version) in older.iter().enumerate().rev() {
        match version {
            Version::Missing => {
                return Err(format!(
                    "backup {} holds neither the file nor an incremental version of it",
                    backup + 1
                ))
            }
            Version::Whole { size } => {
                let length = size / block_size;
                for block in 0..u64::from(truncation).min(length) {
                    let slot = &mut sources[block as usize];
                    if slot.is_none() {
                        *slot = Some(BlockSource::From {
                            backup,
                            offset: block * block_size,
                        });
                    }
                }
                if whole_copy_possible && u64::from(truncation) * block_size == *size {
                    return Ok(FilePlan::Copy { backup });
                }
                found_whole = true;
                break;
            }
            Version::Incremental(header) => {
                for (index, &block) in header.blocks.iter().enumerate() {
                    if block < truncation && sources[block as usize].is_none() {
                        sources[block as usize] = Some(BlockSource::From {
                            backup,
                            offset: header.block_offset(index, block_size as u32),
                        });
                        whole_copy_possible = false;
                    }
                }
            }
        }
    }
    if !found_whole {
        return Err(
            "no backup of the chain holds the whole file: the first backup must be a FULL".into(),
        );
    }
    Ok(FilePlan::Blocks(
        sources
            .into_iter()
            .map(|s| s.unwrap_or(BlockSource::Zero))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: u64 = 8192;

    fn inc(t: u32, blocks: &[u32]) -> Version {
        Version::Incremental(IncrementalHeader {
            truncation_block_length: t,
            blocks: blocks.to_vec(),
        })
    }

    fn whole(blocks: u64) -> Version {
        Version::Whole { size: blocks * B }
    }

    fn from(backup: usize, offset_blocks: u64) -> BlockSource {
        BlockSource::From {
            backup,
            offset: offset_blocks * B,
        }
    }

    #[test]
    fn unchanged_file_of_the_same_length_is_copied() {
        assert_eq!(
            plan(&[whole(4), inc(4, &[])], 8192),
            Ok(FilePlan::Copy { backup: 0 })
        );
        assert_eq!(
            plan(&[whole(4), inc(4, &[]), inc(4, &[])], 8192),
            Ok(FilePlan::Copy { backup: 0 })
        );
    }

    #[test]
    fn newest_blocks_win_then_older_ones() {
        // FULL 4 blocks; INC1 changed 1 and 2; INC2 changed 2.
        let versions = [whole(4), inc(4, &[1, 2]), inc(4, &[2])];
        assert_eq!(
            plan(&versions, 8192),
            Ok(FilePlan::Blocks(vec![
                from(0, 0),
                from(1, 1), // INC1's first block, after its one-block header
                from(2, 1),
                from(0, 3),
            ]))
        );
    }

    #[test]
    fn truncated_then_regrown() {
        // FULL 6 blocks; truncated to 2 and regrown to 4 before INC1 (blocks
        // 2, 3 rewritten and carried); INC2: length 4, nothing changed.
        let versions = [whole(6), inc(4, &[2, 3]), inc(4, &[])];
        assert_eq!(
            plan(&versions, 8192),
            Ok(FilePlan::Blocks(vec![
                from(0, 0),
                from(0, 1),
                from(1, 1),
                from(1, 2)
            ]))
        );
    }

    #[test]
    fn shrunk_file_takes_only_blocks_below_the_truncation_length() {
        let versions = [whole(6), inc(6, &[5]), inc(2, &[])];
        assert_eq!(
            plan(&versions, 8192),
            Ok(FilePlan::Blocks(vec![from(0, 0), from(0, 1)]))
        );
    }

    #[test]
    fn blocks_past_the_full_file_or_in_gaps_are_zero() {
        // FULL was 2 blocks; the newest says length 3 and carries block 5.
        let versions = [whole(2), inc(3, &[5])];
        assert_eq!(
            plan(&versions, 8192),
            Ok(FilePlan::Blocks(vec![
                from(0, 0),
                from(0, 1),
                BlockSource::Zero,
                BlockSource::Zero,
                BlockSource::Zero,
                from(1, 1),
            ]))
        );
    }

    #[test]
    fn broken_chains_are_refused() {
        assert!(plan(&[Version::Missing, inc(1, &[])], 8192).is_err());
        assert!(plan(&[inc(1, &[]), inc(1, &[])], 8192).is_err());
        assert!(plan(&[whole(1)], 8192).is_err());
        assert!(plan(&[], 8192).is_err());
    }
}
