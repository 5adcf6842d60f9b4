//! ptrack's map files: the map file in `global/` (its name in each mode, its
//! header), the temporary file of a flush, and the live map in tmpfs.

use std::fs;
use std::path::{Path, PathBuf};

use super::{tracking_mode, Cluster, Lsn};

/// The map file's name in `global/` in the mode under test: hook mode uses C
/// ptrack's name; WAL mode one that unpatched tools take for a temporary file.
pub fn map_file_name() -> &'static str {
    match tracking_mode() {
        "wal" => "pgsql_tmp_ptrack.map",
        _ => "ptrack.map",
    }
}

impl Cluster {
    /// Path of ptrack's map file: the one of the mode under test
    /// ([`map_file_name`]).
    pub fn map_path(&self) -> PathBuf {
        self.pgdata.join("global").join(map_file_name())
    }

    /// `global/ptrack.map.tmp`.
    pub fn temp_map_path(&self) -> PathBuf {
        self.pgdata.join("global").join("ptrack.map.tmp")
    }

    /// The live map file in tmpfs (`/dev/shm/ptrack.*.map`), if it exists.
    pub fn live_map_file(&self) -> Option<PathBuf> {
        live_map_path(&self.pgdata).filter(|p| p.exists())
    }
}

/// The server's live map file for a data directory, named as the extension
/// names it: `/dev/shm/ptrack.<system identifier>.<dev>.<inode>.map`.
pub fn live_map_path(pgdata: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let control = fs::read(pgdata.join("global/pg_control")).ok()?;
    let system_identifier = u64::from_le_bytes(control.get(0..8)?.try_into().ok()?);
    let dir = fs::metadata(pgdata).ok()?;
    Some(PathBuf::from(format!(
        "/dev/shm/ptrack.{system_identifier}.{}.{}.map",
        dir.dev(),
        dir.ino()
    )))
}

/// The fields of a `global/ptrack.map` header the tests look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapHeader {
    pub system_identifier: u64,
    pub init_lsn: Lsn,
    pub checkpoint_redo: Lsn,
    pub data_checksum_version: u32,
}

/// Reads the header of the map file of the mode under test in
/// `<pgdata>/global`, `None` when there is no such file.
pub fn map_header(pgdata: &Path) -> Option<MapHeader> {
    map_header_of(&pgdata.join("global").join(map_file_name()))
}

/// Bytes of a map file's full part for `slot_count` slots (format 3): the
/// header (80), the slots, the cut table (three words per 512 slots, 64 to
/// 2^22 entries), the trailer (8). Delta records follow it.
pub fn full_part_len(slot_count: u64) -> usize {
    80 + 8 * (slot_count + (slot_count / 512).clamp(64, 1 << 22) * 3) as usize + 8
}

/// Reads the header of the map file `path` as its delta records update it
/// (the last whole record), `None` when there is no such file. Panics on a
/// file that does not start with the map's magic.
pub fn map_header_of(path: &Path) -> Option<MapHeader> {
    let bytes = fs::read(path).ok()?;
    assert!(
        bytes.len() >= 80 && &bytes[0..8] == b"PTRACKMP",
        "{} is not a ptrack map ({} bytes)",
        path.display(),
        bytes.len()
    );
    let u64_at = |off: usize| u64::from_le_bytes(bytes[off..off + 8].try_into().expect("8 bytes"));
    let mut header = MapHeader {
        system_identifier: u64_at(16),
        init_lsn: Lsn(u64_at(32)),
        checkpoint_redo: Lsn(u64_at(40)),
        data_checksum_version: u32::from_le_bytes(bytes[48..52].try_into().expect("4 bytes")),
    };
    let base_len = full_part_len(u64_at(24)).min(bytes.len());
    for (init, redo) in delta_records(&bytes[base_len..], u64_at(64)) {
        header.init_lsn = init;
        header.checkpoint_redo = redo;
    }
    Some(header)
}

/// (init LSN, REDO) of each whole delta record in `delta` (what follows a
/// map file's full part) that continues the full part `nonce`, in order. Read here from the format as
/// the core's documentation gives it, not with the core's reader.
pub fn delta_records(delta: &[u8], nonce: u64) -> Vec<(Lsn, Lsn)> {
    let u64_at = |off: usize| -> Option<u64> {
        Some(u64::from_le_bytes(
            delta.get(off..off + 8)?.try_into().ok()?,
        ))
    };
    let mut records = Vec::new();
    let mut at = 0usize;
    while delta.get(at..at + 8) == Some(b"PTRKDLTA".as_slice())
        && u64_at(at + 8) == Some(nonce)
        && u64_at(at + 16) == Some(at as u64)
    {
        // Runs of (first word, count, words) up to the (u64::MAX, 0) end.
        let mut run = at + 64;
        let end = loop {
            match (u64_at(run), u64_at(run + 8)) {
                (Some(u64::MAX), Some(0)) => break Some(run + 16),
                (Some(_), Some(count)) if count > 0 && count < (1 << 40) => {
                    run += 16 + 8 * count as usize;
                }
                _ => break None,
            }
        };
        let Some(crc_at) = end else { break };
        let Some(stored) = delta.get(crc_at..crc_at + 4) else {
            break;
        };
        if crc32fast::hash(&delta[at..crc_at]).to_le_bytes() != stored {
            break;
        }
        records.push((Lsn(u64_at(at + 24).unwrap()), Lsn(u64_at(at + 32).unwrap())));
        at = crc_at + 8;
    }
    records
}

/// Names of ptrack's map files in `<pgdata>/global`, of either mode
/// (`ptrack.map*`, `pgsql_tmp_ptrack.map*`).
pub fn map_files(pgdata: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(pgdata.join("global"))
        .unwrap_or_else(|e| panic!("readdir {}/global: {e}", pgdata.display()))
        .map(|e| {
            e.expect("readdir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.starts_with("ptrack") || n.starts_with("pgsql_tmp_ptrack"))
        .collect();
    names.sort();
    names
}
