//! The cold-copy checker: compares two cold copies of a data directory block by
//! block and holds the differences against a pagemapset. Every block that
//! differs must be reported (no false negatives); identical blocks that are
//! reported only cost backup size (false positives).
//!
//! `cold` packages the comparison with the snapshots it compares; `relfile`
//! knows relation file names. Both are re-exported here.

pub mod cold;
pub mod relfile;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::path::Path;

#[allow(unused_imports)]
pub use cold::{
    cold_check, describe_false_negatives, relation_of, take_snapshot_a, ColdCheck, RelInfo,
    SnapshotA,
};
#[allow(unused_imports)]
pub use relfile::{
    is_temp_relation_file_name, parse_relation_file_name, relation_dirs, Fork, RelFileName,
};

use super::{PageMapSet, BLCKSZ};

/// What the checker found for one relation file of the newer copy.
#[derive(Clone, Debug)]
pub struct FileStat {
    pub path: String,
    pub fork: Fork,
    /// True when the older copy had no such file.
    pub new_file: bool,
    pub blocks: u64,
    pub changed: u64,
    pub reported: u64,
    /// Changed blocks missing from the pagemap, with why they count as changed.
    pub false_negatives: Vec<(u64, &'static str)>,
    pub false_positives: u64,
}

/// Sums over a set of files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub files: u64,
    pub blocks: u64,
    pub changed: u64,
    pub reported: u64,
    pub false_negatives: u64,
    pub false_positives: u64,
}

impl Totals {
    fn add(&mut self, f: &FileStat) {
        self.files += 1;
        self.blocks += f.blocks;
        self.changed += f.changed;
        self.reported += f.reported;
        self.false_negatives += f.false_negatives.len() as u64;
        self.false_positives += f.false_positives;
    }

    pub fn false_positive_rate(&self) -> f64 {
        if self.reported == 0 {
            0.0
        } else {
            self.false_positives as f64 / self.reported as f64
        }
    }
}

impl fmt::Display for Totals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "files {}, blocks checked {}, changed {}, reported {}, false negatives {}, \
             false positives {} ({:.1}% of reported)",
            self.files,
            self.blocks,
            self.changed,
            self.reported,
            self.false_negatives,
            self.false_positives,
            100.0 * self.false_positive_rate()
        )
    }
}

/// Result of one comparison.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub files: Vec<FileStat>,
    /// Blocks of main/fsm/vm forks of unlogged relations, not checked.
    pub unlogged_blocks_skipped: u64,
    /// Bits set in the pagemap past the end of the file in the newer copy.
    pub reported_beyond_eof: u64,
    /// Pagemap rows for files the newer copy does not have.
    pub reported_missing_files: Vec<String>,
}

impl Report {
    pub fn totals(&self) -> Totals {
        self.totals_where(|_| true)
    }

    pub fn totals_where(&self, pred: impl Fn(&FileStat) -> bool) -> Totals {
        let mut t = Totals::default();
        for f in self.files.iter().filter(|f| pred(f)) {
            t.add(f);
        }
        t
    }

    /// Totals for the files under a directory such as `base/4`.
    pub fn totals_under(&self, dir: &str) -> Totals {
        let prefix = format!("{dir}/");
        self.totals_where(|f| f.path.starts_with(&prefix))
    }

    /// The false negatives as (path, block, why) for messages, at most `limit`.
    pub fn false_negatives(&self, limit: usize) -> Vec<String> {
        self.files
            .iter()
            .flat_map(|f| {
                f.false_negatives
                    .iter()
                    .map(move |(b, why)| format!("{} block {b} ({why})", f.path))
            })
            .take(limit)
            .collect()
    }

    pub fn summary(&self, label: &str) -> String {
        let main = self.totals_where(|f| f.fork == Fork::Main);
        format!(
            "cold-copy check [{label}]: {} | main forks: reported {}, false-positive rate {:.1}% \
             | unlogged blocks skipped {}, reported past EOF {}, reported files absent {}",
            self.totals(),
            main.reported,
            100.0 * main.false_positive_rate(),
            self.unlogged_blocks_skipped,
            self.reported_beyond_eof,
            self.reported_missing_files.len()
        )
    }

    /// The blocks WAL mode cannot see, by the rules of the running test mode:
    /// none in hook mode; in WAL mode those of [`WAL_INVISIBLE`] kinds.
    pub fn assert_no_false_negatives_for_mode(&self, label: &str) {
        if crate::common::tracking_mode() == "wal" {
            self.assert_no_false_negatives_except(label, WAL_INVISIBLE);
        } else {
            self.assert_no_false_negatives(label);
        }
    }

    /// Panics if a false negative is of a kind not in `accepted`; prints how
    /// many of each accepted kind there were.
    pub fn assert_no_false_negatives_except(&self, label: &str, accepted: &[&str]) {
        let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
        let mut refused = Vec::new();
        for f in &self.files {
            for (block, why) in &f.false_negatives {
                if accepted.contains(why) {
                    *counts.entry(why).or_default() += 1;
                } else {
                    refused.push(format!("{} block {block} ({why})", f.path));
                }
            }
        }
        eprintln!("[{label}] false negatives of accepted kinds: {counts:?}");
        assert!(
            refused.is_empty(),
            "[{label}] {} changed blocks are missing from the pagemapset (first 20):\n  {}\n{}",
            refused.len(),
            refused
                .iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n  "),
            self.summary(label)
        );
    }

    /// Panics listing up to 20 false negatives if there is any.
    pub fn assert_no_false_negatives(&self, label: &str) {
        let t = self.totals();
        assert!(
            t.false_negatives == 0,
            "[{label}] {} changed blocks are missing from the pagemapset (first 20):\n  {}\n{}",
            t.false_negatives,
            self.false_negatives(20).join("\n  "),
            self.summary(label)
        );
    }
}

/// The reason given for a missed block whose page LSN did not change: its
/// change was not WAL-logged (hint bits without checksums, SP-GiST's cache of
/// last-used pages in its metapage). Only a crash can lose such a mark.
pub const NOT_WAL_LOGGED: &str = "content differs, page LSN unchanged: change not WAL-logged";

/// The reason given for a missed all-zero block the older copy did not have
/// (past its end of file, or in a new file): the file was extended by zeros
/// (`mdzeroextend`, not WAL-logged) and the block not yet written with content.
pub const ZERO_EXTENSION: &str = "all-zero block, absent from the older copy";

/// The reason given for a missed SP-GiST metapage whose page LSN did not
/// change: SP-GiST updates its cache of last-used pages there without WAL (a
/// hint it re-checks before use), so no WAL follower can see the change.
pub const SPGIST_META_CACHE: &str =
    "SP-GiST metapage, page LSN unchanged: its cache of last-used pages, not WAL-logged";

/// What WAL mode cannot report, as PostgreSQL's own WAL summarizer cannot:
/// changes that leave no WAL record. Both are harmless to a restore: zero
/// blocks past the old end of a file come back as zeros (or as a shorter file,
/// which PostgreSQL extends when it needs the blocks), and a stale cache of
/// SP-GiST's last-used pages is re-checked before use.
pub const WAL_INVISIBLE: &[&str] = &[ZERO_EXTENSION, SPGIST_META_CACHE];

/// `SPGIST_MAGIC_NUMBER` at the start of the metapage's contents, after the
/// 24-byte page header.
fn is_spgist_metapage(page: &[u8]) -> bool {
    page.get(24..28) == Some(&0xBA0B_ABEEu32.to_le_bytes()[..])
}

fn page_lsn(page: &[u8]) -> Option<[u8; 8]> {
    page.get(0..8).map(|lsn| lsn.try_into().expect("8 bytes"))
}

/// Blocks of the file `path` that are all zeros in the copy `newer` where the
/// copy `older` holds content: what a relation grown back by zero blocks
/// over a truncation leaves.
pub fn zero_blocks_over_old(older: &Path, newer: &Path, path: &str) -> usize {
    let old = fs::read(older.join(path)).expect("older copy");
    let new = fs::read(newer.join(path)).expect("newer copy");
    (0..new.len() / BLCKSZ)
        .filter(|&b| {
            let range = b * BLCKSZ..(b + 1) * BLCKSZ;
            new[range.clone()].iter().all(|&x| x == 0)
                && old.get(range).is_some_and(|p| p.iter().any(|&x| x != 0))
        })
        .count()
}

/// Compares every relation file of `newer` with the same path in `older`
/// against `pagemap` (the pagemapset for the REDO LSN of `older`).
pub fn compare(older: &Path, newer: &Path, pagemap: &PageMapSet) -> Report {
    let mut report = Report::default();
    let mut seen = BTreeSet::new();
    for dir in relation_dirs(newer) {
        let mut names: Vec<String> = fs::read_dir(newer.join(&dir))
            .unwrap_or_else(|e| panic!("readdir {dir}: {e}"))
            .map(|e| {
                e.expect("readdir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        let parsed: BTreeMap<&str, RelFileName> = names
            .iter()
            .filter_map(|n| parse_relation_file_name(n).map(|p| (n.as_str(), p)))
            .collect();
        // Unlogged relations: their main/fsm/vm forks are not backed up and are
        // reset from the init fork by crash recovery.
        let unlogged: BTreeSet<u32> = parsed
            .values()
            .filter(|p| p.fork == Fork::Init)
            .map(|p| p.relfilenode)
            .collect();
        for (name, rel) in parsed {
            let path = format!("{dir}/{name}");
            seen.insert(path.clone());
            let new_bytes = fs::read(newer.join(&path))
                .unwrap_or_else(|e| panic!("read {}: {e}", newer.join(&path).display()));
            let blocks = new_bytes.len().div_ceil(BLCKSZ) as u64;
            if rel.fork != Fork::Init && unlogged.contains(&rel.relfilenode) {
                report.unlogged_blocks_skipped += blocks;
                continue;
            }
            let old_bytes = fs::read(older.join(&path)).ok();
            let map = pagemap.get(&path);
            let mut stat = FileStat {
                path: path.clone(),
                fork: rel.fork,
                new_file: old_bytes.is_none(),
                blocks,
                changed: 0,
                reported: 0,
                false_negatives: Vec::new(),
                false_positives: 0,
            };
            let old_bytes = old_bytes.unwrap_or_default();
            for block in 0..blocks {
                let start = block as usize * BLCKSZ;
                let end = (start + BLCKSZ).min(new_bytes.len());
                let changed = old_bytes.get(start..end) != Some(&new_bytes[start..end]);
                let reported = map.is_some_and(|m| m.is_set(block));
                stat.changed += u64::from(changed);
                stat.reported += u64::from(reported);
                if changed && !reported {
                    let zero = new_bytes[start..end].iter().all(|&x| x == 0);
                    let why = match (stat.new_file, start < old_bytes.len(), zero) {
                        (true, _, false) => "new file",
                        (true, _, true) => ZERO_EXTENSION,
                        // The page LSN is where every WAL-logged change leaves
                        // its mark: an unchanged one means no WAL record
                        // touched the page since the older copy.
                        (false, true, _)
                            if page_lsn(&old_bytes[start..]) == page_lsn(&new_bytes[start..]) =>
                        {
                            if block == 0 && is_spgist_metapage(&new_bytes[start..end]) {
                                SPGIST_META_CACHE
                            } else {
                                NOT_WAL_LOGGED
                            }
                        }
                        (false, true, _) => "content differs",
                        (false, false, false) => "past the old end of file",
                        (false, false, true) => ZERO_EXTENSION,
                    };
                    stat.false_negatives.push((block, why));
                }
                if reported && !changed {
                    stat.false_positives += 1;
                }
            }
            if let Some(m) = map {
                report.reported_beyond_eof +=
                    m.set_blocks().iter().filter(|&&b| b >= blocks).count() as u64;
            }
            report.files.push(stat);
        }
    }
    report.reported_missing_files = pagemap
        .maps
        .keys()
        .filter(|p| !seen.contains(*p))
        .cloned()
        .collect();
    report
}
