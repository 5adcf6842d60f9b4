//! Loading a map file at start with one read of it.
//!
//! [`super::verify`] reads a whole image for its CRC before any value is
//! used, and loading it reads it again: a 1 GB map is read twice at every
//! start, and read even when the live map is resumed and the file's words are
//! not needed at all. Here the header is checked first (its checks need only
//! the first and last bytes), and the CRC is computed while the words are
//! copied into the map, chunk by chunk, so each byte is read once. A map that
//! fails the CRC is emptied before anyone sees it: loading happens at shmem
//! startup, before any other process is attached.
//!
//! The delta records after the full part ([`super::delta`]) are checked
//! before the header's freshness: the map is as new as its last record.

use std::path::Path;

use super::delta::{self, DeltaPrefix};
use super::{
    check_fresh, check_header, check_length, map_read_only, u32_at, word_count, Expectation,
    MapFileError, MapFileMeta, CHUNK_BYTES, HEADER_LEN, TRAILER_LEN,
};
use crate::LsnMap;

/// A map file whose length and header passed every check of an
/// [`Expectation`], with the valid delta records after its full part; its
/// words are trusted only once [`Self::load_into`] has matched their CRC.
pub struct HeaderVerifiedMapFile<B: AsRef<[u8]>> {
    bytes: B,
    /// Where the full part ends and the delta records begin.
    base_len: usize,
    delta: DeltaPrefix,
    /// The full part's header, with the last delta record's positions.
    meta: MapFileMeta,
}

/// `meta` with the positions of the last record of `prefix`.
pub fn with_delta(meta: MapFileMeta, prefix: &DeltaPrefix) -> MapFileMeta {
    match prefix.last {
        Some(last) => MapFileMeta {
            init_lsn: last.init_lsn,
            checkpoint_redo: last.checkpoint_redo,
            wal_tracked_through: last.wal_tracked_through,
            side_forks_tracked_from: last.side_forks_tracked_from,
            ..meta
        },
        None => meta,
    }
}

impl<B: AsRef<[u8]>> HeaderVerifiedMapFile<B> {
    /// Checks everything but the full part's CRC.
    pub fn new(bytes: B, expect: &Expectation) -> Result<Self, MapFileError> {
        let data = bytes.as_ref();
        let base_len = check_length(data, expect)?;
        let base = check_header(&data[..base_len], expect)?;
        let delta = delta::scan(
            &data[base_len..],
            base.base_nonce,
            word_count(base.slot_count) as usize,
            base.checkpoint_redo,
        );
        let meta = with_delta(base, &delta);
        check_fresh(&meta, expect)?;
        Ok(HeaderVerifiedMapFile {
            bytes,
            base_len,
            delta,
            meta,
        })
    }

    pub fn meta(&self) -> &MapFileMeta {
        &self.meta
    }

    /// How many delta records and bytes of them a load applies.
    pub fn delta_applied(&self) -> DeltaPrefix {
        self.delta
    }

    /// Replaces `map`'s words and init LSN with the file's, checking the CRC
    /// on the way; on a mismatch `map` is reset to an empty map and the error
    /// says so. Only for a map no other process is using yet, of the file's
    /// slot count.
    pub fn load_into(&self, map: &LsnMap<'_>) -> Result<(), MapFileError> {
        debug_assert_eq!(map.slot_count() as u64, self.meta.slot_count);
        let (data, tail) = self.bytes.as_ref().split_at(self.base_len);
        let crc_at = data.len() - TRAILER_LEN;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&data[..HEADER_LEN]);
        // A chunk is hashed just before its words are copied, while it is
        // still in cache.
        let words = data[HEADER_LEN..crc_at]
            .chunks(CHUNK_BYTES)
            .inspect(|chunk| crc.update(chunk))
            .flat_map(|chunk| {
                chunk
                    .chunks_exact(8)
                    .map(|word| u64::from_le_bytes(word.try_into().expect("8 bytes")))
            });
        map.load(self.meta.init_lsn, words);
        let stored = u32_at(data, crc_at);
        let computed = crc.finalize();
        if stored != computed {
            map.reset();
            return Err(MapFileError::ChecksumMismatch { stored, computed });
        }
        delta::apply(tail, &self.delta, self.meta.base_nonce, map.words());
        Ok(())
    }
}

/// Memory-maps `path` and checks its length, its header and the freshness
/// of the map its full part and delta records make.
pub fn open_header_verified(
    path: &Path,
    expect: &Expectation,
) -> Result<HeaderVerifiedMapFile<memmap2::Mmap>, MapFileError> {
    HeaderVerifiedMapFile::new(map_read_only(path, expect)?, expect)
}

#[cfg(test)]
mod tests {
    use super::super::{verify, write_map};
    use super::*;
    use crate::block::{Fork, RelFileKey};
    use crate::mapfile::hook_mode_expectation;
    use crate::{Lsn, OwnedLsnMap};

    const SYSID: u64 = 7_300_000_000_000_000_002;

    /// A map of `slot_count` slots with some marks and a cut, and its file.
    fn marked_map_and_image(slot_count: usize) -> (OwnedLsnMap, Vec<u8>) {
        let map = OwnedLsnMap::new(slot_count);
        let view = map.view();
        let file = RelFileKey {
            tablespace: 1663,
            database: 5,
            relfilenode: 16_384,
            fork: Fork::Main,
        };
        for block in 0..50 {
            view.mark(&file.block(block), Lsn(0x1000 + u64::from(block)));
        }
        view.record_cut(&file, 7, Lsn(0x2000)).unwrap();
        let meta = MapFileMeta {
            system_identifier: SYSID,
            slot_count: slot_count as u64,
            init_lsn: view.init_lsn(),
            checkpoint_redo: Lsn(0x5000),
            data_checksum_version: 1,
            wal_tracked_through: Lsn::INVALID,
            base_nonce: 0x5EED,
            side_forks_tracked_from: Lsn::INVALID,
        };
        let mut image = Vec::new();
        write_map(&mut image, &meta, view.words()).unwrap();
        (map, image)
    }

    fn words_of(map: &OwnedLsnMap) -> Vec<u64> {
        map.view()
            .words()
            .iter()
            .map(|w| w.load(std::sync::atomic::Ordering::Relaxed))
            .collect()
    }

    #[test]
    fn one_pass_loads_what_was_written() {
        // More than one chunk of words, and a partial last chunk.
        let slot_count = CHUNK_BYTES / 8 * 2 + 1000;
        let (original, image) = marked_map_and_image(slot_count);
        let expect = hook_mode_expectation(SYSID, slot_count as u64);
        let file = HeaderVerifiedMapFile::new(&image[..], &expect).unwrap();
        let loaded = OwnedLsnMap::new(slot_count);
        file.load_into(&loaded.view()).unwrap();
        assert_eq!(words_of(&loaded), words_of(&original));
        assert_eq!(loaded.view().init_lsn(), original.view().init_lsn());
    }

    /// Every single-bit flip anywhere in a file is refused, by the header
    /// checks or by the CRC during the load, exactly when `verify` refuses
    /// it; a map whose load failed is empty.
    #[test]
    fn every_bit_flip_is_refused_as_verify_refuses_it() {
        let slot_count = 64;
        let (_, image) = marked_map_and_image(slot_count);
        let expect = hook_mode_expectation(SYSID, slot_count as u64);
        for byte in 0..image.len() {
            for bit in [0, 3, 7] {
                let mut damaged = image.clone();
                damaged[byte] ^= 1 << bit;
                let map = OwnedLsnMap::new(slot_count);
                let loaded = HeaderVerifiedMapFile::new(&damaged[..], &expect)
                    .and_then(|file| file.load_into(&map.view()));
                assert!(loaded.is_err(), "flip of bit {bit} of byte {byte} loaded");
                assert!(verify(&damaged[..], &expect).is_err());
                assert!(
                    words_of(&map).iter().all(|&w| w == 0) && !map.view().init_lsn().is_valid(),
                    "a refused load of byte {byte} left values in the map"
                );
            }
        }
    }

    #[test]
    fn header_refusals_need_no_read_of_the_words() {
        let slot_count = 64;
        let (_, image) = marked_map_and_image(slot_count);
        // The file is newer than pg_control says: stale, refused on its header.
        let mut expect = hook_mode_expectation(SYSID, slot_count as u64);
        expect.latest_checkpoint_redo = Lsn(0x6000);
        assert!(matches!(
            HeaderVerifiedMapFile::new(&image[..], &expect),
            Err(MapFileError::Stale { .. })
        ));
        expect = hook_mode_expectation(SYSID ^ 1, slot_count as u64);
        assert!(matches!(
            HeaderVerifiedMapFile::new(&image[..], &expect),
            Err(MapFileError::ForeignCluster { .. })
        ));
        expect = hook_mode_expectation(SYSID, slot_count as u64 * 2);
        assert!(matches!(
            HeaderVerifiedMapFile::new(&image[..], &expect),
            Err(MapFileError::WrongSlotCount { .. })
        ));
    }
}
