//! The cold-copy check, packaged for tests that take A and B themselves:
//! snapshot A at a clean stop, snapshot B at the next one, and the comparison
//! of the two against `ptrack_get_pagemapset(L)`, with the false negatives
//! described by the relations they belong to.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::relfile::parse_relation_file_name;
use super::{compare, Report};
use crate::common::client::split_rows;
use crate::common::{Cluster, Lsn, StopMode};

/// The relation behind a relation file path, as far as the catalogs know it.
#[derive(Clone, Debug)]
pub struct RelInfo {
    pub datname: String,
    /// `regclass` text, empty when no relation has this file (an orphan).
    pub relation: String,
    /// `pg_class.relkind`, empty when unknown.
    pub relkind: String,
    /// `pg_am.amname` of the relation, empty for none.
    pub amname: String,
}

impl RelInfo {
    /// A heap (table, TOAST table or materialized view) main or init fork.
    pub fn is_heap(&self) -> bool {
        matches!(self.relkind.as_str(), "r" | "t" | "m") && self.amname == "heap"
    }
}

/// Looks up the relation a path of `ptrack_get_pagemapset()`'s form names.
pub fn relation_of(c: &Cluster, path: &str) -> RelInfo {
    let parts: Vec<&str> = path.split('/').collect();
    let file = parts.last().copied().unwrap_or_default();
    let node = parse_relation_file_name(file).map_or(0, |r| r.relfilenode);
    let (spc, db) = match parts.as_slice() {
        ["base", db, _] => ("0".to_string(), Some(db.to_string())),
        ["pg_tblspc", spc, _, db, _] => (spc.to_string(), Some(db.to_string())),
        ["global", _] => ("1664".to_string(), None),
        _ => ("0".to_string(), None),
    };
    let datname = match &db {
        Some(oid) => c
            .try_psql(&format!(
                "SELECT datname FROM pg_database WHERE oid = {oid}"
            ))
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        None => "postgres".to_string(),
    };
    let mut info = RelInfo {
        datname: datname.clone(),
        relation: String::new(),
        relkind: String::new(),
        amname: String::new(),
    };
    if datname.is_empty() {
        return info;
    }
    let sql = format!(
        "SELECT r::text, c.relkind, coalesce(a.amname, '')
           FROM (SELECT pg_filenode_relation({spc}, {node}) AS r) f
           JOIN pg_class c ON c.oid = f.r
           LEFT JOIN pg_am a ON a.oid = c.relam"
    );
    if let Ok(out) = c.try_psql_db(&datname, &sql) {
        if let Some(row) = split_rows(&out).into_iter().next() {
            if row.len() == 3 {
                info.relation = row[0].clone();
                info.relkind = row[1].clone();
                info.amname = row[2].clone();
            }
        }
    }
    info
}

/// One line per file with missed blocks (at most `limit`), naming the relation.
pub fn describe_false_negatives(c: &Cluster, report: &Report, limit: usize) -> Vec<String> {
    report
        .files
        .iter()
        .filter(|f| !f.false_negatives.is_empty())
        .take(limit)
        .map(|f| {
            let rel = relation_of(c, &f.path);
            let whys: BTreeSet<&str> =
                f.false_negatives.iter().map(|(_, why)| *why).collect();
            format!(
                "{}: {} of {} blocks missed ({:?}), first blocks {:?}, db {:?}, relation {:?} relkind {:?}",
                f.path,
                f.false_negatives.len(),
                f.blocks,
                whys,
                f.false_negatives.iter().take(8).map(|(b, _)| *b).collect::<Vec<_>>(),
                rel.datname,
                if rel.relation.is_empty() { "<none: orphan file>" } else { &rel.relation },
                rel.relkind
            )
        })
        .collect()
}

/// A cold copy A and the REDO LSN L of the checkpoint it was taken at.
pub struct SnapshotA {
    pub dir: PathBuf,
    pub lsn: Lsn,
}

/// Stops the server (fast) if it runs and takes snapshot A into `dir`.
pub fn take_snapshot_a(c: &mut Cluster, dir: &Path) -> SnapshotA {
    if c.is_running() {
        c.stop(StopMode::Fast);
    }
    c.snapshot(dir);
    SnapshotA {
        dir: dir.to_path_buf(),
        lsn: c.controldata_redo_lsn(),
    }
}

/// The result of [`cold_check`].
pub struct ColdCheck {
    pub report: Report,
    pub init: Lsn,
    /// REDO LSN of the clean stop snapshot B was taken at (L of a next A).
    pub b_lsn: Lsn,
}

/// Stops the server (fast), takes snapshot B into `snap_b`, starts the server
/// and compares A with B against `ptrack_get_pagemapset(L)`. Prints the
/// summary and the false negatives, asserts nothing. Leaves the server running.
pub fn cold_check(c: &mut Cluster, a: &SnapshotA, snap_b: &Path, label: &str) -> ColdCheck {
    if c.is_running() {
        c.stop(StopMode::Fast);
    }
    c.snapshot(snap_b);
    let b_lsn = c.controldata_redo_lsn();
    c.start();
    let init = c.init_lsn();
    let pagemap = c.pagemapset(a.lsn);
    let report = compare(&a.dir, snap_b, &pagemap);
    eprintln!("{}", report.summary(label));
    if report.totals().false_negatives > 0 {
        eprintln!("[{label}] files with missed blocks:");
        for line in describe_false_negatives(c, &report, 30) {
            eprintln!("  {line}");
        }
    }
    ColdCheck {
        report,
        init,
        b_lsn,
    }
}
