//! What a backup leaves out of the data directory, as `pg_basebackup` does
//! (`src/backend/backup/basebackup.c`: `excludeDirContents`, `excludeFiles`,
//! temporary files and relations, unlogged relations' data forks).

use ptrack_core::relfile::{parse_oid, parse_relation_file_name};
use ptrack_core::Fork;

/// Directories kept empty: their contents are rebuilt or meaningless after
/// a restore. `pg_wal` too: the backup gets its WAL separately.
const DIRS_KEPT_EMPTY: &[&str] = &[
    "pg_stat_tmp",
    "pg_replslot",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_subtrans",
];

/// Files left out wherever they are (exact names).
const FILES_EXCLUDED: &[&str] = &[
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
    "backup_label",
    "tablespace_map",
    "backup_manifest",
    "postmaster.pid",
    "postmaster.opts",
    ".DS_Store",
];

/// Files left out by name prefix: the relation cache init files, and
/// ptrack's maps (`ptrack.map`, `ptrack.map.tmp`, …), local to the server.
const PREFIXES_EXCLUDED: &[&str] = &["pg_internal.init", "ptrack.map"];

/// `pgsql_tmp*`: temporary files and directories, including ptrack's WAL-mode
/// map `global/pgsql_tmp_ptrack.map`.
const TEMP_PREFIX: &str = "pgsql_tmp";

/// What to do with one directory entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Skip,
    /// A directory created in the backup but not descended into.
    EmptyDir,
    Include,
}

/// Decides for the entry `name` in directory `parent` (relative to PGDATA,
/// `""` for the top).
pub fn decide(parent: &str, name: &str, is_dir: bool) -> Decision {
    if name.starts_with(TEMP_PREFIX)
        || FILES_EXCLUDED.contains(&name)
        || PREFIXES_EXCLUDED.iter().any(|p| name.starts_with(p))
    {
        return Decision::Skip;
    }
    if is_dir && (DIRS_KEPT_EMPTY.contains(&name) || (parent.is_empty() && name == "pg_wal")) {
        return Decision::EmptyDir;
    }
    if !is_dir && is_database_dir(parent) && looks_like_temp_relation(name) {
        return Decision::Skip;
    }
    Decision::Include
}

/// `global`, `base/<oid>`, `pg_tblspc/<oid>/<version dir>/<oid>`: where
/// relation files live.
pub fn is_database_dir(path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        ["global"] => true,
        ["base", db] => parse_oid(db).is_some(),
        ["pg_tblspc", spc, version, db] => {
            parse_oid(spc).is_some() && version.starts_with("PG_") && parse_oid(db).is_some()
        }
        _ => false,
    }
}

/// `t<backend>_<relfilenode>[_fork][.segment]`, as `looks_like_temp_rel_name`.
pub fn looks_like_temp_relation(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('t') else {
        return false;
    };
    let Some((backend, relation)) = rest.split_once('_') else {
        return false;
    };
    !backend.is_empty()
        && backend.bytes().all(|b| b.is_ascii_digit())
        && parse_relation_file_name(relation).is_some()
}

/// For a data-fork file of a relation, the name of its init fork: when that
/// exists the relation is unlogged and only the init fork is backed up.
pub fn init_fork_name(name: &str) -> Option<String> {
    let file = parse_relation_file_name(name)?;
    (file.fork != Fork::Init).then(|| format!("{}_init", file.relfilenode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_what_pg_basebackup_skips() {
        for name in [
            "postmaster.pid",
            "postmaster.opts",
            "backup_label",
            "tablespace_map",
            "backup_manifest",
            "postgresql.auto.conf.tmp",
            "current_logfiles.tmp",
            "pgsql_tmp",
        ] {
            assert_eq!(decide("", name, false), Decision::Skip, "{name}");
        }
        assert_eq!(decide("global", "ptrack.map", false), Decision::Skip);
        assert_eq!(decide("global", "ptrack.map.tmp", false), Decision::Skip);
        assert_eq!(
            decide("global", "pgsql_tmp_ptrack.map", false),
            Decision::Skip
        );
        assert_eq!(decide("base/5", "pg_internal.init", false), Decision::Skip);
        assert_eq!(
            decide("global", "pg_internal.init.123", false),
            Decision::Skip
        );
        assert_eq!(decide("base", "pgsql_tmp", true), Decision::Skip);
        assert_eq!(decide("base/5", "t3_16384", false), Decision::Skip);
        assert_eq!(decide("base/5", "t3_16384_fsm.1", false), Decision::Skip);
    }

    #[test]
    fn keeps_some_directories_empty() {
        for name in [
            "pg_wal",
            "pg_replslot",
            "pg_stat_tmp",
            "pg_subtrans",
            "pg_notify",
        ] {
            assert_eq!(decide("", name, true), Decision::EmptyDir, "{name}");
        }
        // Only the top-level pg_wal is special.
        assert_eq!(decide("base", "pg_wal", true), Decision::Include);
    }

    #[test]
    fn includes_the_rest() {
        assert_eq!(decide("", "PG_VERSION", false), Decision::Include);
        assert_eq!(decide("", "postgresql.auto.conf", false), Decision::Include);
        assert_eq!(decide("global", "pg_control", false), Decision::Include);
        assert_eq!(decide("base/5", "16384", false), Decision::Include);
        assert_eq!(decide("base/5", "16384_init", false), Decision::Include);
        assert_eq!(decide("", "pg_xact", true), Decision::Include);
        // "t" files outside database directories are ordinary files.
        assert_eq!(decide("", "t1_2", false), Decision::Include);
    }

    #[test]
    fn database_dirs_and_init_forks() {
        assert!(is_database_dir("global"));
        assert!(is_database_dir("base/16384"));
        assert!(is_database_dir("pg_tblspc/16500/PG_17_202406281/5"));
        assert!(!is_database_dir("base"));
        assert!(!is_database_dir("pg_xact"));
        assert!(!is_database_dir("base/pgsql_tmp"));
        assert_eq!(init_fork_name("16384.2").as_deref(), Some("16384_init"));
        assert_eq!(init_fork_name("16384_vm").as_deref(), Some("16384_init"));
        assert_eq!(init_fork_name("16384_init"), None);
        assert_eq!(init_fork_name("PG_VERSION"), None);
    }
}
