//! ptrack on a streaming standby: the standby keeps its own map (marks from
//! replay, written at restartpoints), and the cold-copy check holds on it
//! across clean restarts, a crash in the middle of replay, and promotion.
//!
//! Each cycle: cold copy A of the standby's PGDATA at a clean stop, L = its
//! pg_control REDO LSN, a workload on the primary replayed by the standby (or
//! on the promoted server), cold copy B at a clean stop, then every block that
//! differs between A and B must be in the standby's `ptrack_get_pagemapset(L)`.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::checker::{self, Report};
use common::log::{expect_warning, ptrack_warnings};
use common::mapfile::{map_files, map_header};
use common::replica::{self, BackupKind};
use common::util::phase;
use common::{workload, Cluster, Lsn, StopMode};

/// Least number of changed blocks for a cycle to prove anything.
const MIN_CHANGED_BLOCKS: u64 = 1_000;

/// Compares two cold copies against `c`'s pagemapset for `l` and asserts the
/// tracking is complete, meaningful, and — when `selective` — that most
/// unchanged blocks are not reported. (Not across a restartpoint taken right
/// before the older copy: its writes are marked with the replay position,
/// past its REDO LSN, and count as false positives.)
fn check(
    c: &Cluster,
    label: &str,
    snap_a: &Path,
    snap_b: &Path,
    l: Lsn,
    selective: bool,
) -> Report {
    let init = c.init_lsn();
    assert!(
        init <= l,
        "[{label}] ptrack_init_lsn() = {init} on {} is after L = {l}: the map was not kept",
        c.name
    );
    let pagemap = c.pagemapset(l);
    let template0 = c.query_one("SELECT oid FROM pg_database WHERE datname = 'template0'");
    let report = checker::compare(snap_a, snap_b, &pagemap);
    eprintln!("{}", report.summary(label));
    if report.totals().false_negatives > 0 {
        for f in report
            .files
            .iter()
            .filter(|f| !f.false_negatives.is_empty())
            .take(20)
        {
            eprintln!(
                "[{label}]   {}: {} of {} blocks missed (new file: {}), first {:?}",
                f.path,
                f.false_negatives.len(),
                f.blocks,
                f.new_file,
                &f.false_negatives[..f.false_negatives.len().min(5)]
            );
        }
    }
    report.assert_no_false_negatives_for_mode(label);
    let totals = report.totals();
    assert!(
        totals.changed >= MIN_CHANGED_BLOCKS,
        "[{label}] only {} blocks changed between the copies: the check proves nothing",
        totals.changed
    );
    let untouched = report.totals_where(|f| {
        f.fork == checker::Fork::Main && f.path.starts_with(&format!("base/{template0}/"))
    });
    assert!(
        untouched.blocks > 0 && (untouched.reported as f64) < 0.1 * untouched.blocks as f64,
        "[{label}] template0 was never written, yet its main forks are reported: {untouched}"
    );
    let unchanged = totals.blocks - totals.changed;
    if selective {
        let mut fp: Vec<_> = report
            .files
            .iter()
            .filter(|f| f.false_positives > 0)
            .collect();
        fp.sort_by_key(|f| std::cmp::Reverse(f.false_positives));
        let top: Vec<String> = fp
            .iter()
            .take(10)
            .map(|f| {
                format!(
                    "{} ({:?}): {} of {} blocks",
                    f.path, f.fork, f.false_positives, f.blocks
                )
            })
            .collect();
        assert!(
            (totals.false_positives as f64) < 0.5 * unchanged as f64,
            "[{label}] {} of the {unchanged} unchanged blocks are reported: tracking is not \
             selective; most reported unchanged blocks:\n  {}",
            totals.false_positives,
            top.join("\n  ")
        );
    }
    report
}

/// Stops `c` cleanly, copies its PGDATA to `<base>/<snap>` and returns the
/// copy's path and pg_control's REDO LSN. Leaves `c` stopped.
fn cold_copy(c: &mut Cluster, snap: &str) -> (std::path::PathBuf, Lsn) {
    c.stop(StopMode::Fast);
    let dest = c.base.join(snap);
    c.snapshot(&dest);
    (dest, c.controldata_redo_lsn())
}

/// A primary with the shared workload's starting state and a streaming
/// standby of it (both running), the standby with a map of its own whose
/// init LSN is behind its latest restartpoint.
fn primary_and_standby(name: &str, standby_conf: &[(&str, &str)]) -> (Cluster, Cluster) {
    let mut primary = Cluster::new(&format!("{name}_primary"));
    primary.start();
    workload::setup(&primary);
    primary.psql("CHECKPOINT;");
    assert!(
        primary.map_path().exists(),
        "the primary has no map file after a checkpoint"
    );

    let mut standby =
        replica::base_backup(&primary, &format!("{name}_standby"), BackupKind::Standby);
    assert_eq!(
        map_files(&standby.pgdata),
        Vec::<String>::new(),
        "pg_basebackup copied ptrack's map files"
    );
    assert!(
        standby.pgdata.join("standby.signal").exists(),
        "-R wrote no standby.signal"
    );
    standby.set_conf("hot_standby", "on");
    for (k, v) in standby_conf {
        standby.set_conf(k, v);
    }
    let mark = standby.log_mark();
    standby.start();
    assert!(standby.is_in_recovery(), "the standby is not in recovery");
    expect_warning(&standby.log_since(mark), &["not found"], name);

    // First restartpoint: the standby writes its own map (in hook mode at
    // the restartpoint itself; the WAL follower writes it soon after one, and
    // wal_mode.rs checks its files).
    primary.psql("CREATE TABLE warmup AS SELECT g FROM generate_series(1, 10000) g;");
    let redo1 = replica::restartpoint(&primary, &standby);
    let hook_mode = common::tracking_mode() == "hooks";
    if hook_mode {
        let header = map_header(&standby.pgdata).unwrap_or_else(|| {
            panic!("[{name}] the standby wrote no global/ptrack.map at its restartpoint")
        });
        assert_eq!(
            header.checkpoint_redo, redo1,
            "[{name}] map header vs the standby's restartpoint REDO"
        );
        assert_eq!(header.system_identifier, primary.system_identifier());
    }
    let init = standby.init_lsn();
    // A second one, so that the latest restartpoint is after the init LSN.
    primary.psql("UPDATE warmup SET g = g + 1 WHERE g % 10 = 0;");
    let redo2 = replica::restartpoint(&primary, &standby);
    assert!(
        init <= redo2,
        "[{name}] init LSN {init} is after the second restartpoint {redo2}"
    );
    if hook_mode {
        let header = map_header(&standby.pgdata).expect("standby map");
        assert_eq!(
            header.checkpoint_redo, redo2,
            "[{name}] map not rewritten at the second restartpoint"
        );
        assert_eq!(
            header.init_lsn, init,
            "[{name}] init LSN in the standby's map file"
        );
    }
    (primary, standby)
}

/// A second-round workload with the objects of `workload::setup`, usable
/// several times (`tag` keeps the new names apart): pgbench, both CREATE
/// DATABASE strategies, SET TABLESPACE back and forth, rewrites, index builds.
fn round(c: &Cluster, tag: &str, ts: &str) {
    c.pgbench(workload::BENCH_DB, &["-n", "-c", "2", "-j", "2", "-T", "5"]);
    c.psql(&format!("CREATE DATABASE d_{tag}_wal STRATEGY wal_log;"));
    c.psql_db(
        &format!("d_{tag}_wal"),
        "CREATE TABLE w AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 10000) g;
         CREATE INDEX w_v ON w (v);",
    );
    c.psql(&format!("CREATE DATABASE d_{tag}_copy STRATEGY file_copy;"));
    c.psql_db(
        &format!("d_{tag}_copy"),
        "CREATE TABLE fc AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 5000) g;",
    );
    c.psql(&format!(
        "ALTER TABLE move_me SET TABLESPACE {ts};
         ALTER DATABASE d_move SET TABLESPACE {ts};"
    ));
    c.psql_db("d_move", "UPDATE dm SET v = v || 'y' WHERE id % 7 = 0;");
    c.psql(&format!(
        "UPDATE move_me SET pad = 'again' WHERE id % 50 = 0;
         UPDATE ts_resident SET v = '{tag}' WHERE id % 13 = 0;
         VACUUM FULL vf_t;
         CLUSTER cl_t USING cl_t_v;
         TRUNCATE tr_t;
         INSERT INTO tr_t SELECT g, md5(g::text) FROM generate_series(1, 6000) g;
         CREATE INDEX setup_t_{tag}_btree ON setup_t (id, v);
         CREATE INDEX setup_t_{tag}_gin ON setup_t USING gin (doc);
         UPDATE setup_t SET v = v || '{tag}' WHERE id % 7 = 0;"
    ));
    c.pgbench(workload::BENCH_DB, &["-n", "-c", "2", "-j", "2", "-T", "4"]);
    c.psql("VACUUM;");
}

/// (a) restartpoints on a standby and the cold-copy check on it, then (b) its
/// promotion and the same check on the promoted server, and across it.
#[test]
fn standby_restartpoints_and_promotion() {
    let name = "standby";
    let t0 = Instant::now();
    let (mut primary, mut standby) = primary_and_standby(name, &[]);
    phase(name, t0, "primary and standby ready");

    // --- (a) the standby, replaying the whole shared workload.
    let (snap_a, l_a) = cold_copy(&mut standby, "snap_a");
    standby.start();
    phase(name, t0, &format!("standby snapshot A, L = {l_a}"));
    workload::part1(&primary);
    workload::part2(&primary);
    let before_rp = map_header(&standby.pgdata).expect("standby map");
    let redo = replica::restartpoint(&primary, &standby);
    let after_rp = map_header(&standby.pgdata).expect("standby map");
    assert!(
        common::tracking_mode() == "wal"
            || (after_rp.checkpoint_redo == redo && redo > before_rp.checkpoint_redo),
        "[{name}] the standby did not write its map at the restartpoint: header REDO {} -> {}, \
         restartpoint REDO {redo}",
        before_rp.checkpoint_redo,
        after_rp.checkpoint_redo
    );
    let (snap_b, l_b) = cold_copy(&mut standby, "snap_b");
    phase(
        name,
        t0,
        &format!("workload replayed, standby snapshot B, L = {l_b}"),
    );
    standby.start();
    let report = check(&standby, "standby", &snap_a, &snap_b, l_a, true);
    let in_ts = report.totals_where(|f| f.path.starts_with("pg_tblspc/"));
    assert!(
        in_ts.changed > 0,
        "[{name}] no tablespace file changed on the standby: {in_ts}"
    );
    let copied = report.totals_where(|f| f.new_file);
    assert!(
        copied.changed > 0,
        "[{name}] no new relation file on the standby: {copied}"
    );
    std::fs::remove_dir_all(&snap_a).expect("remove snapshot A");
    phase(name, t0, "standby checked");

    // --- (b) promotion, then cycles on the promoted server.
    standby.promote();
    primary.stop(StopMode::Fast);
    assert!(!standby.is_in_recovery());
    let timeline = standby.query_one("SELECT timeline_id FROM pg_control_checkpoint()");
    phase(
        name,
        t0,
        &format!("standby promoted (timeline {timeline} at its last checkpoint)"),
    );
    round(&standby, "p1", "pg_default");
    let (snap_c, l_c) = cold_copy(&mut standby, "snap_c");
    standby.start();
    phase(name, t0, &format!("promoted server snapshot C, L = {l_c}"));
    round(&standby, "p2", "ts1");
    let (snap_d, _) = cold_copy(&mut standby, "snap_d");
    standby.start();
    phase(name, t0, "promoted server snapshot D");
    check(&standby, "promoted", &snap_c, &snap_d, l_c, true);
    // From the standby's last clean stop, across the promotion. The
    // restartpoint just before B wrote everything the workload dirtied, marked
    // with the replay position past L_b: reported, though already in B.
    check(&standby, "across promotion", &snap_b, &snap_d, l_b, false);
    // Clean stops: an immediate one (Drop) would leave the live map in /dev/shm.
    standby.stop(StopMode::Fast);
    phase(name, t0, "done");
}

/// (c) an immediate stop of the standby while it replays a workload, crash
/// recovery and streaming again, then the cold-copy check against a copy taken
/// before the workload.
#[test]
fn standby_crash_mid_replay() {
    let name = "standby_crash";
    let t0 = Instant::now();
    // Few buffers: replay evicts (writes, marks) pages between restartpoints,
    // and the crash loses those marks from memory.
    let (mut primary, mut standby) = primary_and_standby(name, &[("shared_buffers", "'16MB'")]);
    phase(name, t0, "primary and standby ready");

    let (snap_a, l) = cold_copy(&mut standby, "snap_a");
    standby.start();
    phase(name, t0, &format!("standby snapshot A, L = {l}"));

    let crash_log = std::thread::scope(|s| {
        let writer = s.spawn(|| workload::part1(&primary));
        // pgbench runs for the first 8 seconds of part1.
        std::thread::sleep(Duration::from_secs(5));
        let replayed = standby.replay_lsn();
        let map_before = map_header(&standby.pgdata).expect("standby map");
        standby.stop(StopMode::Immediate);
        phase(
            name,
            t0,
            &format!("standby crashed at replay LSN {replayed}"),
        );
        let mark = standby.log_mark();
        standby.start();
        let log = standby.log_since(mark);
        writer.join().expect("workload thread panicked");
        (log, replayed, map_before)
    });
    let (log, replayed, map_before) = crash_log;
    assert!(
        log.contains("redo starts at"),
        "[{name}] the standby did not run crash recovery after the immediate stop:\n{log}"
    );
    assert!(
        ptrack_warnings(&log).is_empty(),
        "[{name}] the standby's map (written at REDO {}) was not kept across the crash:\n{log}",
        map_before.checkpoint_redo
    );
    assert!(
        l <= replayed,
        "A's REDO {l} after the crash point {replayed}"
    );
    workload::burst(&primary);
    replica::restartpoint(&primary, &standby);
    let (snap_b, _) = cold_copy(&mut standby, "snap_b");
    standby.start();
    phase(name, t0, "standby caught up, snapshot B");
    check(&standby, "standby crash", &snap_a, &snap_b, l, true);
    standby.stop(StopMode::Fast);
    primary.stop(StopMode::Fast);
    phase(name, t0, "done");
}

/// A clean stop of a standby with no checkpoint record to restart at since its
/// latest restartpoint: PostgreSQL skips the shutdown restartpoint (and so
/// ptrack's map flush), while pages evicted during replay since that
/// restartpoint are already on disk. After the restart their changes must
/// still be reported.
///
/// Fails today: the marks of those evictions were only in shared memory; they
/// come back when the next restartpoint writes the pages the replay at start
/// re-dirtied from their full-page images, not before.
#[test]
fn standby_clean_stop_without_restartpoint() {
    let name = "standby_skip_rp";
    let mut primary = Cluster::new(&format!("{name}_primary"));
    primary.set_conf("checkpoint_timeout", "'1h'");
    primary.set_conf("autovacuum", "off");
    primary.start();
    primary.psql(
        "CREATE EXTENSION ptrack;
         CREATE TABLE big (id int, pad text) WITH (autovacuum_enabled = off, fillfactor = 50);
         INSERT INTO big SELECT g, repeat('b', 100) FROM generate_series(1, 40000) g;
         VACUUM (FREEZE) big;
         CHECKPOINT;",
    );
    let mut standby =
        replica::base_backup(&primary, &format!("{name}_standby"), BackupKind::Standby);
    // 2 MB of buffers: replaying an update of every page of `big` evicts.
    standby.set_conf("shared_buffers", "'2MB'");
    standby.set_conf("checkpoint_timeout", "'1h'");
    standby.start();
    primary.psql("UPDATE big SET id = id WHERE id % 1000 = 0;");
    replica::restartpoint(&primary, &standby);
    standby.init_lsn();
    primary.psql("UPDATE big SET id = id WHERE id % 1000 = 1;");
    replica::restartpoint(&primary, &standby);
    let (snap_a, l) = cold_copy(&mut standby, "snap_a");
    standby.start();

    primary.psql("UPDATE big SET pad = 'changed' WHERE id % 2 = 0;");
    replica::catch_up(&primary, &standby);
    let (snap_b, l2) = cold_copy(&mut standby, "snap_b");
    assert_eq!(l2, l, "a restartpoint happened after all");
    // Enough buffers now for the replay at start not to evict (and so not to
    // write and mark) those pages again.
    standby.set_conf("shared_buffers", "'128MB'");
    standby.start();
    let big = standby.query_one("SELECT pg_relation_filepath('big')");
    let report = checker::compare(&snap_a, &snap_b, &standby.pagemapset(l));
    eprintln!("{}", report.summary(name));
    let big_stat = report
        .files
        .iter()
        .find(|f| f.path == big)
        .expect("big compared");
    eprintln!(
        "[{name}] {big}: {} blocks, {} changed on disk by evictions, {} of them not reported",
        big_stat.blocks,
        big_stat.changed,
        big_stat.false_negatives.len()
    );
    assert!(
        big_stat.changed > 0,
        "replay evicted no page of {big}: the case is not exercised"
    );
    // The replay at start re-dirtied those pages from their full-page images:
    // the next restartpoint writes and marks them again.
    replica::restartpoint(&primary, &standby);
    let later = checker::compare(&snap_a, &snap_b, &standby.pagemapset(l));
    eprintln!(
        "[{name}] after the next restartpoint: {} false negatives",
        later.totals().false_negatives
    );
    report.assert_no_false_negatives(name);
    standby.stop(StopMode::Fast);
    primary.stop(StopMode::Fast);
}
