//! Delta records on arbitrary bytes, after a sound full part written by the
//! core's writer; and a live map flushed (full writes, records appended)
//! and read back.
//!
//! Input: [`ptrack_fuzz::CONFIG_LEN`] bytes of configuration (see
//! `fuzz/src/lib.rs`), then what follows the full part in the map file.
//!
//! The records are also read by an independent model of the layout
//! documented in `core/src/mapfile/delta.rs`, and every reader must agree
//! with it: which records count, what the map holds after them, the highest
//! LSN. A disagreement is either a reader bug or a documentation one.
#![no_main]

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use libfuzzer_sys::fuzz_target;
use ptrack_core::mapfile::delta::{self, DeltaPrefix, RecordMeta, RECORD_HEADER_LEN, RECORD_MAGIC};
use ptrack_core::mapfile::{
    flush_map, highest_lsn_recorded, open_header_verified, verify, Expectation, Flushed,
    HeaderVerifiedMapFile, MapFileError, MapFileMeta, TrackingMode, HEADER_LEN, TRAILER_LEN,
};
use ptrack_core::{Lsn, LsnMap, OwnedLsnMap};
use ptrack_fuzz::{ctl, flags, words_of, Base, BASE_NONCE, BASE_REDO, CONFIG_LEN, MARK_LEN, SYSID};

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        bytes.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

struct ModelRecord {
    meta: RecordMeta,
    len: usize,
    runs: Vec<(usize, Vec<u64>)>,
}

/// The record at `at` by the documented rules alone, written without
/// looking at how `parse_record` orders its checks.
fn model_record(delta: &[u8], at: usize, nonce: u64, word_count: usize) -> Option<ModelRecord> {
    let record = delta.get(at..)?;
    let field = |index: usize| u64_at(record, index * 8);
    if record.get(0..8)? != RECORD_MAGIC
        || field(1)? != nonce
        || field(2)? != at as u64
        || field(7)? != 0
    {
        return None;
    }
    let meta = RecordMeta {
        init_lsn: Lsn(field(3)?),
        checkpoint_redo: Lsn(field(4)?),
        wal_tracked_through: Lsn(field(5)?),
        side_forks_tracked_from: Lsn(field(6)?),
    };
    let mut offset = RECORD_HEADER_LEN;
    let mut runs: Vec<(usize, Vec<u64>)> = Vec::new();
    loop {
        let first = u64_at(record, offset)?;
        let count = u64_at(record, offset + 8)?;
        offset += 16;
        if first == u64::MAX && count == 0 {
            break;
        }
        let after_previous = runs.last().map_or(0, |(first, words)| first + words.len());
        let in_map = first < word_count as u64 && count <= word_count as u64 - first;
        if count == 0 || !in_map || (first as usize) < after_previous {
            return None;
        }
        let bytes = record.get(offset..offset + count as usize * 8)?;
        let words = bytes
            .chunks_exact(8)
            .map(|word| u64::from_le_bytes(word.try_into().unwrap()))
            .collect();
        runs.push((first as usize, words));
        offset += count as usize * 8;
    }
    let stored = record.get(offset..offset + 4)?;
    if record.get(offset + 4..offset + 8)? != [0; 4]
        || stored != crc32fast::hash(&record[..offset]).to_le_bytes()
    {
        return None;
    }
    Some(ModelRecord {
        meta,
        len: offset + 8,
        runs,
    })
}

/// The records that count: whole ones from the start, their REDO never
/// going back.
fn model_scan(delta: &[u8], nonce: u64, word_count: usize) -> Vec<ModelRecord> {
    let mut records = Vec::new();
    let mut at = 0;
    let mut redo = BASE_REDO;
    while let Some(record) = model_record(delta, at, nonce, word_count) {
        if record.meta.checkpoint_redo < redo {
            break;
        }
        redo = record.meta.checkpoint_redo;
        at += record.len;
        records.push(record);
    }
    records
}

/// Rewrites CRCs (and with `fix_headers` nonces and offsets) of whatever
/// parses as records by their lengths alone, without the checks that would
/// reject them: those are what the fuzzer is to reach.
fn reseal(delta: &mut [u8], nonce: u64, fix_headers: bool) {
    let mut at = 0;
    while at + RECORD_HEADER_LEN <= delta.len() {
        if fix_headers {
            delta[at + 8..at + 16].copy_from_slice(&nonce.to_le_bytes());
            delta[at + 16..at + 24].copy_from_slice(&(at as u64).to_le_bytes());
        }
        let mut offset = at + RECORD_HEADER_LEN;
        loop {
            let (Some(first), Some(count)) = (u64_at(delta, offset), u64_at(delta, offset + 8))
            else {
                return;
            };
            offset += 16;
            if first == u64::MAX && count == 0 {
                break;
            }
            match count
                .checked_mul(8)
                .and_then(|bytes| usize::try_from(bytes).ok())
                .and_then(|bytes| offset.checked_add(bytes))
            {
                Some(end) if end <= delta.len() => offset = end,
                _ => return,
            }
        }
        if offset + 4 > delta.len() {
            return;
        }
        let crc = crc32fast::hash(&delta[at..offset]);
        delta[offset..offset + 4].copy_from_slice(&crc.to_le_bytes());
        at = offset + 8;
    }
}

fn load_words(words: &[AtomicU64]) -> Vec<u64> {
    words
        .iter()
        .map(|word| word.load(Ordering::Relaxed))
        .collect()
}

fn expectation(meta: &MapFileMeta, latest_checkpoint_redo: Lsn) -> Expectation {
    Expectation {
        system_identifier: SYSID,
        slot_count: meta.slot_count,
        latest_checkpoint_redo,
        data_checksum_version: meta.data_checksum_version,
        backup_label_present: false,
        mode: meta.mode(),
    }
}

/// The highest LSN a map's header and slots hold.
fn highest_of(meta: &MapFileMeta, slots: &[u64]) -> Lsn {
    let header = [
        meta.init_lsn,
        meta.checkpoint_redo,
        meta.wal_tracked_through,
    ];
    Lsn(slots
        .iter()
        .copied()
        .chain(header.map(|lsn| lsn.0))
        .max()
        .unwrap_or(0))
}

/// `image` is the base's full part (damaged if `damaged`), `delta` what
/// the file holds after it.
fn check_delta(base: &Base, config: &[u8], image: &[u8], delta: &[u8], damaged: bool) {
    let base_view = base.map.view();
    let base_words = words_of(&base_view);
    let word_count = base_words.len();
    let slot_count = base_view.slot_count();
    let nonce = base.meta.base_nonce;

    let model = model_scan(delta, nonce, word_count);
    let prefix = delta::scan(delta, nonce, word_count, BASE_REDO);
    assert!(
        prefix.len <= delta.len(),
        "{prefix:?} of {} bytes",
        delta.len()
    );
    let expected_prefix = DeltaPrefix {
        len: model.iter().map(|record| record.len).sum(),
        records: model.len(),
        last: model.last().map(|record| record.meta),
    };
    assert_eq!(prefix, expected_prefix);

    let mut model_words = base_words.clone();
    for (first, words) in model.iter().flat_map(|record| &record.runs) {
        model_words[*first..*first + words.len()].copy_from_slice(words);
    }
    let applied: Vec<AtomicU64> = base_words.iter().copied().map(AtomicU64::new).collect();
    delta::apply(delta, &prefix, nonce, &applied);
    let applied = load_words(&applied);
    assert_eq!(applied.len(), word_count);
    if prefix.records == 0 {
        assert_eq!(applied, base_words);
    }
    assert_eq!(applied, model_words);

    // Only slots hold LSNs: the cut table's words are relation names.
    let model_highest = model.last().map(|_| {
        let in_slots = model
            .iter()
            .flat_map(|record| &record.runs)
            .flat_map(|(first, words)| {
                let slots = slot_count.saturating_sub(*first).min(words.len());
                words[..slots].iter().copied()
            });
        let in_meta = model.iter().flat_map(|record| {
            let meta = record.meta;
            [
                meta.init_lsn,
                meta.checkpoint_redo,
                meta.wal_tracked_through,
            ]
            .map(|lsn| lsn.0)
        });
        Lsn(in_slots.chain(in_meta).max().unwrap_or(0))
    });
    assert_eq!(
        delta::highest_lsn(delta, nonce, slot_count, word_count, BASE_REDO),
        model_highest
    );

    let file = [image, delta].concat();
    let base_highest = highest_lsn_recorded(image, SYSID);
    if damaged {
        assert_eq!(base_highest, None);
    } else {
        assert_eq!(
            base_highest,
            Some(highest_of(&base.meta, &base_words[..slot_count]))
        );
    }
    assert_eq!(
        highest_lsn_recorded(&file, SYSID),
        base_highest.map(|base| base.max(model_highest.unwrap_or(Lsn::INVALID)))
    );

    let expect = expectation(&base.meta, ptrack_fuzz::latest_redo(config));
    let meta = match prefix.last {
        Some(last) => MapFileMeta {
            init_lsn: last.init_lsn,
            checkpoint_redo: last.checkpoint_redo,
            wal_tracked_through: last.wal_tracked_through,
            side_forks_tracked_from: last.side_forks_tracked_from,
            ..base.meta
        },
        None => base.meta,
    };
    let fresh = |meta: &MapFileMeta| {
        expect.mode == TrackingMode::Wal || meta.checkpoint_redo >= expect.latest_checkpoint_redo
    };
    // `verify` judges the full part alone, whatever follows it.
    match verify(&file[..], &expect) {
        Ok(verified) => {
            assert!(!damaged && fresh(&base.meta));
            assert_eq!(*verified.meta(), base.meta);
            assert!(verified.words().eq(base_words.iter().copied()));
        }
        Err(MapFileError::ChecksumMismatch { .. }) => assert!(damaged),
        Err(MapFileError::Stale { .. }) => assert!(!fresh(&base.meta)),
        Err(error) => panic!("the full part passes every check, yet: {error}"),
    }
    match HeaderVerifiedMapFile::new(&file[..], &expect) {
        Ok(header) => {
            assert!(fresh(&meta), "a stale map accepted: {meta:?}, {expect:?}");
            assert_eq!(*header.meta(), meta);
            assert_eq!(header.delta_applied(), prefix);
            let map = OwnedLsnMap::new(slot_count);
            let view = map.view();
            let loaded = header.load_into(&view);
            if damaged {
                assert!(matches!(loaded, Err(MapFileError::ChecksumMismatch { .. })));
                // Nothing of the records either: they continue a full part
                // that is gone.
                assert!(words_of(&view).iter().all(|&word| word == 0));
                assert!(!view.init_lsn().is_valid());
            } else {
                loaded.expect("a sound full part");
                assert_eq!(words_of(&view), model_words);
                assert_eq!(view.init_lsn(), meta.init_lsn);
            }
        }
        Err(MapFileError::Stale { .. }) => assert!(!fresh(&meta), "a fresh map refused: {meta:?}"),
        Err(error) => panic!("the full part's header passes every check, yet: {error}"),
    }
}

/// Writes `map` to `dir` as a checkpoint with this REDO would, then loads
/// what is on disk as a start would. The loaded words must be the live
/// ones: a flush reads every region dirtied since the one before, and no
/// marks run concurrently here.
struct RoundTrip<'a> {
    dir: PathBuf,
    map: LsnMap<'a>,
    wal: bool,
    redo: Lsn,
    records_since_full: usize,
    /// The last flush failed: its dirty bits were taken but maybe not
    /// written, so the next flush must be a full one.
    failed: bool,
}

impl RoundTrip<'_> {
    fn flush(&mut self, fail: bool) {
        self.redo = Lsn(self.redo.0 + 0x1000);
        let meta = MapFileMeta {
            system_identifier: SYSID,
            slot_count: self.map.slot_count() as u64,
            init_lsn: self.map.init_lsn(),
            checkpoint_redo: self.redo,
            data_checksum_version: 1,
            wal_tracked_through: if self.wal {
                Lsn(self.redo.0 + 0x10)
            } else {
                Lsn::INVALID
            },
            base_nonce: 0,
            side_forks_tracked_from: self.map.side_forks_tracked_from(),
        };
        let mut inject = |_chunks: usize| match fail {
            true => Err(std::io::Error::other("injected")),
            false => Ok(()),
        };
        let path = self.dir.join(meta.mode().map_file_name());
        match flush_map(&self.dir, &self.map, &meta, &mut inject) {
            Ok(flushed) => {
                assert!(!fail);
                match flushed {
                    Flushed::Full { .. } => self.records_since_full = 0,
                    Flushed::Delta { .. } => {
                        assert!(!self.failed, "a delta after a failed flush");
                        self.records_since_full += 1;
                    }
                }
                self.failed = false;
            }
            Err(error) => {
                assert!(fail, "flush to {}: {error}", self.dir.display());
                self.failed = true;
                // What a failed flush leaves on disk may be older than the
                // map, never newer: slots only go up.
                let expect = expectation(&meta, Lsn::INVALID);
                if let Ok(file) = open_header_verified(&path, &expect) {
                    let map = OwnedLsnMap::new(self.map.slot_count());
                    if file.load_into(&map.view()).is_ok() {
                        let slots = self.map.slot_count();
                        let on_disk = words_of(&map.view());
                        let live = words_of(&self.map);
                        assert!(on_disk[..slots]
                            .iter()
                            .zip(&live[..slots])
                            .all(|(d, l)| d <= l));
                    }
                }
                return;
            }
        }
        let expect = expectation(&meta, self.redo);
        let file = open_header_verified(&path, &expect).expect("the map just flushed");
        assert_eq!(file.delta_applied().records, self.records_since_full);
        assert_ne!(file.meta().base_nonce, 0);
        assert_eq!(
            *file.meta(),
            MapFileMeta {
                base_nonce: file.meta().base_nonce,
                ..meta
            }
        );
        let loaded = OwnedLsnMap::new(self.map.slot_count());
        file.load_into(&loaded.view())
            .expect("the map just flushed");
        let live = words_of(&self.map);
        assert_eq!(words_of(&loaded.view()), live);
        assert_eq!(loaded.view().init_lsn(), self.map.init_lsn());

        let bytes = fs::read(&path).expect("the map just flushed");
        assert_eq!(
            highest_lsn_recorded(&bytes, SYSID),
            Some(highest_of(&meta, &live[..self.map.slot_count()]))
        );
    }
}

/// At most this many flushes between the first and the last: each costs
/// fsyncs.
const MAX_MIDDLE_FLUSHES: usize = 3;
const MAX_MARKS: usize = 32;

fn round_trip(config: &[u8], input: &[u8], wal: bool) {
    // Per process: libFuzzer's -fork and -jobs run several at once.
    let dir = PathBuf::from(format!("/tmp/ptrack-fuzz-map-delta-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("a directory under /tmp");
    let live = OwnedLsnMap::new(ptrack_fuzz::round_trip_slot_count(config));
    let mut trip = RoundTrip {
        dir,
        map: live.view(),
        wal,
        redo: BASE_REDO,
        records_since_full: 0,
        failed: false,
    };
    trip.map.start_tracking_at(Lsn(0x100));
    if !wal {
        // Hook mode's headers and records carry it: it must come back too.
        trip.map.track_side_forks_from(Lsn(0x100));
    }
    // A start's first flush is a full write whatever the map holds; what
    // follows is what the delta is for.
    trip.flush(false);
    let mut lsn = 0x8000u64;
    let mut middle_flushes = 0;
    for group in input.chunks_exact(MARK_LEN).take(MAX_MARKS) {
        let file = ptrack_fuzz::relation(group[0]);
        let block = u32::from(u16::from_le_bytes([group[1], group[2]]));
        lsn += 0x10;
        if group[3] & ctl::CUT != 0 {
            // A full table makes the map forget up to the cut, raising its
            // init LSN: that too must reach the disk and come back.
            let _ = trip.map.record_cut(&file, block, Lsn(lsn));
        } else {
            trip.map.mark(&file.block(block), Lsn(lsn));
        }
        if group[3] & ctl::FLUSH != 0 && middle_flushes < MAX_MIDDLE_FLUSHES {
            middle_flushes += 1;
            trip.flush(group[3] & ctl::FAIL != 0);
        }
    }
    trip.flush(false);
    let _ = fs::remove_dir_all(&trip.dir);
}

fuzz_target!(|data: &[u8]| {
    if data.len() < CONFIG_LEN {
        return;
    }
    let (config, input) = data.split_at(CONFIG_LEN);
    let flags = config[0];
    let wal = flags & flags::WAL_MODE != 0;
    let base = ptrack_fuzz::base(ptrack_fuzz::delta_slot_count(config), wal);
    let mut image = base.image.clone();
    let damaged = flags & flags::DAMAGE_BASE != 0;
    if damaged {
        let words_len = image.len() - HEADER_LEN - TRAILER_LEN;
        image[HEADER_LEN + usize::from(config[2]) * 7 % words_len] ^= 0x01;
    }
    let mut delta = input.to_vec();
    if flags & flags::RESEAL != 0 {
        reseal(&mut delta, BASE_NONCE, flags & flags::FIX_HEADERS != 0);
    }
    check_delta(&base, config, &image, &delta, damaged);
    if flags & flags::ROUND_TRIP != 0 {
        round_trip(config, input, wal);
    }
});
