//! The init LSN means "complete from here" from the moment tracking starts,
//! so a backup tool's first incremental after a FULL is accepted: pg_probackup
//! refuses a PTRACK backup when `ptrack_init_lsn()` is above the start LSN of
//! its parent. Checked on a new cluster, on a standby made from a base
//! backup, and on a point-in-time restore promoted to a new timeline, in
//! whichever mode the suite runs.

mod common;

use common::replica::{base_backup, catch_up, BackupKind};
use common::{lsn, Cluster, Lsn};

/// `START WAL LOCATION` of a backup_label.
fn label_start(label: &str) -> Lsn {
    let line = label
        .lines()
        .find_map(|l| l.strip_prefix("START WAL LOCATION: "))
        .unwrap_or_else(|| panic!("no START WAL LOCATION in backup_label:\n{label}"));
    lsn(line.split_whitespace().next().unwrap_or_default())
}

/// A FULL backup as pg_probackup takes one (pg_backup_start with a fast
/// checkpoint, copy, pg_backup_stop); the copy does not matter here, only the
/// start LSN the tool records.
fn full_backup_start(c: &Cluster) -> Lsn {
    let out = c.psql(
        "SELECT pg_backup_start('full', true);
         SELECT labelfile FROM pg_backup_stop(false);",
    );
    let start = lsn(out.lines().next().unwrap_or_default().trim());
    assert_eq!(
        start,
        label_start(&out),
        "pg_backup_start and the label disagree"
    );
    start
}

/// What pg_probackup checks before a PTRACK backup whose parent started at
/// `parent_start`, then the question it asks.
fn assert_incremental_accepted(c: &Cluster, parent_start: Lsn, context: &str) {
    let init = c.init_lsn();
    assert!(
        init > Lsn(0) && init <= parent_start,
        "[{context}] ptrack_init_lsn() {init} is above the parent backup's start LSN \
         {parent_start}: pg_probackup would refuse the PTRACK backup"
    );
    c.psql("CREATE TABLE IF NOT EXISTS after_full AS SELECT g FROM generate_series(1, 1000) g; CHECKPOINT;");
    let path = c.query_one("SELECT pg_relation_filepath('after_full')");
    let set = c.pagemapset(parent_start);
    assert!(
        set.is_set(&path, 0),
        "[{context}] a table written after the FULL is not reported since its start {parent_start}"
    );
}

/// A running cluster with ptrack and a table, to take base backups of.
fn running_source(name: &str) -> Cluster {
    let mut c = Cluster::new(name);
    c.start();
    c.psql(
        "CREATE EXTENSION ptrack;
         CREATE TABLE t AS SELECT g FROM generate_series(1, 10000) g;",
    );
    c
}

#[test]
fn a_new_cluster_vouches_for_its_first_full_backup() {
    let mut c = Cluster::new("init_new");
    c.start();
    c.psql("CREATE EXTENSION ptrack;");
    let start = full_backup_start(&c);
    assert_incremental_accepted(&c, start, "new cluster");
    c.stop(common::StopMode::Fast);
}

#[test]
fn a_standby_vouches_for_a_full_backup_taken_from_it() {
    let mut primary = running_source("init_primary");
    let mut standby = base_backup(&primary, "init_standby", BackupKind::Standby);
    standby.start();
    catch_up(&primary, &standby);
    // A FULL of the standby: on a standby pg_backup_start takes the last
    // restartpoint as the start.
    let start = full_backup_start(&standby);
    let init = standby.init_lsn();
    assert!(
        init > Lsn(0) && init <= start,
        "standby: ptrack_init_lsn() {init} is above the FULL's start LSN {start}"
    );
    primary.psql("CREATE TABLE after_full AS SELECT g FROM generate_series(1, 1000) g;");
    catch_up(&primary, &standby);
    standby.psql("CHECKPOINT;");
    let path = standby.query_one("SELECT pg_relation_filepath('after_full')");
    assert!(
        standby.pagemapset(start).is_set(&path, 0),
        "standby: a table replayed after the FULL is not reported since {start}"
    );
    standby.stop(common::StopMode::Fast);
    primary.stop(common::StopMode::Fast);
}

#[test]
fn a_point_in_time_restore_vouches_from_its_full_backups_start() {
    let mut primary = running_source("init_pitr_source");
    let mut restored = base_backup(&primary, "init_pitr", BackupKind::Clone);
    let label = std::fs::read_to_string(restored.pgdata.join("backup_label"))
        .expect("pg_basebackup writes backup_label");
    let full_start = label_start(&label);
    // More work on the source after the FULL: its pg_control, copied last,
    // records checkpoints and LSNs beyond the FULL's start.
    primary.psql("UPDATE t SET g = g + 1; CHECKPOINT;");
    primary.stop(common::StopMode::Fast);

    // Restore to the end of the backup and promote: timeline 2.
    restored.set_conf("recovery_target", "'immediate'");
    restored.set_conf("recovery_target_action", "'promote'");
    // The WAL the backup streamed is in pg_wal; there is no archive.
    restored.set_conf("restore_command", "'false'");
    std::fs::write(restored.pgdata.join("recovery.signal"), "").expect("recovery.signal");
    common::chown_to_server(&restored.pgdata.join("recovery.signal"));
    restored.start();
    let t0 = std::time::Instant::now();
    while restored.is_in_recovery() {
        assert!(t0.elapsed().as_secs() < 120, "the restore did not promote");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let timeline = restored.query_one("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)");
    assert_eq!(
        timeline, "00000002",
        "the restore did not switch to timeline 2"
    );
    assert_incremental_accepted(&restored, full_start, "point-in-time restore");
    restored.stop(common::StopMode::Fast);
}
