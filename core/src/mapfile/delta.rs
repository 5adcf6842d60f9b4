//! Delta records: what checkpoints changed in the map since its last full
//! write, appended to the map file after its full part, so that a
//! checkpoint writes in proportion to the marks made since the one before,
//! not to the map.
//!
//! They are a sequence of records, each the map's regions that were dirty at
//! one flush ([`crate::dirty`]), read after their dirty bits were taken.
//! The map is the full file with every valid record applied in order: a
//! region's last copy is at least what it held when the last flush started,
//! since a store the copy missed left the region dirty for a later record.
//!
//! Record layout, little-endian, 8-byte words:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `PTRKDLTA` |
//! | 8 | 8 | nonce of the full file it continues |
//! | 16 | 8 | offset of this record from the end of the full part |
//! | 24 | 8 | init LSN at the flush |
//! | 32 | 8 | REDO LSN of the checkpoint the flush belongs to |
//! | 40 | 8 | WAL mode: WAL tracked through at the flush; hook mode: 0 |
//! | 48 | 8 | hook mode: FSM and VM tracked from (as the full part's header) |
//! | 56 | 8 | zero |
//! | 64 | … | runs: first word index (8), word count (8, at least 1), the words |
//! | … | 16 | end of runs: `u64::MAX`, 0 |
//! | … | 4 | CRC-32 of the record before it |
//! | … | 4 | zero |
//!
//! Runs are in increasing word order and do not overlap, so a record is at
//! most the map's size plus 16 bytes per run.
//!
//! **What is trusted.** Records are read from the start while each one is
//! whole: magic, nonce, offset, bounds, CRC, and a REDO no lower than the
//! one before. The first record that fails ends the delta, and what follows
//! it is ignored. So a crash in the middle of an append leaves the records
//! before it, which are exactly the flushes that completed. A record can
//! only name the full part whose nonce it carries, from its own place.
//!
use std::sync::atomic::{AtomicU64, Ordering};

use crate::lsn::Lsn;
use crate::LsnMap;

pub const RECORD_MAGIC: [u8; 8] = *b"PTRKDLTA";
pub const RECORD_HEADER_LEN: usize = 64;
const RUN_HEADER_LEN: usize = 16;
const END_OF_RUNS: u64 = u64::MAX;
const RECORD_TRAILER_LEN: usize = 8;

/// What a record says of the map besides its words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordMeta {
    pub init_lsn: Lsn,
    pub checkpoint_redo: Lsn,
    pub wal_tracked_through: Lsn,
    pub side_forks_tracked_from: Lsn,
}

/// The valid records after a full part.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DeltaPrefix {
    /// Bytes of valid records.
    pub len: usize,
    pub records: usize,
    /// The last valid record's meta.
    pub last: Option<RecordMeta>,
}

fn u64_at(bytes: &[u8], offset: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        bytes.get(offset..offset + 8)?.try_into().ok()?,
    ))
}

/// A whole record at `at` continuing the base `nonce` over `word_count`
/// words: its meta and length, or `None`. `each_run(first, words)` is called
/// for its runs only once the whole record is known good.
fn parse_record(
    delta: &[u8],
    at: usize,
    nonce: u64,
    word_count: usize,
    mut each_run: impl FnMut(usize, &[u8]),
) -> Option<(RecordMeta, usize)> {
    let record = delta.get(at..)?;
    if record.get(0..8)? != RECORD_MAGIC
        || u64_at(record, 8)? != nonce
        || u64_at(record, 16)? != at as u64
        || u64_at(record, 56)? != 0
    {
        return None;
    }
    let meta = RecordMeta {
        init_lsn: Lsn(u64_at(record, 24)?),
        checkpoint_redo: Lsn(u64_at(record, 32)?),
        wal_tracked_through: Lsn(u64_at(record, 40)?),
        side_forks_tracked_from: Lsn(u64_at(record, 48)?),
    };
    let mut offset = RECORD_HEADER_LEN;
    let mut next_word = 0usize;
    let runs_start = offset;
    loop {
        let first = u64_at(record, offset)?;
        let count = u64_at(record, offset + 8)?;
        offset += RUN_HEADER_LEN;
        if first == END_OF_RUNS && count == 0 {
            break;
        }
        let first = usize::try_from(first).ok()?;
        let count = usize::try_from(count).ok()?;
        let end = first.checked_add(count)?;
        if count == 0 || first < next_word || end > word_count {
            return None;
        }
        next_word = end;
        offset = offset.checked_add(count.checked_mul(8)?)?;
        if offset > record.len() {
            return None;
        }
    }
    let crc_at = offset;
    let stored = u32::from_le_bytes(record.get(crc_at..crc_at + 4)?.try_into().ok()?);
    if record.get(crc_at + 4..crc_at + RECORD_TRAILER_LEN)? != [0; 4]
        || stored != crc32fast::hash(&record[..crc_at])
    {
        return None;
    }
    let mut offset = runs_start;
    loop {
        let first = u64_at(record, offset)?;
        let count = u64_at(record, offset + 8)?;
        offset += RUN_HEADER_LEN;
        if first == END_OF_RUNS {
            break;
        }
        let bytes = count as usize * 8;
        each_run(first as usize, &record[offset..offset + bytes]);
        offset += bytes;
    }
    Some((meta, crc_at + RECORD_TRAILER_LEN))
}

/// The valid records of `delta` continuing the full file `nonce` of
/// `word_count` words whose REDO is `base_redo`.
pub fn scan(delta: &[u8], nonce: u64, word_count: usize, base_redo: Lsn) -> DeltaPrefix {
    let mut prefix = DeltaPrefix::default();
    let mut redo = base_redo;
    while let Some((meta, len)) = parse_record(delta, prefix.len, nonce, word_count, |_, _| {}) {
        if meta.checkpoint_redo < redo {
            break;
        }
        redo = meta.checkpoint_redo;
        prefix.len += len;
        prefix.records += 1;
        prefix.last = Some(meta);
    }
    prefix
}

/// Applies the records of `prefix` (from [`scan`] of the same bytes) to
/// `words`, in order: each stored word is the region's newer copy.
pub fn apply(delta: &[u8], prefix: &DeltaPrefix, nonce: u64, words: &[AtomicU64]) {
    apply_with(delta, prefix, nonce, words.len(), |index, value| {
        words[index].store(value, Ordering::Relaxed)
    });
}

/// [`apply`] through `store(word_index, value)`, for `word_count` words.
pub fn apply_with(
    delta: &[u8],
    prefix: &DeltaPrefix,
    nonce: u64,
    word_count: usize,
    mut store: impl FnMut(usize, u64),
) {
    let mut at = 0;
    for _ in 0..prefix.records {
        let parsed = parse_record(delta, at, nonce, word_count, |first, bytes| {
            for (offset, value) in bytes.chunks_exact(8).enumerate() {
                store(
                    first + offset,
                    u64::from_le_bytes(value.try_into().expect("8 bytes")),
                );
            }
        });
        let Some((_, len)) = parsed else { return };
        at += len;
    }
}

/// The highest LSN the valid records of `delta` hold in the first
/// `slot_count` of `word_count` words or in their meta; `None` without one.
pub fn highest_lsn(
    delta: &[u8],
    nonce: u64,
    slot_count: usize,
    word_count: usize,
    base_redo: Lsn,
) -> Option<Lsn> {
    let prefix = scan(delta, nonce, word_count, base_redo);
    let mut highest = 0u64;
    let mut at = 0;
    for _ in 0..prefix.records {
        let (meta, len) = parse_record(delta, at, nonce, word_count, |first, bytes| {
            let slots = slot_count.saturating_sub(first).min(bytes.len() / 8);
            for value in bytes[..slots * 8].chunks_exact(8) {
                highest = highest.max(u64::from_le_bytes(value.try_into().expect("8 bytes")));
            }
        })?;
        highest = highest
            .max(meta.init_lsn.0)
            .max(meta.checkpoint_redo.0)
            .max(meta.wal_tracked_through.0);
        at += len;
    }
    prefix.last.map(|_| Lsn(highest))
}

/// Writes one record to `out`: the header for `meta`, then every dirty
/// region of `map`'s words (their bits taken first, see [`crate::dirty`]), then
/// the trailer. Returns the record's length. `after_chunk(chunks)` is called
/// after the header and every `chunk_bytes`, with what was written before it
/// flushed to `out`, and once at the end, before the caller flushes the
/// rest: for fault injection.
pub fn write_record(
    out: &mut impl std::io::Write,
    nonce: u64,
    offset: u64,
    meta: &RecordMeta,
    map: &LsnMap<'_>,
    chunk_bytes: usize,
    after_chunk: &mut dyn FnMut(usize) -> std::io::Result<()>,
) -> std::io::Result<u64> {
    let mut crc = crc32fast::Hasher::new();
    let mut written = 0u64;
    let mut chunks = 0usize;
    let mut since_chunk = 0usize;
    let mut emit = |bytes: &[u8],
                    out: &mut dyn std::io::Write,
                    crc: &mut crc32fast::Hasher|
     -> std::io::Result<()> {
        crc.update(bytes);
        out.write_all(bytes)?;
        written += bytes.len() as u64;
        since_chunk += bytes.len();
        // The header is a chunk of its own: a test that pauses there finds
        // a record begun in the file.
        if since_chunk >= chunk_bytes || written == RECORD_HEADER_LEN as u64 {
            since_chunk = 0;
            chunks += 1;
            out.flush()?;
            after_chunk(chunks)?;
        }
        Ok(())
    };
    let mut header = [0u8; RECORD_HEADER_LEN];
    header[0..8].copy_from_slice(&RECORD_MAGIC);
    header[8..16].copy_from_slice(&nonce.to_le_bytes());
    header[16..24].copy_from_slice(&offset.to_le_bytes());
    header[24..32].copy_from_slice(&meta.init_lsn.0.to_le_bytes());
    header[32..40].copy_from_slice(&meta.checkpoint_redo.0.to_le_bytes());
    header[40..48].copy_from_slice(&meta.wal_tracked_through.0.to_le_bytes());
    header[48..56].copy_from_slice(&meta.side_forks_tracked_from.0.to_le_bytes());
    emit(&header, out, &mut crc)?;
    let words = map.words();
    map.dirty_regions().take_runs(words.len(), |first, count| {
        let mut run = [0u8; RUN_HEADER_LEN];
        run[0..8].copy_from_slice(&(first as u64).to_le_bytes());
        run[8..16].copy_from_slice(&(count as u64).to_le_bytes());
        emit(&run, out, &mut crc)?;
        let mut buffer = [0u8; 4096];
        for part in words[first..first + count].chunks(buffer.len() / 8) {
            for (bytes, word) in buffer.chunks_exact_mut(8).zip(part) {
                bytes.copy_from_slice(&word.load(Ordering::SeqCst).to_le_bytes());
            }
            emit(&buffer[..part.len() * 8], out, &mut crc)?;
        }
        Ok(())
    })?;
    let mut end = [0u8; RUN_HEADER_LEN];
    end[0..8].copy_from_slice(&END_OF_RUNS.to_le_bytes());
    emit(&end, out, &mut crc)?;
    let mut trailer = [0u8; RECORD_TRAILER_LEN];
    trailer[0..4].copy_from_slice(&crc.finalize().to_le_bytes());
    out.write_all(&trailer)?;
    written += RECORD_TRAILER_LEN as u64;
    chunks += 1;
    after_chunk(chunks)?;
    Ok(written)
}

/// An upper bound of the next record's length for `dirty_regions` regions.
pub fn record_len_bound(dirty_regions: u64) -> u64 {
    let region_bytes = (crate::dirty::REGION_WORDS * 8 + RUN_HEADER_LEN) as u64;
    (RECORD_HEADER_LEN + RUN_HEADER_LEN + RECORD_TRAILER_LEN) as u64
        + dirty_regions.saturating_mul(region_bytes)
}
