//! PostgreSQL's incremental file format (17+), which this tool also uses on
//! older servers for its own chains.
//!
//! An incremental backup stores a relation segment `<dir>/<name>` as
//! `<dir>/INCREMENTAL.<name>`, laid out as the server's `basebackup.c` writes
//! it and `pg_combinebackup`'s `reconstruct.c` reads it, all integers 32-bit in
//! the machine's byte order, as PostgreSQL writes them:
//!
//! | field | size |
//! |---|---|
//! | magic `0xd3ae1f0d` | 4 |
//! | block count `n` | 4 |
//! | truncation_block_length | 4 |
//! | block numbers, relative to the segment, ascending | 4 · n |
//! | zero padding to a multiple of BLCKSZ, only when n > 0 | |
//! | the n blocks, in the order of the numbers | BLCKSZ · n |
//!
//! `truncation_block_length` is the reconstructed file's minimum length in
//! blocks: a block below it that the file does not carry comes from an older
//! backup of the chain; at or above it only the file's own blocks count (gaps
//! are zero-filled). The reconstructed length is the larger of it and the
//! highest carried block + 1.

use std::io::Read;

pub const INCREMENTAL_MAGIC: u32 = 0xd3ae_1f0d;
pub const INCREMENTAL_PREFIX: &str = "INCREMENTAL.";

/// The header of an incremental file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncrementalHeader {
    pub truncation_block_length: u32,
    /// Ascending block numbers relative to the segment.
    pub blocks: Vec<u32>,
}

impl IncrementalHeader {
    /// The header's length with its padding, as `GetIncrementalHeaderSize`:
    /// where block data starts.
    pub fn len(&self, block_size: u32) -> u64 {
        header_len(self.blocks.len(), block_size)
    }

    /// The whole file's length, as `GetIncrementalFileSize`.
    #[cfg(test)]
    pub fn file_len(&self, block_size: u32) -> u64 {
        self.len(block_size) + self.blocks.len() as u64 * u64::from(block_size)
    }

    /// Where block `index` (of `blocks`) starts in the file.
    pub fn block_offset(&self, index: usize, block_size: u32) -> u64 {
        self.len(block_size) + index as u64 * u64::from(block_size)
    }

    /// The reconstructed file's length in blocks.
    pub fn reconstructed_blocks(&self) -> u32 {
        self.blocks
            .iter()
            .map(|&b| b + 1)
            .fold(self.truncation_block_length, u32::max)
    }

    /// The header bytes, padding included.
    pub fn encode(&self, block_size: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len(block_size) as usize);
        out.extend_from_slice(&INCREMENTAL_MAGIC.to_ne_bytes());
        out.extend_from_slice(&(self.blocks.len() as u32).to_ne_bytes());
        out.extend_from_slice(&self.truncation_block_length.to_ne_bytes());
        for block in &self.blocks {
            out.extend_from_slice(&block.to_ne_bytes());
        }
        out.resize(self.len(block_size) as usize, 0);
        out
    }

    /// Reads and checks a header (with its padding) from the file's start.
    pub fn decode(
        reader: &mut impl Read,
        block_size: u32,
        segment_blocks: u32,
    ) -> Result<IncrementalHeader, String> {
        let mut word = || -> Result<u32, String> {
            let mut bytes = [0u8; 4];
            reader
                .read_exact(&mut bytes)
                .map_err(|e| format!("truncated incremental header: {e}"))?;
            Ok(u32::from_ne_bytes(bytes))
        };
        let magic = word()?;
        if magic != INCREMENTAL_MAGIC {
            return Err(format!(
                "bad incremental magic number 0x{magic:x}, expected 0x{INCREMENTAL_MAGIC:x}"
            ));
        }
        let count = word()?;
        if count > segment_blocks {
            return Err(format!(
                "block count {count} exceeds the segment size {segment_blocks}"
            ));
        }
        let truncation_block_length = word()?;
        if truncation_block_length > segment_blocks {
            return Err(format!(
                "truncation block length {truncation_block_length} exceeds the segment size {segment_blocks}"
            ));
        }
        let mut blocks = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let block = word()?;
            if block >= segment_blocks {
                return Err(format!(
                    "block number {block} is beyond the segment size {segment_blocks}"
                ));
            }
            if blocks.last().is_some_and(|&last| last >= block) {
                return Err(format!("block numbers not ascending at {block}"));
            }
            blocks.push(block);
        }
        let header = IncrementalHeader {
            truncation_block_length,
            blocks,
        };
        let padding = header.len(block_size) - header_len_unpadded(count as usize);
        std::io::copy(&mut reader.take(padding), &mut std::io::sink())
            .map_err(|e| format!("truncated incremental header padding: {e}"))?;
        Ok(header)
    }
}

fn header_len_unpadded(count: usize) -> u64 {
    12 + 4 * count as u64
}

fn header_len(count: usize, block_size: u32) -> u64 {
    let unpadded = header_len_unpadded(count);
    let block_size = u64::from(block_size);
    if count > 0 && unpadded % block_size != 0 {
        unpadded + block_size - unpadded % block_size
    } else {
        unpadded
    }
}

/// `16384.1` → `INCREMENTAL.16384.1`.
pub fn incremental_name(name: &str) -> String {
    format!("{INCREMENTAL_PREFIX}{name}")
}

/// `INCREMENTAL.16384.1` → `16384.1`; `None` for other names.
pub fn strip_incremental(name: &str) -> Option<&str> {
    name.strip_prefix(INCREMENTAL_PREFIX)
        .filter(|rest| !rest.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLCKSZ: u32 = 8192;

    #[test]
    fn empty_header_is_twelve_bytes_without_padding() {
        let header = IncrementalHeader {
            truncation_block_length: 7,
            blocks: vec![],
        };
        let bytes = header.encode(BLCKSZ);
        assert_eq!(bytes.len(), 12);
        assert_eq!(&bytes[0..4], &INCREMENTAL_MAGIC.to_ne_bytes());
        assert_eq!(&bytes[4..8], &0u32.to_ne_bytes());
        assert_eq!(&bytes[8..12], &7u32.to_ne_bytes());
        assert_eq!(header.file_len(BLCKSZ), 12);
        assert_eq!(header.reconstructed_blocks(), 7);
    }

    #[test]
    fn header_with_blocks_is_padded_to_a_block() {
        let header = IncrementalHeader {
            truncation_block_length: 3,
            blocks: vec![0, 2, 9],
        };
        let bytes = header.encode(BLCKSZ);
        assert_eq!(bytes.len(), BLCKSZ as usize);
        assert_eq!(&bytes[4..8], &3u32.to_ne_bytes());
        assert_eq!(&bytes[12..16], &0u32.to_ne_bytes());
        assert_eq!(&bytes[16..20], &2u32.to_ne_bytes());
        assert_eq!(&bytes[20..24], &9u32.to_ne_bytes());
        assert!(bytes[24..].iter().all(|&b| b == 0));
        assert_eq!(header.block_offset(1, BLCKSZ), 2 * u64::from(BLCKSZ));
        assert_eq!(header.file_len(BLCKSZ), 4 * u64::from(BLCKSZ));
        assert_eq!(header.reconstructed_blocks(), 10);
    }

    #[test]
    fn header_of_exactly_one_block_gets_no_extra_padding() {
        // 12 + 4 * 2045 = 8192.
        let header = IncrementalHeader {
            truncation_block_length: 0,
            blocks: (0..2045).collect(),
        };
        assert_eq!(header.len(BLCKSZ), 8192);
        let header = IncrementalHeader {
            truncation_block_length: 0,
            blocks: (0..2046).collect(),
        };
        assert_eq!(header.len(BLCKSZ), 16384);
    }

    #[test]
    fn decode_round_trips_and_consumes_padding() {
        let header = IncrementalHeader {
            truncation_block_length: 5,
            blocks: vec![1, 4, 100],
        };
        let mut bytes = header.encode(BLCKSZ);
        bytes.extend_from_slice(b"first block");
        let mut reader = bytes.as_slice();
        assert_eq!(
            IncrementalHeader::decode(&mut reader, BLCKSZ, 131072).unwrap(),
            header
        );
        assert_eq!(reader, b"first block");
    }

    #[test]
    fn decode_rejects_bad_headers() {
        let decode = |bytes: Vec<u8>| IncrementalHeader::decode(&mut bytes.as_slice(), BLCKSZ, 64);
        let mut bad_magic = IncrementalHeader {
            truncation_block_length: 1,
            blocks: vec![],
        }
        .encode(BLCKSZ);
        bad_magic[0] ^= 1;
        assert!(decode(bad_magic).unwrap_err().contains("magic"));
        let too_long = IncrementalHeader {
            truncation_block_length: 65,
            blocks: vec![],
        };
        assert!(decode(too_long.encode(BLCKSZ)).is_err());
        let beyond = IncrementalHeader {
            truncation_block_length: 1,
            blocks: vec![64],
        };
        assert!(decode(beyond.encode(BLCKSZ)).is_err());
        let unsorted = IncrementalHeader {
            truncation_block_length: 1,
            blocks: vec![3, 2],
        };
        assert!(decode(unsorted.encode(BLCKSZ)).is_err());
        let short = IncrementalHeader {
            truncation_block_length: 1,
            blocks: vec![3],
        }
        .encode(BLCKSZ)[..14]
            .to_vec();
        assert!(decode(short).is_err());
    }

    #[test]
    fn names() {
        assert_eq!(incremental_name("16384_vm.2"), "INCREMENTAL.16384_vm.2");
        assert_eq!(strip_incremental("INCREMENTAL.16384"), Some("16384"));
        assert_eq!(strip_incremental("INCREMENTAL."), None);
        assert_eq!(strip_incremental("16384"), None);
    }
}
