//! The map file's verifier and the salvage of a rejected file's highest LSN,
//! on arbitrary bytes; and the writer's output read back. Whatever follows
//! the full part is read as delta records here too, but what they must
//! mean is `map_delta`'s to check.
//!
//! Input: 8 bytes of configuration, then the file.
//!
//! * byte 0: bit 0 reseal the full part's CRC (so mutations reach the later
//!   checks): where the header's slot count puts it, else at the end;
//!   bit 1 expect the header's own system identifier; bit 2 expect the slot
//!   count the length gives; bit 3 expect WAL mode; bit 4 a backup label
//!   is present; bit 5 also write a map of the slots after the header and
//!   verify it.
//! * bytes 1-4: the data checksum version expected.
//! * bytes 5-7: the latest checkpoint's REDO expected (low bits).
#![no_main]

use std::sync::atomic::AtomicU64;

use libfuzzer_sys::fuzz_target;
use ptrack_core::cuts::CutTable;
use ptrack_core::mapfile::{
    file_len, highest_lsn_recorded, verify, write_map, Expectation, HeaderVerifiedMapFile,
    MapFileError, MapFileMeta, TrackingMode, HEADER_LEN, TRAILER_LEN,
};
use ptrack_core::{Lsn, OwnedLsnMap};

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    bytes
        .get(at..at + 8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()))
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (config, file) = data.split_at(8);
    let flags = config[0];
    let mut file = file.to_vec();
    if flags & 1 != 0 && file.len() >= TRAILER_LEN {
        let base_len = file_len(u64_at(&file, 24));
        let end = match usize::try_from(base_len) {
            Ok(len) if len <= file.len() && len >= HEADER_LEN + TRAILER_LEN => len,
            _ => file.len(),
        };
        let crc_at = end - TRAILER_LEN;
        let crc = crc32fast::hash(&file[..crc_at]);
        file[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
    }
    let system_identifier = if flags & 2 != 0 {
        u64_at(&file, 16)
    } else {
        7_300_000_000_000_000_001
    };
    let slot_count = if flags & 4 != 0 {
        u64_at(&file, 24)
    } else {
        u64_at(&file, 24) & 0xFFFF_FFFF
    };
    let expect = Expectation {
        system_identifier,
        slot_count,
        latest_checkpoint_redo: Lsn(u64::from_le_bytes([
            config[5], config[6], config[7], 0, 0, 0, 0, 0,
        ])),
        data_checksum_version: u32::from_le_bytes(config[1..5].try_into().unwrap()),
        backup_label_present: flags & 16 != 0,
        mode: if flags & 8 != 0 {
            TrackingMode::Wal
        } else {
            TrackingMode::Hooks
        },
    };
    let highest = highest_lsn_recorded(&file, system_identifier);
    match verify(&file[..], &expect) {
        Ok(verified) => {
            let base_len = file_len(expect.slot_count);
            assert!(file.len() as u64 >= base_len);
            let meta = *verified.meta();
            assert_eq!(meta.slot_count, expect.slot_count);
            assert_eq!(meta.system_identifier, expect.system_identifier);
            assert_eq!(meta.mode(), expect.mode);
            // Delta records are bound to a base by its nonce; 0 would bind none.
            assert_ne!(meta.base_nonce, 0);
            let mut slots = 0u64;
            let mut max = meta
                .init_lsn
                .0
                .max(meta.checkpoint_redo.0)
                .max(meta.wal_tracked_through.0);
            for slot in verified.slots() {
                slots += 1;
                max = max.max(slot);
            }
            assert_eq!(slots, expect.slot_count);
            // A file that passes every check is intact: its LSNs count, and
            // valid delta records after it can only add to them.
            if file.len() as u64 == base_len {
                assert_eq!(highest, Some(Lsn(max)));
            } else {
                assert!(highest >= Some(Lsn(max)));
            }
        }
        Err(error) => {
            let _ = error.to_string();
        }
    }

    // The reader a start uses, header first and the CRC during the load,
    // accepts what `verify` accepts and loads the same words; a refused load
    // leaves an empty map. Valid delta records are where the two differ:
    // they change the words, and a newer REDO in one makes fresh a full
    // part that `verify`, which ignores them, finds stale.
    let verified = verify(&file[..], &expect);
    let base_stale = matches!(verified, Err(MapFileError::Stale { .. }));
    let verified_words: Option<Vec<u64>> = verified.ok().map(|verified| verified.words().collect());
    match HeaderVerifiedMapFile::new(&file[..], &expect) {
        // A passing header fixes the length, so the map is as large as the
        // input allows; a map has at least one slot.
        Ok(header) if expect.slot_count > 0 => {
            let map = OwnedLsnMap::new(expect.slot_count as usize);
            let view = map.view();
            let loaded = header.load_into(&view);
            let words: Vec<u64> = view
                .words()
                .iter()
                .map(|w| w.load(std::sync::atomic::Ordering::Relaxed))
                .collect();
            let records = header.delta_applied().records;
            match (loaded, &verified_words) {
                (Ok(()), Some(expected)) => {
                    if records == 0 {
                        assert_eq!(&words, expected);
                    }
                    assert_eq!(view.init_lsn(), header.meta().init_lsn);
                }
                (Ok(()), None) if records > 0 && base_stale => {}
                (Err(_), None) => {
                    assert!(words.iter().all(|&w| w == 0));
                    assert!(!view.init_lsn().is_valid());
                }
                (loaded, _) => panic!(
                    "one-pass load {loaded:?}, verify accepted: {}",
                    verified_words.is_some()
                ),
            }
        }
        Ok(_) => {}
        Err(_) => assert!(
            verified_words.is_none(),
            "the header check refused what verify accepts"
        ),
    }

    if flags & 32 != 0 && file.len() >= HEADER_LEN {
        // The writer's output passes the verifier and reads back the same.
        let meta = MapFileMeta {
            system_identifier: u64_at(&file, 16),
            slot_count: 0,
            init_lsn: Lsn(u64_at(&file, 32)),
            checkpoint_redo: Lsn(u64_at(&file, 40)),
            data_checksum_version: u32::from_le_bytes(file[48..52].try_into().unwrap()),
            wal_tracked_through: Lsn(u64_at(&file, 56)),
            // The verifier refuses a zero nonce, and this file is meant to pass.
            base_nonce: u64_at(&file, 64).max(1),
            side_forks_tracked_from: Lsn(u64_at(&file, 72)),
        };
        // The file's words as slots, then an empty cut table.
        let slot_values: Vec<u64> = file[HEADER_LEN..]
            .chunks_exact(8)
            .map(|s| u64::from_le_bytes(s.try_into().unwrap()))
            .collect();
        if slot_values.is_empty() {
            return;
        }
        let cut_words = CutTable::words_for(slot_values.len());
        let slots: Vec<AtomicU64> = slot_values
            .iter()
            .copied()
            .chain(std::iter::repeat_n(0, cut_words))
            .map(AtomicU64::new)
            .collect();
        let meta = MapFileMeta {
            slot_count: slot_values.len() as u64,
            ..meta
        };
        let mut written = Vec::new();
        write_map(&mut written, &meta, &slots).expect("writing to memory");
        let expect = Expectation {
            system_identifier: meta.system_identifier,
            slot_count: meta.slot_count,
            latest_checkpoint_redo: meta.checkpoint_redo,
            data_checksum_version: meta.data_checksum_version,
            backup_label_present: false,
            mode: meta.mode(),
        };
        let verified = verify(&written, &expect).expect("the writer's own file");
        assert_eq!(*verified.meta(), meta);
        assert!(verified.slots().eq(slot_values.iter().copied()));
        assert!(verified
            .words()
            .skip(slot_values.len())
            .all(|word| word == 0));
        assert!(highest_lsn_recorded(&written, meta.system_identifier).is_some());
    }
});
