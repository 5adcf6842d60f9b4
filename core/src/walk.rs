//! The data-directory walk: which segment files exist, and which of their
//! blocks the map reports as changed.

use std::fs;
use std::io;
use std::path::Path;

use crate::block::RelFileKey;
use crate::lsn::Lsn;
use crate::map::LsnMap;
use crate::relfile::{
    parse_database_dir, parse_oid, parse_relation_file_name, segment_file_name, DatabaseDir,
    RelFileName,
};
use crate::relfile::{DEFAULT_TABLESPACE_OID, GLOBAL_TABLESPACE_OID};

/// The server's storage geometry and naming, from its build.
#[derive(Clone, Debug)]
pub struct Layout {
    /// `BLCKSZ`.
    pub block_size: u32,
    /// `RELSEG_SIZE`: blocks per segment file.
    pub segment_blocks: u32,
    /// `TABLESPACE_VERSION_DIRECTORY`, like `PG_17_202406281`.
    pub tablespace_version_dir: String,
}

/// One segment file of one relation fork.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentFile {
    /// Relative to PGDATA, e.g. `base/5/16384.1`.
    pub path: String,
    pub key: RelFileKey,
    pub segment: u32,
    /// Blocks in the file now; a partial last block counts.
    pub blocks: u32,
}

/// The changed blocks of one segment file, as `ptrack_get_pagemapset` returns them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentPagemap {
    pub path: String,
    /// Set bits in `pagemap`.
    pub pagecount: u64,
    /// Bit `b % 8` of byte `b / 8` is block `b` of the segment; trailing zero
    /// bytes are omitted.
    pub pagemap: Vec<u8>,
}

fn read_dir_if_exists(path: &Path) -> io::Result<Vec<fs::DirEntry>> {
    match fs::read_dir(path) {
        Ok(entries) => entries.collect(),
        // A database or tablespace dropped during the walk has nothing to report.
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(error) => Err(error),
    }
}

fn file_names_sorted(path: &Path) -> io::Result<Vec<String>> {
    let mut names: Vec<String> = read_dir_if_exists(path)?
        .into_iter()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    names.sort_unstable();
    Ok(names)
}

/// Every database directory: `global`, `base/*`, `pg_tblspc/*/<version dir>/*`.
pub fn database_dirs(pgdata: &Path, layout: &Layout) -> io::Result<Vec<DatabaseDir>> {
    let mut dirs = vec![DatabaseDir {
        tablespace: GLOBAL_TABLESPACE_OID,
        database: 0,
    }];
    for name in file_names_sorted(&pgdata.join("base"))? {
        if let Some(database) = parse_oid(&name) {
            dirs.push(DatabaseDir {
                tablespace: DEFAULT_TABLESPACE_OID,
                database,
            });
        }
    }
    for name in file_names_sorted(&pgdata.join("pg_tblspc"))? {
        let Some(tablespace) = parse_oid(&name) else {
            continue;
        };
        let version_dir = pgdata
            .join("pg_tblspc")
            .join(&name)
            .join(&layout.tablespace_version_dir);
        for db in file_names_sorted(&version_dir)? {
            if let Some(database) = parse_oid(&db) {
                dirs.push(DatabaseDir {
                    tablespace,
                    database,
                });
            }
        }
    }
    Ok(dirs)
}

/// The relation segment files of one database directory, by name.
pub fn segment_files_in(
    pgdata: &Path,
    dir: &DatabaseDir,
    layout: &Layout,
) -> io::Result<Vec<SegmentFile>> {
    let relative_dir = dir.relative_path(&layout.tablespace_version_dir);
    let absolute_dir = pgdata.join(&relative_dir);
    let mut files = Vec::new();
    for name in file_names_sorted(&absolute_dir)? {
        files.extend(segment_file(
            &absolute_dir,
            &relative_dir,
            dir,
            &name,
            layout,
        )?);
    }
    Ok(files)
}

/// The segment file `name` of database directory `dir`, if it is one and
/// still exists.
fn segment_file(
    absolute_dir: &Path,
    relative_dir: &str,
    dir: &DatabaseDir,
    name: &str,
    layout: &Layout,
) -> io::Result<Option<SegmentFile>> {
    let Some(parsed) = parse_relation_file_name(name) else {
        return Ok(None);
    };
    let len = match fs::metadata(absolute_dir.join(name)) {
        Ok(metadata) if metadata.is_file() => metadata.len(),
        Ok(_) => return Ok(None),
        // Dropped or truncated away since the listing.
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let blocks = len.div_ceil(u64::from(layout.block_size));
    Ok(Some(SegmentFile {
        path: format!("{relative_dir}/{name}"),
        key: dir.file_key(&parsed),
        segment: parsed.segment,
        blocks: u32::try_from(blocks).unwrap_or(u32::MAX),
    }))
}

/// Every relation segment file of the cluster, one at a time and in no
/// particular order: memory stays bounded however many files a directory
/// holds (only the list of database directories is collected).
pub fn stream_segment_files<'a>(
    pgdata: &'a Path,
    layout: &'a Layout,
) -> io::Result<impl Iterator<Item = io::Result<SegmentFile>> + 'a> {
    let dirs = database_dirs(pgdata, layout)?;
    Ok(dirs.into_iter().flat_map(move |dir| {
        let relative_dir = dir.relative_path(&layout.tablespace_version_dir);
        let absolute_dir = pgdata.join(&relative_dir);
        let entries: Box<dyn Iterator<Item = io::Result<fs::DirEntry>>> =
            match fs::read_dir(&absolute_dir) {
                Ok(entries) => Box::new(entries),
                // A database or tablespace dropped during the walk.
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    Box::new(std::iter::empty())
                }
                Err(error) => Box::new(std::iter::once(Err(error))),
            };
        entries.filter_map(move |entry| {
            let name = match entry {
                Ok(entry) => entry.file_name().into_string().ok()?,
                Err(error) => return Some(Err(error)),
            };
            segment_file(&absolute_dir, &relative_dir, &dir, &name, layout).transpose()
        })
    }))
}

/// Every relation segment file of the cluster, in path order per directory.
pub fn segment_files(pgdata: &Path, layout: &Layout) -> io::Result<Vec<SegmentFile>> {
    let mut files = Vec::new();
    for dir in database_dirs(pgdata, layout)? {
        files.extend(segment_files_in(pgdata, &dir, layout)?);
    }
    Ok(files)
}

/// The changed blocks of `file` since `since`, or `None` when there are none.
pub fn segment_pagemap(
    map: &LsnMap<'_>,
    file: &SegmentFile,
    since: Lsn,
    layout: &Layout,
) -> Option<SegmentPagemap> {
    let query = map.file_query(&file.key, since);
    let mut pagemap = Vec::new();
    let mut pagecount = 0u64;
    let mut set = |offset: u32| {
        let byte = (offset / 8) as usize;
        if pagemap.len() <= byte {
            pagemap.resize(byte + 1, 0);
        }
        pagemap[byte] |= 1 << (offset % 8);
        pagecount += 1;
    };
    match file.segment.checked_mul(layout.segment_blocks) {
        Some(first) if first.checked_add(file.blocks).is_some() => {
            query.for_each_changed(first, file.blocks, |block| set(block - first));
        }
        // A segment number so large that its blocks overflow cannot be hashed
        // as PostgreSQL names them: report such a file whole rather than guess.
        _ => (0..file.blocks).for_each(&mut set),
    }
    (pagecount > 0).then(|| SegmentPagemap {
        path: file.path.clone(),
        pagecount,
        pagemap,
    })
}

/// What [`mark_copied_directory`] marked.
#[derive(Debug, Default)]
pub struct CopiedDirectory {
    pub blocks: u64,
    /// Every relation fork of the directory: each counts as created (cut at
    /// block 0) for WAL mode's cut table, as PostgreSQL's summarizer counts a
    /// copied database.
    pub forks: Vec<RelFileKey>,
}

/// Marks every block of every relation file in a database directory that was
/// just copied whole (`CREATE DATABASE … STRATEGY file_copy`, `ALTER DATABASE
/// … SET TABLESPACE`, and their redo).
///
/// An error means some blocks may be unmarked: the caller must then make the
/// map forget everything before `lsn`.
pub fn mark_copied_directory(
    map: &LsnMap<'_>,
    pgdata: &Path,
    relative_dir: &str,
    layout: &Layout,
    lsn: Lsn,
) -> io::Result<CopiedDirectory> {
    let dir =
        parse_database_dir(relative_dir, &layout.tablespace_version_dir).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not a database directory: {relative_dir}"),
            )
        })?;
    let mut copied = CopiedDirectory::default();
    for file in segment_files_in(pgdata, &dir, layout)? {
        if file.segment == 0 {
            copied.forks.push(file.key);
        }
        let first = u64::from(file.segment) * u64::from(layout.segment_blocks);
        for block in first..first + u64::from(file.blocks) {
            let block = u32::try_from(block).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("block beyond 2^32 in {}", file.path),
                )
            })?;
            map.mark(&file.key.block(block), lsn);
            copied.blocks += 1;
        }
    }
    Ok(copied)
}

/// The length in blocks of relation fork `file` now, over all its segments;
/// `None` when its first segment does not exist (the fork is gone).
pub fn fork_blocks(pgdata: &Path, file: &RelFileKey, layout: &Layout) -> io::Result<Option<u32>> {
    let dir = DatabaseDir {
        tablespace: file.tablespace,
        database: file.database,
    };
    let dir = pgdata.join(dir.relative_path(&layout.tablespace_version_dir));
    let segment_bytes = u64::from(layout.segment_blocks) * u64::from(layout.block_size);
    let mut blocks = 0u64;
    for segment in 0u32.. {
        let name = segment_file_name(&RelFileName {
            relfilenode: file.relfilenode,
            fork: file.fork,
            segment,
        });
        let len = match fs::metadata(dir.join(name)) {
            Ok(metadata) => metadata.len(),
            Err(error) if error.kind() == io::ErrorKind::NotFound && segment == 0 => {
                return Ok(None)
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => break,
            Err(error) => return Err(error),
        };
        blocks += len.div_ceil(u64::from(layout.block_size));
        // A segment short of full is the last; md.c keeps the later ones
        // only as empty files after a truncation, which add nothing.
        if len < segment_bytes {
            break;
        }
    }
    Ok(Some(u32::try_from(blocks).unwrap_or(u32::MAX)))
}

/// Convenience for tests and tools: the name of a segment file's relation.
pub fn relation_file_name(file: &SegmentFile) -> RelFileName {
    RelFileName {
        relfilenode: file.key.relfilenode,
        fork: file.key.fork,
        segment: file.segment,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::Fork;
    use crate::map::OwnedLsnMap;
    use std::path::PathBuf;

    const VERSION_DIR: &str = "PG_17_202406281";

    fn layout() -> Layout {
        Layout {
            block_size: 8192,
            segment_blocks: 4,
            tablespace_version_dir: VERSION_DIR.into(),
        }
    }

    struct TempDir(PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn data_dir(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("ptrack-walk-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        for dir in [
            "global",
            "base/1",
            "base/5",
            "pg_tblspc/16400/PG_17_202406281/5",
            "pg_wal",
        ] {
            fs::create_dir_all(path.join(dir)).unwrap();
        }
        let write = |rel: &str, blocks: u64| {
            fs::write(path.join(rel), vec![0u8; (blocks * 8192) as usize]).unwrap()
        };
        write("global/1262", 1);
        write("global/pg_control", 1);
        write("base/5/16384", 4);
        write("base/5/16384.1", 2);
        write("base/5/16384_fsm", 3);
        write("base/5/16384_vm", 1);
        write("base/5/t3_16390", 2);
        write("base/5/PG_VERSION", 0);
        write("base/1/1259", 1);
        write("pg_tblspc/16400/PG_17_202406281/5/16500", 2);
        write("pg_wal/000000010000000000000001", 1);
        TempDir(path)
    }

    #[test]
    fn lists_relation_segments_only() {
        let dir = data_dir("list");
        let files = segment_files(&dir.0, &layout()).unwrap();
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "global/1262",
                "base/1/1259",
                "base/5/16384",
                "base/5/16384.1",
                "base/5/16384_fsm",
                "base/5/16384_vm",
                "pg_tblspc/16400/PG_17_202406281/5/16500",
            ]
        );
        let segment1 = &files[3];
        assert_eq!((segment1.segment, segment1.blocks), (1, 2));
        assert_eq!(
            segment1.key,
            RelFileKey {
                tablespace: 1663,
                database: 5,
                relfilenode: 16384,
                fork: Fork::Main
            }
        );
        assert_eq!(files[6].key.tablespace, 16400);
        assert_eq!(
            files[0].key,
            RelFileKey {
                tablespace: 1664,
                database: 0,
                relfilenode: 1262,
                fork: Fork::Main
            }
        );
    }

    #[test]
    fn the_stream_lists_what_the_sorted_walk_lists() {
        let dir = data_dir("stream");
        let mut streamed: Vec<SegmentFile> = stream_segment_files(&dir.0, &layout())
            .unwrap()
            .collect::<io::Result<_>>()
            .unwrap();
        streamed.sort_by(|a, b| a.path.cmp(&b.path));
        let mut sorted = segment_files(&dir.0, &layout()).unwrap();
        sorted.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(streamed, sorted);
    }

    #[test]
    fn pagemap_bits_are_segment_relative() {
        let dir = data_dir("bits");
        let owned = OwnedLsnMap::new(1 << 16);
        let map = owned.view();
        map.start_tracking_at(Lsn(10));
        let key = RelFileKey {
            tablespace: 1663,
            database: 5,
            relfilenode: 16384,
            fork: Fork::Main,
        };
        map.mark(&key.block(5), Lsn(100)); // segment 1 (4 blocks per segment), offset 1
        let files = segment_files(&dir.0, &layout()).unwrap();
        let by_path = |p: &str| files.iter().find(|f| f.path == p).unwrap();
        assert_eq!(
            segment_pagemap(&map, by_path("base/5/16384"), Lsn(50), &layout()),
            None
        );
        let seg1 = segment_pagemap(&map, by_path("base/5/16384.1"), Lsn(50), &layout()).unwrap();
        assert_eq!((seg1.pagecount, seg1.pagemap.clone()), (1, vec![0b10]));
        // Free space map forks are reported whole.
        let fsm = segment_pagemap(&map, by_path("base/5/16384_fsm"), Lsn(50), &layout()).unwrap();
        assert_eq!((fsm.pagecount, fsm.pagemap), (3, vec![0b111]));
        // Before the init LSN everything is reported.
        let all = segment_pagemap(&map, by_path("base/5/16384"), Lsn(9), &layout()).unwrap();
        assert_eq!((all.pagecount, all.pagemap), (4, vec![0b1111]));
    }

    #[test]
    fn marks_every_block_of_a_copied_database() {
        let dir = data_dir("copy");
        let owned = OwnedLsnMap::new(1 << 16);
        let map = owned.view();
        map.start_tracking_at(Lsn(1));
        let marked = mark_copied_directory(
            &map,
            &dir.0,
            "pg_tblspc/16400/PG_17_202406281/5",
            &layout(),
            Lsn(77),
        )
        .unwrap();
        assert_eq!(marked.blocks, 2);
        let marked = mark_copied_directory(&map, &dir.0, "base/5", &layout(), Lsn(77)).unwrap();
        assert_eq!(marked.blocks, 4 + 2 + 3 + 1);
        let fork = |relfilenode, fork| RelFileKey {
            tablespace: 1663,
            database: 5,
            relfilenode,
            fork,
        };
        assert_eq!(
            marked.forks,
            [
                fork(16384, Fork::Main),
                fork(16384, Fork::FreeSpace),
                fork(16384, Fork::Visibility)
            ],
            "each fork once, whatever its segments"
        );
        for file in segment_files(&dir.0, &layout()).unwrap() {
            let expected = file.path.starts_with("base/5") || file.path.starts_with("pg_tblspc");
            let reported =
                segment_pagemap(&map, &file, Lsn(77), &layout()).map_or(0, |p| p.pagecount);
            let always = file.key.fork.not_wal_logged();
            assert_eq!(
                reported == u64::from(file.blocks),
                expected || always,
                "{}",
                file.path
            );
        }
        assert!(mark_copied_directory(&map, &dir.0, "pg_wal", &layout(), Lsn(78)).is_err());
    }

    #[test]
    fn a_missing_database_directory_is_empty() {
        let dir = data_dir("missing");
        let owned = OwnedLsnMap::new(8);
        assert_eq!(
            mark_copied_directory(&owned.view(), &dir.0, "base/999", &layout(), Lsn(5))
                .unwrap()
                .blocks,
            0
        );
    }

    #[test]
    fn a_fork_length_counts_every_segment() {
        let dir = data_dir("length");
        let fork = |tablespace, relfilenode, fork| RelFileKey {
            tablespace,
            database: 5,
            relfilenode,
            fork,
        };
        let blocks = |file: RelFileKey| fork_blocks(&dir.0, &file, &layout()).unwrap();
        assert_eq!(blocks(fork(1663, 16384, Fork::Main)), Some(4 + 2));
        assert_eq!(blocks(fork(1663, 16384, Fork::FreeSpace)), Some(3));
        assert_eq!(blocks(fork(16400, 16500, Fork::Main)), Some(2));
        assert_eq!(blocks(fork(1663, 16384, Fork::Init)), None, "no such fork");
        assert_eq!(blocks(fork(1663, 99, Fork::Main)), None);
        // A truncated relation's later segments stay as empty files.
        fs::write(dir.0.join("base/5/16384"), vec![0u8; 8192]).unwrap();
        fs::write(dir.0.join("base/5/16384.1"), []).unwrap();
        assert_eq!(blocks(fork(1663, 16384, Fork::Main)), Some(1));
    }
}
