//! Relation files in a data directory.
//!
//! PostgreSQL stores fork `f` of relation `r` as `<dir>/<r><suffix(f)>`, cut into
//! segments of `segment_blocks` blocks: segment 0 has no extension, segment
//! `n > 0` is `.n`. The directory names the tablespace and database:
//!
//! * `global/` — shared catalogs: tablespace 1664, database 0;
//! * `base/<db>/` — the default tablespace 1663;
//! * `pg_tblspc/<spc>/<version dir>/<db>/` — other tablespaces.

use crate::block::{Fork, RelFileKey};

pub const DEFAULT_TABLESPACE_OID: u32 = 1663;
pub const GLOBAL_TABLESPACE_OID: u32 = 1664;

/// A parsed relation file name such as `16384_vm.2`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelFileName {
    pub relfilenode: u32,
    pub fork: Fork,
    pub segment: u32,
}

/// A decimal OID: digits only, no sign, no leading zero, non-zero, fits u32.
pub fn parse_oid(text: &str) -> Option<u32> {
    if text.is_empty() || text.starts_with('0') || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Parses the name of a permanent relation's file; `None` for anything else
/// (temporary relations `t<backend>_<node>`, `pg_filenode.map`, `PG_VERSION`, …).
pub fn parse_relation_file_name(name: &str) -> Option<RelFileName> {
    let (stem, segment) = match name.split_once('.') {
        Some((stem, segment)) => (stem, parse_oid(segment)?),
        None => (name, 0),
    };
    let (node, fork) = match stem.split_once('_') {
        Some((node, suffix)) => {
            let fork = Fork::ALL
                .into_iter()
                .find(|f| f.file_suffix().strip_prefix('_') == Some(suffix))?;
            (node, fork)
        }
        None => (stem, Fork::Main),
    };
    Some(RelFileName {
        relfilenode: parse_oid(node)?,
        fork,
        segment,
    })
}

/// The directory part of a relation file's path: tablespace and database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DatabaseDir {
    pub tablespace: u32,
    pub database: u32,
}

impl DatabaseDir {
    pub fn file_key(&self, name: &RelFileName) -> RelFileKey {
        RelFileKey {
            tablespace: self.tablespace,
            database: self.database,
            relfilenode: name.relfilenode,
            fork: name.fork,
        }
    }

    /// The directory's path relative to PGDATA, as PostgreSQL's `GetDatabasePath`.
    pub fn relative_path(&self, tablespace_version_dir: &str) -> String {
        match self.tablespace {
            GLOBAL_TABLESPACE_OID => "global".to_owned(),
            DEFAULT_TABLESPACE_OID => format!("base/{}", self.database),
            spc => format!("pg_tblspc/{spc}/{tablespace_version_dir}/{}", self.database),
        }
    }
}

/// Parses a database directory path relative to PGDATA, as `copydir` receives
/// it: `global`, `base/<db>` or `pg_tblspc/<spc>/<version dir>/<db>`. Trailing
/// and doubled slashes and a leading `./` are accepted.
pub fn parse_database_dir(path: &str, tablespace_version_dir: &str) -> Option<DatabaseDir> {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    match parts.as_slice() {
        ["global"] => Some(DatabaseDir {
            tablespace: GLOBAL_TABLESPACE_OID,
            database: 0,
        }),
        ["base", db] => Some(DatabaseDir {
            tablespace: DEFAULT_TABLESPACE_OID,
            database: parse_oid(db)?,
        }),
        ["pg_tblspc", spc, version, db] if *version == tablespace_version_dir => {
            Some(DatabaseDir {
                tablespace: parse_oid(spc)?,
                database: parse_oid(db)?,
            })
        }
        _ => None,
    }
}

/// The file name of a segment, e.g. `16384_fsm.2`.
pub fn segment_file_name(name: &RelFileName) -> String {
    let suffix = name.fork.file_suffix();
    match name.segment {
        0 => format!("{}{suffix}", name.relfilenode),
        n => format!("{}{suffix}.{n}", name.relfilenode),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(relfilenode: u32, fork: Fork, segment: u32) -> RelFileName {
        RelFileName {
            relfilenode,
            fork,
            segment,
        }
    }

    #[test]
    fn parses_relation_files() {
        assert_eq!(
            parse_relation_file_name("16384"),
            Some(name(16384, Fork::Main, 0))
        );
        assert_eq!(
            parse_relation_file_name("16384.1"),
            Some(name(16384, Fork::Main, 1))
        );
        assert_eq!(
            parse_relation_file_name("16384_fsm"),
            Some(name(16384, Fork::FreeSpace, 0))
        );
        assert_eq!(
            parse_relation_file_name("16384_vm.12"),
            Some(name(16384, Fork::Visibility, 12))
        );
        assert_eq!(
            parse_relation_file_name("1259_init"),
            Some(name(1259, Fork::Init, 0))
        );
        assert_eq!(
            parse_relation_file_name("4294967295"),
            Some(name(u32::MAX, Fork::Main, 0))
        );
    }

    #[test]
    fn rejects_everything_else() {
        for other in [
            "t3_16384",
            "t3_16384_fsm",
            "pg_filenode.map",
            "PG_VERSION",
            "pg_internal.init",
            "ptrack.map",
            "ptrack.map.tmp",
            "16384_foo",
            "16384.",
            "16384.0",
            "16384.01",
            "0",
            "016384",
            "16384_",
            "_fsm",
            "",
            "4294967296",
            "16384_fsm_vm",
            "16384.1.2",
            "-1",
        ] {
            assert_eq!(parse_relation_file_name(other), None, "{other:?}");
        }
    }

    #[test]
    fn names_round_trip() {
        for fork in Fork::ALL {
            for segment in [0, 1, 77] {
                let n = name(24576, fork, segment);
                assert_eq!(parse_relation_file_name(&segment_file_name(&n)), Some(n));
            }
        }
    }

    #[test]
    fn parses_database_dirs() {
        let v = "PG_17_202406281";
        let dir = |spc, db| {
            Some(DatabaseDir {
                tablespace: spc,
                database: db,
            })
        };
        assert_eq!(parse_database_dir("base/16390", v), dir(1663, 16390));
        assert_eq!(parse_database_dir("./base/16390/", v), dir(1663, 16390));
        assert_eq!(parse_database_dir("global", v), dir(1664, 0));
        assert_eq!(
            parse_database_dir("pg_tblspc/16385/PG_17_202406281/16390", v),
            dir(16385, 16390)
        );
        assert_eq!(
            parse_database_dir("pg_tblspc/16385/PG_16_202307071/16390", v),
            None
        );
        assert_eq!(parse_database_dir("base", v), None);
        assert_eq!(parse_database_dir("base/x", v), None);
        assert_eq!(parse_database_dir("pg_wal", v), None);
        for d in [
            DatabaseDir {
                tablespace: 1663,
                database: 5,
            },
            DatabaseDir {
                tablespace: 1664,
                database: 0,
            },
            DatabaseDir {
                tablespace: 16385,
                database: 16390,
            },
        ] {
            assert_eq!(parse_database_dir(&d.relative_path(v), v), Some(d));
        }
    }
}
