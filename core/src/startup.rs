//! Where a new map's knowledge starts: its init LSN, decided at server start
//! from what `pg_control`, `backup_label` and a rejected map file say.
//!
//! A backup tool refuses an incremental backup whose parent started before
//! the init LSN, so the init LSN must be as low as is safe: the position from
//! which every change is sure to be marked. Three facts make a low one safe:
//!
//! * after a primary's clean shutdown nothing was written since its shutdown
//!   checkpoint, so the map misses nothing from there on;
//! * after a restore from a backup (or a standby made from one), recovery
//!   replays every change since the backup's start, and every block first
//!   changed after that start carries a full-page image in the WAL (a backup
//!   forces full-page writes): replay writes, and so marks, each of them;
//! * after `pg_rewind`, the target's LSNs went past the point its replay
//!   starts from (another timeline): no map may vouch for any LSN it had
//!   reached, which a kept map file or `pg_control` records.
//!
//! Otherwise (a crash, a standby's restart, with the map file lost) the first
//! write or question after start decides, above every LSN `pg_control` knows.

use crate::lsn::Lsn;
use crate::mapfile::TrackingMode;

/// `ptrack.mode` as set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestedMode {
    Auto,
    Hooks,
    Wal,
}

/// Which core patch the server carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CorePatch {
    /// This project's patch, recent enough (its exported version marker).
    Ours,
    /// Hook variables of the same names without the marker: the established
    /// C ptrack's patch (or an old build of ours). It marks no zero-filled
    /// hole and lets pg_rewind delete the map, so its hooks can miss changes.
    Foreign,
    /// No hooks: an unpatched server.
    Missing,
}

/// What to track with, or why the requested mode cannot work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModeChoice {
    Track(TrackingMode),
    /// `auto` on a server with a foreign patch: the WAL, said in the log.
    WalInsteadOfForeignHooks,
    /// `hooks` on a server without this project's patch.
    Refuse(CorePatch),
}

pub fn choose_mode(requested: RequestedMode, patch: CorePatch) -> ModeChoice {
    match (requested, patch) {
        (RequestedMode::Wal, _) | (RequestedMode::Auto, CorePatch::Missing) => {
            ModeChoice::Track(TrackingMode::Wal)
        }
        (RequestedMode::Auto | RequestedMode::Hooks, CorePatch::Ours) => {
            ModeChoice::Track(TrackingMode::Hooks)
        }
        (RequestedMode::Auto, CorePatch::Foreign) => ModeChoice::WalInsteadOfForeignHooks,
        (RequestedMode::Hooks, other) => ModeChoice::Refuse(other),
    }
}

/// What `backup_label` says, as far as ptrack cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupLabel {
    /// `START WAL LOCATION`: the REDO LSN replay starts from.
    pub start: Lsn,
    /// `BACKUP METHOD: pg_rewind`: the directory was rewound, not restored.
    pub rewound: bool,
}

impl BackupLabel {
    /// Parses the lines PostgreSQL (`do_pg_backup_stop`, `build_backup_content`)
    /// and `pg_rewind` write; `None` when there is no start location.
    pub fn parse(text: &str) -> Option<BackupLabel> {
        let mut start = None;
        let mut rewound = false;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("START WAL LOCATION: ") {
                start = rest
                    .split_whitespace()
                    .next()
                    .and_then(|lsn| lsn.parse().ok());
            } else if let Some(method) = line.strip_prefix("BACKUP METHOD: ") {
                rewound = method.trim() == "pg_rewind";
            }
        }
        start.map(|start| BackupLabel { start, rewound })
    }
}

/// The facts a new map's start is decided from.
#[derive(Clone, Copy, Debug, Default)]
pub struct StartFacts {
    /// `pg_control` says a primary shut down cleanly: its shutdown checkpoint
    /// was the last thing it wrote.
    pub primary_shut_down_cleanly: bool,
    /// The highest LSN `pg_control` records: latest checkpoint, its REDO,
    /// minimum recovery point.
    pub control_highest: Lsn,
    /// The checkpoint REDO `pg_control` records.
    pub control_redo: Lsn,
    pub backup_label: Option<BackupLabel>,
    /// The highest LSN an intact map file of this cluster records, when it was
    /// rejected (stale, rewound, restored): LSNs this server had reached.
    pub rejected_map_highest: Option<Lsn>,
}

/// When a new map starts vouching.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewMapStart {
    /// The init LSN never goes below this.
    pub floor: Lsn,
    /// Tracking starts at server start, with this init LSN; `None`: at the
    /// first mark or question, at an LSN read then (and at least `floor`).
    pub init_now: Option<Lsn>,
}

/// Decides a new map's start; see the module documentation for why each case
/// is safe.
pub fn new_map_start(facts: &StartFacts) -> NewMapStart {
    let kept = facts.rejected_map_highest.map_or(Lsn::INVALID, next);
    match facts.backup_label {
        Some(label) if !label.rewound => {
            let init = label.start.max(kept);
            NewMapStart {
                floor: init,
                init_now: Some(init),
            }
        }
        Some(_) => NewMapStart {
            floor: next(facts.control_highest).max(kept),
            init_now: None,
        },
        None if facts.primary_shut_down_cleanly => {
            // Nothing was written after the shutdown checkpoint.
            let init = facts.control_redo.max(kept);
            NewMapStart {
                floor: init,
                init_now: Some(init),
            }
        }
        None => NewMapStart {
            floor: next(facts.control_highest).max(kept),
            init_now: None,
        },
    }
}

/// Whether WAL read up to `end` (a reader's next record start) reached the
/// end of the WAL that crash recovery replayed, given the REDO LSN `redo` of
/// the checkpoint that ends recovery: that checkpoint begins where the WAL
/// ended, after the header of a new page when the WAL ended at a page end.
pub fn scan_reached_recovery_end(end: Lsn, redo: Lsn, page_bytes: u64) -> bool {
    const LONGEST_PAGE_HEADER: u64 = 40;
    redo <= end
        || (page_bytes != 0
            && end.0 % page_bytes == 0
            && redo.0 <= end.0.saturating_add(LONGEST_PAGE_HEADER))
}

fn next(lsn: Lsn) -> Lsn {
    if lsn.is_valid() {
        Lsn(lsn.0.saturating_add(1))
    } else {
        Lsn::INVALID
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scan_that_stopped_short_of_the_recovery_end_is_caught() {
        let page = 8192;
        assert!(scan_reached_recovery_end(
            Lsn(0x4000130),
            Lsn(0x4000130),
            page
        ));
        // Ended at a page end: the checkpoint starts after the next header.
        assert!(scan_reached_recovery_end(
            Lsn(0x4002000),
            Lsn(0x4002018),
            page
        ));
        assert!(scan_reached_recovery_end(
            Lsn(0x4000000),
            Lsn(0x4000028),
            page
        ));
        // One record (or more) of WAL the scan did not read.
        assert!(!scan_reached_recovery_end(
            Lsn(0x4000130),
            Lsn(0x4000168),
            page
        ));
        assert!(!scan_reached_recovery_end(
            Lsn(0x4002000),
            Lsn(0x4002060),
            page
        ));
    }

    #[test]
    fn hooks_are_trusted_only_with_this_projects_patch() {
        use CorePatch::*;
        use RequestedMode::*;
        let hooks = ModeChoice::Track(TrackingMode::Hooks);
        let wal = ModeChoice::Track(TrackingMode::Wal);
        assert_eq!(choose_mode(Auto, Ours), hooks);
        assert_eq!(choose_mode(Hooks, Ours), hooks);
        assert_eq!(
            choose_mode(Auto, Foreign),
            ModeChoice::WalInsteadOfForeignHooks
        );
        assert_eq!(choose_mode(Hooks, Foreign), ModeChoice::Refuse(Foreign));
        assert_eq!(choose_mode(Auto, Missing), wal);
        assert_eq!(choose_mode(Hooks, Missing), ModeChoice::Refuse(Missing));
        for patch in [Ours, Foreign, Missing] {
            assert_eq!(choose_mode(Wal, patch), wal);
        }
    }

    const STREAMED: &str = "START WAL LOCATION: 0/6000028 (file 000000010000000000000006)\n\
        CHECKPOINT LOCATION: 0/6000080\n\
        BACKUP METHOD: streamed\n\
        BACKUP FROM: primary\n\
        START TIME: 2026-12-02 12:00:00 UTC\n\
        LABEL: full\n\
        START TIMELINE: 1\n";

    const REWOUND: &str = "START WAL LOCATION: 0/3000028 (file 000000010000000000000003)\n\
        CHECKPOINT LOCATION: 0/3000060\n\
        BACKUP METHOD: pg_rewind\n\
        BACKUP FROM: standby\n\
        START TIME: 2026-12-02 12:00:00 UTC\n";

    #[test]
    fn labels_parse_as_postgresql_and_pg_rewind_write_them() {
        assert_eq!(
            BackupLabel::parse(STREAMED),
            Some(BackupLabel {
                start: Lsn(0x6000028),
                rewound: false
            })
        );
        assert_eq!(
            BackupLabel::parse(REWOUND),
            Some(BackupLabel {
                start: Lsn(0x3000028),
                rewound: true
            })
        );
        assert_eq!(BackupLabel::parse("LABEL: x\n"), None);
        assert_eq!(BackupLabel::parse("START WAL LOCATION: garbage\n"), None);
    }

    #[test]
    fn a_restored_backup_vouches_from_its_start_whatever_pg_control_says() {
        // pg_probackup copies pg_control last: it records a later checkpoint.
        let facts = StartFacts {
            primary_shut_down_cleanly: false,
            control_highest: Lsn(0x8017848),
            control_redo: Lsn(0x8017800),
            backup_label: BackupLabel::parse(STREAMED),
            rejected_map_highest: None,
        };
        let start = new_map_start(&facts);
        assert_eq!(start.init_now, Some(Lsn(0x6000028)));
        assert_eq!(start.floor, Lsn(0x6000028));
    }

    #[test]
    fn a_rewound_directory_stays_above_every_lsn_its_old_map_reached() {
        let facts = StartFacts {
            primary_shut_down_cleanly: false,
            control_highest: Lsn(0x3500000),
            control_redo: Lsn(0x3000028),
            backup_label: BackupLabel::parse(REWOUND),
            rejected_map_highest: Some(Lsn(0x5000000)),
        };
        let start = new_map_start(&facts);
        assert_eq!(start.init_now, None);
        assert_eq!(start.floor, Lsn(0x5000001));
        // Without a kept map, pg_control's highest LSN is the floor.
        let start = new_map_start(&StartFacts {
            rejected_map_highest: None,
            ..facts
        });
        assert_eq!(start.floor, Lsn(0x3500001));
    }

    #[test]
    fn a_kept_map_of_this_cluster_raises_even_a_restored_backups_start() {
        let facts = StartFacts {
            backup_label: BackupLabel::parse(STREAMED),
            rejected_map_highest: Some(Lsn(0x7000000)),
            ..StartFacts::default()
        };
        assert_eq!(new_map_start(&facts).init_now, Some(Lsn(0x7000001)));
    }

    #[test]
    fn a_clean_start_vouches_from_the_last_checkpoint() {
        let facts = StartFacts {
            primary_shut_down_cleanly: true,
            control_highest: Lsn(0x1A0B2C8),
            control_redo: Lsn(0x1A0B2C8),
            ..StartFacts::default()
        };
        let start = new_map_start(&facts);
        assert_eq!(start.init_now, Some(Lsn(0x1A0B2C8)));
    }

    #[test]
    fn after_a_crash_the_first_write_decides_above_everything_pg_control_knows() {
        let facts = StartFacts {
            primary_shut_down_cleanly: false,
            control_highest: Lsn(0x4000100),
            control_redo: Lsn(0x4000028),
            ..StartFacts::default()
        };
        let start = new_map_start(&facts);
        assert_eq!(start.init_now, None);
        assert_eq!(start.floor, Lsn(0x4000101));
    }
}
