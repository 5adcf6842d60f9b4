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

/// Reads the header of the map file `path`, `None` when there is no such
/// file. Panics on a file that does not start with the map's magic.
pub fn map_header_of(path: &Path) -> Option<MapHeader> {
    let bytes = fs::read(path).ok()?;
    assert!(
        bytes.len() >= 64 && &bytes[0..8] == b"PTRACKMP",
        "{} is not a ptrack map ({} bytes)",
        path.display(),
        bytes.len()
    );
    let u64_at = |off: usize| u64::from_le_bytes(bytes[off..off + 8].try_into().expect("8 bytes"));
    Some(MapHeader {
        system_identifier: u64_at(16),
        init_lsn: Lsn(u64_at(32)),
        checkpoint_redo: Lsn(u64_at(40)),
        data_checksum_version: u32::from_le_bytes(bytes[48..52].try_into().expect("4 bytes")),
    })
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
