//! A checkpoint's map flush: a delta record of what changed while the
//! records are small enough, a full map file otherwise.
//!
//! The full write (compaction) comes first after any start and after any
//! failed flush ([`LsnMap::delta_position`] is `None` then), and when the
//! next record would take the delta records past half the full part's size, so
//! the file stays under one and a half maps and a start reads at most that.
//! Records are appended after the full part of the map file itself, which
//! is never rewritten in place: a crash in an append leaves the full part
//! and the records before it ([`super::delta`]); a crash in a full write
//! leaves the old file whole, records and all (the temporary file and
//! rename of [`super::persist`]).

use std::fs::OpenOptions;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::Path;

use super::delta::{self, RecordMeta};
use super::{file_len, persist_with, MapFileMeta, CHUNK_BYTES};
use crate::LsnMap;

/// What a flush wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flushed {
    /// A whole map file, with no delta records after it yet.
    Full { bytes: u64 },
    /// One delta record of `regions` dirty regions.
    Delta { bytes: u64, regions: u64 },
}

/// A nonce for a new full file: random, never 0, never `previous`.
fn new_nonce(previous: u64) -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64);
    hasher.write_u64(now);
    hasher.write_u64(previous);
    hasher.write_u32(std::process::id());
    match hasher.finish() {
        0 => 1,
        nonce if nonce == previous => nonce.wrapping_add(2) | 1,
        nonce => nonce,
    }
}

/// Writes the map to `dir` for the checkpoint `meta` describes (its
/// `base_nonce` is chosen here), through `after_chunk` (see
/// [`super::write_map_with`]). On error nothing written is trusted and
/// the next flush writes a full map.
pub fn flush_map(
    dir: &Path,
    map: &LsnMap<'_>,
    meta: &MapFileMeta,
    after_chunk: &mut dyn FnMut(usize) -> io::Result<()>,
) -> io::Result<Flushed> {
    if let Some((nonce, len)) = map.delta_position() {
        let regions = map.dirty_regions().count();
        let bound = delta::record_len_bound(regions);
        if len.saturating_add(bound) <= file_len(meta.slot_count) / 2 {
            match append_record(dir, map, meta, nonce, len, after_chunk) {
                Ok(Some(bytes)) => {
                    map.set_delta_position(Some((nonce, len + bytes)));
                    return Ok(Flushed::Delta { bytes, regions });
                }
                // The map file is gone: a full write replaces it.
                Ok(None) => {}
                Err(error) => {
                    map.set_delta_position(None);
                    return Err(error);
                }
            }
        }
    }
    let previous = map.delta_position().map_or(0, |(nonce, _)| nonce);
    map.set_delta_position(None);
    // Every word is read after this, so every bit may go.
    map.dirty_regions().take_all();
    let meta = MapFileMeta {
        base_nonce: new_nonce(previous),
        ..*meta
    };
    persist_with(dir, &meta, map.words(), after_chunk)?;
    map.set_delta_position(Some((meta.base_nonce, 0)));
    Ok(Flushed::Full {
        bytes: file_len(meta.slot_count),
    })
}

/// Appends a record at `offset` of the delta records of the map file;
/// `None` if the file does not exist.
fn append_record(
    dir: &Path,
    map: &LsnMap<'_>,
    meta: &MapFileMeta,
    nonce: u64,
    offset: u64,
    after_chunk: &mut dyn FnMut(usize) -> io::Result<()>,
) -> io::Result<Option<u64>> {
    let mut file = match OpenOptions::new()
        .write(true)
        .open(dir.join(meta.mode().map_file_name()))
    {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let base_len = file_len(meta.slot_count);
    file.seek(SeekFrom::Start(base_len + offset))?;
    let record = RecordMeta {
        init_lsn: meta.init_lsn,
        checkpoint_redo: meta.checkpoint_redo,
        wal_tracked_through: meta.wal_tracked_through,
        side_forks_tracked_from: meta.side_forks_tracked_from,
    };
    let mut writer = io::BufWriter::with_capacity(CHUNK_BYTES, &mut file);
    let written = delta::write_record(
        &mut writer,
        nonce,
        offset,
        &record,
        map,
        CHUNK_BYTES,
        after_chunk,
    )
    .and_then(|bytes| writer.flush().map(|()| bytes));
    // A failed record's buffered bytes are dropped, not written on drop:
    // nothing of a failed flush is completed behind its back.
    let (_, _unwritten) = writer.into_parts();
    let bytes = written?;
    // Whatever a failed append left after the records goes.
    file.set_len(base_len + offset + bytes)?;
    file.sync_data()?;
    Ok(Some(bytes))
}

#[cfg(test)]
#[path = "flush_tests.rs"]
mod tests;
