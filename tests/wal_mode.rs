//! WAL mode (`ptrack.mode = wal`): the follower, its slot, its position, and
//! what happens when it falls behind or loses its WAL. These tests force WAL
//! mode, so they run on patched servers too; the cold-copy checks of
//! `cold_copy.rs` run in WAL mode when `PTRACK_TEST_MODE=wal`.

mod common;

use std::time::Duration;

use common::log::expect_warning;
use common::mapfile::map_header_of;
use common::pagemap::assert_reports_all;
use common::util::wait_for;
use common::workload::create_known_table;
use common::{lsn, Cluster, Lsn, StopMode};

fn wal_cluster(name: &str) -> Cluster {
    let mut c = Cluster::new(name);
    c.set_conf("ptrack.mode", "'wal'");
    c.set_conf("autovacuum", "off");
    c.set_conf("checkpoint_timeout", "'1h'");
    c
}

/// `ptrack_status()`: (mode, init LSN, WAL position, lag).
fn status(c: &Cluster) -> (String, Option<Lsn>, Option<Lsn>, Option<i64>) {
    let rows = c.query_rows(
        "SELECT mode, init_lsn, wal_tracked_through, wal_lag_bytes FROM ptrack_status()",
    );
    assert_eq!(
        rows.len(),
        1,
        "ptrack_status() must return one row: {rows:?}"
    );
    let r = &rows[0];
    let opt_lsn = |s: &str| (!s.is_empty()).then(|| lsn(s));
    (
        r[0].clone(),
        opt_lsn(&r[1]),
        opt_lsn(&r[2]),
        (!r[3].is_empty()).then(|| r[3].parse().expect("lag")),
    )
}

/// The follower announces itself, holds its slot, reads up to the WAL end,
/// and the pagemapset covers a table written just before the question.
#[test]
fn follower_tracks_and_reports_its_position() {
    let mut c = wal_cluster("wal_status");
    let mark = c.log_mark();
    c.start();
    let log = c.log_since(mark);
    assert!(
        log.contains("tracking changes in WAL mode"),
        "the chosen mode is not logged at start:\n{log}"
    );
    let (path, blocks) = create_known_table(&c);
    // The new table is in the cut table (created since the map began) until
    // the follower accounts for its length, marking its blocks with an LSN
    // read then; it does so before the map write it makes when it notices
    // the checkpoint. Until that write, the table is rightly reported.
    let redo = c.controldata_redo_lsn();
    assert!(
        wait_for(Duration::from_secs(30), || {
            map_header_of(&c.pgdata.join("global/pgsql_tmp_ptrack.map"))
                .is_some_and(|h| h.checkpoint_redo >= redo)
        }),
        "the follower did not write the map at the checkpoint with REDO {redo}"
    );
    // Its marks carry the WAL position it read, which counts as changed for
    // a start LSN equal to it: move the WAL on before taking one.
    c.psql("CREATE TABLE tick ();");
    let before = c.wal_insert_lsn();
    c.psql(
        "CREATE TABLE fresh AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 5000) g;",
    );
    let (fresh, fresh_blocks) = c.relation_file("postgres", "fresh");
    // No wait here: the function itself waits for the follower.
    let set = c.pagemapset(before);
    assert_reports_all(
        &set,
        &fresh,
        fresh_blocks,
        "a table written before the question",
    );
    assert!(
        set.get(&path).is_none(),
        "{path} ({blocks} blocks) was frozen and checkpointed before {before}, yet it is reported"
    );

    let (mode, init, through, lag) = status(&c);
    assert_eq!(mode, "wal");
    let init = init.expect("an init LSN once the follower runs");
    assert!(
        init <= before,
        "init LSN {init} after the changes it should cover ({before})"
    );
    let through = through.expect("a WAL position in WAL mode");
    assert!(
        through >= before,
        "the follower is at {through}, before {before}"
    );
    assert!(lag.expect("a lag in WAL mode") >= 0);
    let slot = c.query_rows(
        "SELECT slot_type, active, restart_lsn IS NOT NULL FROM pg_replication_slots \
         WHERE slot_name = 'ptrack'",
    );
    assert_eq!(
        slot,
        vec![vec![
            "physical".to_string(),
            "t".to_string(),
            "t".to_string()
        ]],
        "the follower must hold an active physical slot named ptrack"
    );

    // A clean restart resumes from the map file: same init LSN, still covered.
    c.stop(StopMode::Fast);
    assert_eq!(
        common::mapfile::map_files(&c.pgdata),
        vec!["pgsql_tmp_ptrack.map".to_string()],
        "WAL mode keeps its map under the name unpatched tools skip, and only there"
    );
    let header = common::mapfile::map_header_of(&c.pgdata.join("global/pgsql_tmp_ptrack.map"))
        .expect("the map file");
    assert_eq!(header.init_lsn, init);
    c.start();
    let (_, init_after, through_after, _) = status(&c);
    assert_eq!(
        init_after,
        Some(init),
        "the map was not kept across a clean restart"
    );
    assert!(through_after.expect("position") >= through);
    assert_reports_all(
        &c.pagemapset(before),
        &fresh,
        fresh_blocks,
        "after a clean restart",
    );
    c.stop(StopMode::Fast);
}

/// A paused follower makes questions wait, and the wait ends in a clear
/// error at `ptrack.wal_wait_timeout`, not in a wrong answer.
#[test]
fn questions_wait_for_the_follower_and_time_out_clearly() {
    let mut c = wal_cluster("wal_wait");
    c.start();
    c.psql("CREATE EXTENSION ptrack; CREATE TABLE t (v int);");
    let start = c.wal_insert_lsn();
    c.pause_follower();
    c.psql("INSERT INTO t SELECT generate_series(1, 100000);");
    let err = c
        .try_psql(&format!(
            "SET ptrack.wal_wait_timeout = '300ms'; SELECT count(*) FROM ptrack_get_pagemapset('{start}');"
        ))
        .expect_err("a pagemapset while the follower is paused must not answer");
    assert!(
        err.contains("WAL follower") && err.contains("300 ms"),
        "unclear timeout error: {err}"
    );
    c.reset_sighup("ptrack.debug_follower_paused");
    let (path, blocks) = c.relation_file("postgres", "t");
    assert_reports_all(
        &c.pagemapset(start),
        &path,
        blocks,
        "after the follower resumed",
    );
    c.stop(StopMode::Fast);
}

/// WAL the follower had not read is removed (its slot invalidated by
/// `max_slot_wal_keep_size`): the map starts again with a WARNING and an init
/// LSN past the loss, so the lost stretch is reported in full.
#[test]
fn lost_wal_restarts_the_map_with_a_warning() {
    let mut c = wal_cluster("wal_lost");
    c.set_conf("max_slot_wal_keep_size", "'32MB'");
    c.set_conf("max_wal_size", "'64MB'");
    c.set_conf("min_wal_size", "'32MB'");
    c.start();
    let (known, known_blocks) = create_known_table(&c);
    let old_init = status(&c).1.expect("init LSN");
    let before_loss = c.wal_insert_lsn();
    c.pause_follower();
    let mark = c.log_mark();
    // Far more WAL than the slot may keep, and checkpoints to remove it:
    // until the slot is lost (six rounds suffice on a quiet machine).
    let slot_status =
        || c.query_one("SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'ptrack'");
    for _ in 0..20 {
        c.psql(
            "CREATE TABLE filler AS SELECT g, repeat('f', 500) AS pad FROM generate_series(1, 30000) g;
             DROP TABLE filler; CHECKPOINT;",
        );
        if slot_status() == "lost" {
            break;
        }
    }
    let invalidated = slot_status();
    assert_eq!(
        invalidated, "lost",
        "the slot was not invalidated; the test proves nothing"
    );
    c.reset_sighup("ptrack.debug_follower_paused");
    assert!(
        wait_for(Duration::from_secs(60), || {
            status(&c).1.is_some_and(|init| init > before_loss)
        }),
        "the init LSN did not move past the lost WAL: {:?}\n{}",
        status(&c),
        c.log_tail(40)
    );
    let log = c.log_since(mark);
    let warning = expect_warning(&log, &["removed"], "lost WAL");
    eprintln!("lost WAL: {warning}");
    let (_, init, _, _) = status(&c);
    let init = init.expect("init LSN");
    assert!(init > old_init);
    // Before the new init LSN nothing is known: everything is reported.
    assert_reports_all(
        &c.pagemapset(before_loss),
        &known,
        known_blocks,
        "before the loss",
    );
    // After it, tracking is selective again.
    c.psql("CREATE TABLE after_loss AS SELECT generate_series(1, 1000) g; CHECKPOINT;");
    let since = c.wal_insert_lsn();
    assert!(since > init);
    assert!(
        c.pagemapset(since).get(&known).is_none(),
        "{known} reported for an LSN after the new init LSN"
    );
    c.stop(StopMode::Fast);
}

/// A relation cut short by VACUUM and grown again by COPY, which extends by
/// blocks of zeros no WAL record names (PostgreSQL 16 and later). The cut
/// pages were emptied and vacuumed before the older copy (`vacuum_truncate`
/// off kept them), so no record after L names them either: only the
/// truncation record tells that every block past the cut is new, and an
/// incremental restore that kept the old pages would differ from the server.
#[test]
fn a_truncated_relation_grown_back_by_zero_blocks_is_reported() {
    let name = "wal_cut";
    let mut c = wal_cluster(name);
    c.start();
    c.psql(
        "CREATE EXTENSION ptrack;
         CREATE TABLE cut (id int, pad text)
             WITH (autovacuum_enabled = off, fillfactor = 10, vacuum_truncate = off);
         INSERT INTO cut SELECT g, repeat('x', 400) FROM generate_series(1, 4000) g;
         DELETE FROM cut;
         VACUUM (FREEZE) cut;",
    );
    assert_ne!(
        c.query_one("SELECT pg_relation_size('cut')"),
        "0",
        "VACUUM truncated the table already; the test proves nothing"
    );
    let path = c.query_one("SELECT pg_relation_filepath('cut')");
    c.stop(StopMode::Fast);
    let snap_a = c.base.join("snap_a");
    c.snapshot(&snap_a);
    let l = c.controldata_redo_lsn();
    c.start();
    c.psql("ALTER TABLE cut SET (vacuum_truncate = on); VACUUM cut;");
    assert_eq!(
        c.query_one("SELECT pg_relation_size('cut')"),
        "0",
        "VACUUM did not truncate the table; the test proves nothing"
    );
    c.psql("COPY cut (id) FROM PROGRAM 'seq 1 3000';");
    c.stop(StopMode::Fast);
    let snap_b = c.base.join("snap_b");
    c.snapshot(&snap_b);
    c.start();
    let report = common::checker::compare(&snap_a, &snap_b, &c.pagemapset(l));
    eprintln!("{}", report.summary(name));
    let zero_over_old = common::checker::zero_blocks_over_old(&snap_a, &snap_b, &path);
    eprintln!("[{name}] zero blocks over old content: {zero_over_old}");
    let major: u32 = c
        .query_one("SHOW server_version_num")
        .parse::<u32>()
        .expect("version")
        / 10000;
    if major >= 16 {
        assert!(
            zero_over_old > 0,
            "COPY left no zero block where the old table had rows; the test proves nothing"
        );
    }
    // No exception here: these blocks are not of the kinds WAL mode may miss.
    report.assert_no_false_negatives(name);
    c.stop(StopMode::Fast);
}

/// `ptrack.mode = auto` picks the hooks where the server binary has them (the
/// core patch) and the WAL where it has not (e.g. Debian's own packages).
#[test]
fn auto_mode_picks_what_the_server_offers() {
    let postgres = std::fs::read(common::pg_install().bindir.join("postgres"))
        .expect("read the postgres binary");
    let patched = postgres
        .windows(b"mdwrite_hook\0".len())
        .any(|w| w == b"mdwrite_hook\0");
    let mut c = Cluster::new("wal_auto");
    c.set_conf("ptrack.mode", "'auto'");
    let mark = c.log_mark();
    c.start();
    c.psql("CREATE EXTENSION ptrack;");
    let (expected, logged) = if patched {
        ("hooks", "hook")
    } else {
        ("wal", "WAL")
    };
    assert_eq!(status(&c).0, expected, "patched server: {patched}");
    assert!(
        c.log_since(mark)
            .contains(&format!("tracking changes in {logged} mode")),
        "the chosen mode is not in the log"
    );
    c.stop(StopMode::Fast);
}

/// The process id of the cluster's WAL follower (a child of its postmaster
/// titled "ptrack WAL follower"; it has no row in `pg_stat_activity`).
fn follower_pid(c: &Cluster) -> String {
    let postmaster = std::fs::read_to_string(c.pgdata.join("postmaster.pid"))
        .expect("postmaster.pid")
        .lines()
        .next()
        .expect("the postmaster's pid")
        .trim()
        .to_string();
    let found: Vec<String> = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().into_string().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let status = std::fs::read_to_string(entry.path().join("status")).ok()?;
            let parent = status.lines().find_map(|l| l.strip_prefix("PPid:"))?.trim();
            let titled = String::from_utf8_lossy(&cmdline).contains("ptrack WAL follower");
            (titled && parent == postmaster).then_some(pid)
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "WAL followers of postmaster {postmaster}: {found:?}"
    );
    found[0].clone()
}

/// `VmHWM` of a process, in kB: the peak of its resident memory.
fn peak_resident_kb(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status:\n{status}"))
}

/// Any role may write a WAL record of hundreds of MB: `pg_logical_emit_message`
/// is PUBLIC. The follower checks such a record's CRC as it reads it and keeps
/// only its headers, so its memory stays small (an allocation failure would
/// abort it, and the postmaster would then restart every backend), and it
/// reads on past it.
#[test]
fn a_huge_record_from_an_ordinary_role_is_read_in_bounded_memory() {
    const MESSAGE_MB: u64 = 300;
    const FOLLOWER_PEAK_LIMIT_KB: u64 = 64 * 1024;
    let mut c = wal_cluster("wal_huge_record");
    c.set_conf("max_wal_size", "'2GB'");
    c.start();
    let (known, _) = create_known_table(&c);
    c.psql(
        "CREATE ROLE ordinary LOGIN;
         CREATE TABLE after_message (v int);
         GRANT INSERT ON after_message TO ordinary;",
    );
    let follower = || follower_pid(&c);
    let pid = follower();
    let peak_before = peak_resident_kb(&pid);
    let mark = c.log_mark();
    let before = c.wal_insert_lsn();
    c.try_psql_as(
        "postgres",
        "ordinary",
        &format!(
            "SELECT pg_logical_emit_message(false, 'ptrack', repeat('x', {MESSAGE_MB} * 1024 * 1024)) \
             IS NOT NULL;
             INSERT INTO after_message VALUES (1);"
        ),
    )
    .expect("an ordinary role writes a huge logical message");
    let after = c.wal_insert_lsn();
    assert!(
        after.0 - before.0 > MESSAGE_MB << 20,
        "the message did not reach the WAL: {before} to {after}"
    );
    let caught_up = wait_for(Duration::from_secs(300), || {
        status(&c).2.is_some_and(|through| through >= after)
    });
    let log = c.log_since(mark);
    assert!(
        caught_up,
        "the follower did not read past the message: {:?}\n{}",
        status(&c),
        c.log_tail(40)
    );
    for crash in [
        "terminated by signal",
        "terminating any other active server processes",
        "memory allocation of",
        "WAL follower cannot read",
    ] {
        assert!(
            !log.contains(crash),
            "the server log shows {crash:?}:\n{log}"
        );
    }
    assert_eq!(
        follower(),
        pid,
        "the follower was restarted while it read the message"
    );
    let peak = peak_resident_kb(&pid);
    eprintln!(
        "follower peak resident memory: {peak_before} kB before, {peak} kB after a {MESSAGE_MB} MB record"
    );
    assert!(
        peak < FOLLOWER_PEAK_LIMIT_KB,
        "the follower's peak resident memory reached {peak} kB reading a {MESSAGE_MB} MB record \
         (limit {FOLLOWER_PEAK_LIMIT_KB} kB)"
    );
    let (path, blocks) = c.relation_file("postgres", "after_message");
    let set = c.pagemapset(before);
    assert_reports_all(&set, &path, blocks, "a table written after the message");
    assert!(
        set.get(&known).is_none(),
        "{known} was frozen and checkpointed before {before}, yet it is reported"
    );
    c.stop(StopMode::Fast);
}
