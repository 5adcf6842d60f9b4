//! Faults around the map flush: a crash in the middle of one, crashes at
//! random moments, a flush that fails (injected, and a real EFBIG), and the
//! map files' permissions. A crash must never lose a change (checked block by
//! block with cold copies); a failed flush must leave the server up and make
//! the next start discard the stale map rather than trust it.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::checker::{cold_check, take_snapshot_a, ColdCheck, SnapshotA};
use common::env::{mode_and_owner, server_uid};
use common::log::ptrack_lines;
use common::mapfile::{full_part_len, map_header};
use common::util::{phase, seed_from_env, wait_for, Rng};
use common::{workload, Cluster, Lsn, StopMode};

const PAUSE: &str = "ptrack.debug_flush_pause_ms";
const FAIL_AFTER: &str = "ptrack.debug_flush_fail_after_chunks";
/// Every flush writes the whole map (a temporary file and a rename) while 1;
/// otherwise only the first after a start does, and later ones append delta
/// records to the map file.
const FULL: &str = "ptrack.debug_full_flushes";

/// A new cluster with the settings `conf`, the workload's starting state and
/// snapshot A (taken at a clean stop); the server runs again.
fn with_snapshot_a(name: &str, t0: Instant, conf: &[(&str, &str)]) -> (Cluster, SnapshotA) {
    let mut c = Cluster::new(name);
    for (key, value) in conf {
        c.set_conf(key, value);
    }
    c.start();
    workload::setup(&c);
    let snap_a = c.base.join("snap_a");
    let a = take_snapshot_a(&mut c, &snap_a);
    phase(name, t0, &format!("snapshot A, L = {}", a.lsn));
    c.start();
    (c, a)
}

/// The checkpoint REDO LSN of the map on disk: `global/ptrack.map`'s, or
/// its delta file's last whole record's.
fn map_header_redo(c: &Cluster) -> Lsn {
    map_header(&c.pgdata)
        .expect("read global/ptrack.map")
        .checkpoint_redo
}

/// Asserts the log excerpt shows crash recovery.
fn assert_recovered(name: &str, log: &str) {
    assert!(
        log.contains("automatic recovery in progress") || log.contains("redo starts at"),
        "[{name}] no crash recovery after the immediate stop:\n{log}"
    );
}

/// Asserts zero false negatives and that the map was kept across everything.
fn assert_sound(name: &str, check: &ColdCheck, l: Lsn, min_changed: u64) {
    check.report.assert_no_false_negatives(name);
    assert!(
        check.init <= l,
        "[{name}] ptrack_init_lsn() = {} is after L = {l}: the map was discarded, the check \
         proves nothing",
        check.init
    );
    let t = check.report.totals();
    assert!(
        t.changed >= min_changed,
        "[{name}] only {} blocks changed: the workload did not run",
        t.changed
    );
}

/// (a) An immediate stop while the checkpointer is in the middle of writing
/// `global/ptrack.map.tmp`: the previous map must be used, the leftover
/// temporary file removed at start, and no change lost.
#[test]
fn immediate_stop_during_map_flush() {
    let name = "flush_crash";
    let t0 = Instant::now();
    // ptrack.map_size = 64: 256 chunks of 256 kB.
    let conf = [("ptrack.map_size", "64"), ("shared_buffers", "'16MB'")];
    let (mut c, a) = with_snapshot_a(name, t0, &conf);
    c.set_sighup(FULL, "1");
    c.set_sighup(PAUSE, "50"); // a flush now takes >= 12.8 s
    let bench = c.spawn_pgbench(
        workload::BENCH_DB,
        &["-n", "-c", "2", "-j", "2", "-T", "300"],
    );
    std::thread::sleep(Duration::from_secs(2));
    let checkpoint = c.spawn_psql("CHECKPOINT");
    let tmp = c.temp_map_path();
    assert!(
        wait_for(Duration::from_secs(120), || tmp.exists()),
        "[{name}] global/ptrack.map.tmp never appeared"
    );
    // (e) also holds for the temporary file.
    assert_private_to_server(name, &tmp);
    // Let a few chunks reach the file: we stop in the middle, not at the start.
    let len = |p: &std::path::Path| fs::metadata(p).map_or(0, |m| m.len());
    assert!(
        wait_for(Duration::from_secs(60), || len(&tmp) >= 4 << 20),
        "[{name}] the flush does not progress"
    );
    // Without a reload: the running checkpointer keeps pausing, the next start
    // does not.
    c.psql(&format!(
        "ALTER SYSTEM RESET {PAUSE}; ALTER SYSTEM RESET {FULL};"
    ));
    let redo_before = c.controldata_redo_lsn();
    c.stop(StopMode::Immediate);
    let leftover = len(&tmp);
    assert!(
        tmp.exists() && leftover < 64 << 20,
        "[{name}] the immediate stop did not leave a partial global/ptrack.map.tmp"
    );
    assert_eq!(
        c.controldata_redo_lsn(),
        redo_before,
        "[{name}] the interrupted checkpoint completed"
    );
    assert!(
        !checkpoint.finish(Duration::from_secs(30)),
        "[{name}] the CHECKPOINT succeeded although the server was stopped during it"
    );
    bench.finish(Duration::from_secs(30));
    phase(
        name,
        t0,
        &format!("stopped in the middle of the flush ({leftover} bytes of .tmp written)"),
    );

    let mark = c.log_mark();
    c.start();
    let log = c.log_since(mark);
    assert_recovered(name, &log);
    // The live map in tmpfs is resumed (or, without tmpfs, the map file of
    // the previous checkpoint loaded): either way nothing is discarded.
    assert!(
        log.contains("ptrack: resumed the live map") || log.contains("ptrack: loaded map"),
        "[{name}] neither the live map resumed nor the previous map loaded:\n{log}"
    );
    assert!(
        !log.contains("discard"),
        "[{name}] a map was discarded after the crash:\n{log}"
    );
    assert!(
        !tmp.exists(),
        "[{name}] the leftover global/ptrack.map.tmp was not removed at start"
    );
    workload::part2(&c);
    let snap_b = c.base.join("snap_b");
    let check = cold_check(&mut c, &a, &snap_b, name);
    assert_sound(name, &check, a.lsn, 2_000);
    phase(name, t0, "done");
}

/// (a') An immediate stop in the middle of a delta append, and a start
/// without the live map (as after a reboot): the map is the full file and
/// the delta's whole records; the record cut short is ignored, pg_control
/// still names the checkpoint of the last whole one, and no change is lost.
#[test]
fn immediate_stop_during_a_delta_append() {
    let name = "delta_crash";
    let t0 = Instant::now();
    let conf = [("ptrack.map_size", "64"), ("shared_buffers", "'16MB'")];
    let (mut c, a) = with_snapshot_a(name, t0, &conf);
    let map = c.map_path();
    let len = |p: &std::path::Path| fs::metadata(p).map_or(0, |m| m.len());
    let full_part = full_part_len(64 << 17) as u64;
    // The first flush after the start writes the full map, the next one a
    // whole delta record after it.
    c.psql("CHECKPOINT");
    assert_eq!(
        len(&map),
        full_part,
        "[{name}] the full flush left delta records"
    );
    c.pgbench(workload::BENCH_DB, &["-n", "-c", "2", "-j", "2", "-T", "2"]);
    c.psql("CHECKPOINT");
    let whole = len(&map);
    assert!(
        whole > full_part,
        "[{name}] the second flush appended nothing"
    );
    assert_eq!(map_header_redo(&c), c.controldata_redo_lsn());

    // 30 s after the next record's header ("29999ms": SHOW keeps the unit).
    c.set_sighup(PAUSE, "29999");
    let bench = c.spawn_pgbench(
        workload::BENCH_DB,
        &["-n", "-c", "2", "-j", "2", "-T", "300"],
    );
    std::thread::sleep(Duration::from_secs(2));
    let checkpoint = c.spawn_psql("CHECKPOINT");
    assert!(
        wait_for(Duration::from_secs(60), || len(&map) > whole),
        "[{name}] no delta append began"
    );
    c.psql(&format!("ALTER SYSTEM RESET {PAUSE};"));
    let redo_before = c.controldata_redo_lsn();
    c.stop(StopMode::Immediate);
    assert_eq!(
        len(&map),
        whole + 64,
        "[{name}] the stop did not leave a record cut after its header"
    );
    assert_eq!(c.controldata_redo_lsn(), redo_before);
    assert!(!checkpoint.finish(Duration::from_secs(30)));
    bench.finish(Duration::from_secs(30));
    if let Some(live) = c.live_map_file() {
        fs::remove_file(live).expect("remove the live map");
    }
    phase(name, t0, "stopped in the middle of a delta append");

    let mark = c.log_mark();
    c.start();
    let log = c.log_since(mark);
    assert_recovered(name, &log);
    assert!(
        log.contains("ptrack: loaded map") && log.contains("with 1 delta records"),
        "[{name}] the full map and its one whole delta record were not loaded:\n{log}"
    );
    assert!(
        !log.contains("discard"),
        "[{name}] a map was discarded after the crash:\n{log}"
    );
    workload::part2(&c);
    let snap_b = c.base.join("snap_b");
    let check = cold_check(&mut c, &a, &snap_b, name);
    assert_sound(name, &check, a.lsn, 2_000);
    phase(name, t0, "done");
}

/// Background DDL run during the random-crash cycles.
const CRASH_DDL: &[&str] = &[
    "VACUUM FULL vf_t",
    "CLUSTER cl_t USING cl_t_pkey",
    "UPDATE setup_t SET v = v || 'r' WHERE id % 7 = 0",
    "INSERT INTO tr_t SELECT g, md5(g::text) FROM generate_series(1, 30000) g",
    "CREATE INDEX IF NOT EXISTS setup_t_v_crash ON setup_t (v)",
    "DROP INDEX IF EXISTS setup_t_v_crash",
    "VACUUM",
];

/// (b) Immediate stops at random moments (workload, DDL, checkpoints and slow
/// map flushes in flight), then the cold-copy check.
#[test]
fn immediate_stops_at_random_moments() {
    let name = "random_stops";
    let t0 = Instant::now();
    let seed = seed_from_env("PTRACK_FAULT_SEED");
    eprintln!("[{name}] seed {seed} (rerun with PTRACK_FAULT_SEED={seed})");
    let mut rng = Rng::new(seed);
    let (mut c, a) = with_snapshot_a(name, t0, &[("shared_buffers", "'16MB'")]);
    // 64 chunks x 20 ms: every flush lasts >= 1.3 s, so some stops hit one.
    c.set_sighup(PAUSE, "20");

    let cycles = 6;
    let mut during_flush = 0;
    let mut full_flushes = false;
    let mut backend_kills = 0;
    for cycle in 0..cycles {
        let clients = rng.range(1, 3).to_string();
        let script = *rng.pick(&["tpcb-like", "simple-update", "select-only"]);
        let bench = c.spawn_pgbench(
            workload::BENCH_DB,
            &[
                "-n", "-b", script, "-c", &clients, "-j", &clients, "-T", "120",
            ],
        );
        let ddl_sql = rng.chance(0.6).then(|| *rng.pick(CRASH_DDL));
        let ddl = ddl_sql.map(|sql| c.spawn_psql(sql));
        // One cycle in three aims at a map flush: CHECKPOINT, wait for the
        // temporary map file, stop 0-600 ms into the (>= 1.3 s) flush.
        let aim_at_flush = rng.chance(0.34);
        // Full writes only when aiming at one; the other checkpoints append
        // to the delta file, and stops land in those appends at random.
        if aim_at_flush != full_flushes {
            c.set_sighup(FULL, if aim_at_flush { "1" } else { "0" });
            full_flushes = aim_at_flush;
        }
        let checkpoint = (aim_at_flush || rng.chance(0.5)).then(|| {
            std::thread::sleep(Duration::from_millis(rng.range(0, 1500)));
            c.spawn_psql("CHECKPOINT")
        });
        let sleep_ms = rng.range(
            if aim_at_flush { 0 } else { 300 },
            if aim_at_flush { 600 } else { 4000 },
        );
        if aim_at_flush {
            let tmp = c.temp_map_path();
            assert!(
                wait_for(Duration::from_secs(60), || tmp.exists()),
                "[{name}] cycle {cycle}: no map flush after CHECKPOINT"
            );
        }
        std::thread::sleep(Duration::from_millis(sleep_ms));
        let in_flush = c.temp_map_path().exists();
        during_flush += u32::from(in_flush);
        // Before the kill: the postmaster may log the backend's death before
        // kill_a_backend returns.
        let mark = c.log_mark();
        // One crash in four kills a backend instead: the postmaster then ends
        // every process and re-creates shared memory by itself.
        let killed = if rng.chance(0.25) {
            c.kill_a_backend("pgbench")
        } else {
            None
        };
        if killed.is_some() {
            assert!(
                c.wait_ready(Duration::from_secs(120)),
                "[{name}] cycle {cycle}: the server did not come back after a backend was killed"
            );
        } else {
            c.stop(StopMode::Immediate);
        }
        bench.finish(Duration::from_secs(30));
        if let Some(p) = ddl {
            p.finish(Duration::from_secs(30));
        }
        let checkpointed = checkpoint.is_some();
        if let Some(p) = checkpoint {
            p.finish(Duration::from_secs(30));
        }
        if killed.is_none() {
            c.start();
        }
        let log = c.log_since(mark);
        assert_recovered(name, &log);
        assert!(
            !log.contains("discard"),
            "[{name}] cycle {cycle}: a map was discarded:\n{log}"
        );
        if killed.is_some() {
            backend_kills += 1;
            assert!(
                log.contains("terminated by signal 9"),
                "[{name}] cycle {cycle}: no backend crash in the log:\n{log}"
            );
        }
        phase(
            name,
            t0,
            &format!(
                "cycle {cycle}: {script} x{clients}, ddl {:?}, checkpoint {}, {} after {sleep_ms} ms{}",
                ddl_sql,
                checkpointed,
                if killed.is_some() { "backend killed" } else { "immediate stop" },
                if in_flush { " (during a map flush)" } else { "" }
            ),
        );
    }
    c.reset_sighup(PAUSE);
    c.reset_sighup(FULL);
    c.pgbench(workload::BENCH_DB, &["-n", "-c", "2", "-j", "2", "-T", "3"]);
    let snap_b = c.base.join("snap_b");
    let check = cold_check(&mut c, &a, &snap_b, name);
    eprintln!(
        "[{name}] seed {seed}: {cycles} crashes ({backend_kills} backend kills), {during_flush} \
         during a map flush"
    );
    assert_sound(name, &check, a.lsn, 1_000);
    phase(name, t0, "done");
}

/// Creates a small table nobody writes afterwards and returns (path, blocks).
fn known_table(c: &Cluster) -> (String, u64) {
    c.psql(
        "CREATE EXTENSION IF NOT EXISTS ptrack;
         CREATE TABLE known (id int, pad text) WITH (autovacuum_enabled = off);
         INSERT INTO known SELECT g, repeat('k', 300) FROM generate_series(1, 3000) g;
         VACUUM (FREEZE) known;
         CHECKPOINT;",
    );
    let (path, blocks) = c.relation_file("postgres", "known");
    assert!(blocks > 50, "known has only {blocks} blocks");
    (path, blocks)
}

/// After a failed flush and a restart: the stale map was discarded, the init
/// LSN moved forward, and a question from before it gets every block.
fn assert_stale_map_discarded(
    name: &str,
    c: &Cluster,
    log: &str,
    old_init: Lsn,
    known: &(String, u64),
) {
    let warnings = ptrack_lines(log, "WARNING");
    assert!(
        warnings.iter().any(|w| w.contains("discard")),
        "[{name}] the stale map was not discarded at start; ptrack warnings: {warnings:#?}\n{log}"
    );
    let new_init = c.init_lsn();
    assert!(
        new_init > old_init,
        "[{name}] init LSN did not move forward: {old_init} -> {new_init}"
    );
    let pm = c.pagemapset(old_init);
    let (path, blocks) = known;
    let map = pm
        .get(path)
        .unwrap_or_else(|| panic!("[{name}] {path} not reported for the old init LSN"));
    let missing: Vec<u64> = (0..*blocks).filter(|&b| !map.is_set(b)).collect();
    assert!(
        missing.is_empty(),
        "[{name}] blocks of {path} not reported for {old_init} < init LSN {new_init}: {missing:?}"
    );
    eprintln!(
        "[{name}] stale map discarded: init LSN {old_init} -> {new_init}, all {blocks} blocks of \
         {path} reported for {old_init} ({} files, {} pages in all)",
        pm.len(),
        pm.total_pages()
    );
}

/// (c) Every flush fails after one chunk: checkpoints still complete, the
/// server keeps serving, and the restart discards the stale map.
#[test]
fn failing_flush_keeps_the_server_up() {
    let name = "flush_fails";
    let mut c = Cluster::new(name);
    c.start();
    let known = known_table(&c);
    let old_init = c.init_lsn();
    let good_redo = map_header_redo(&c);
    c.set_sighup(FAIL_AFTER, "1");

    let mark = c.log_mark();
    c.psql("CREATE TABLE after_fault AS SELECT g FROM generate_series(1, 10000) g;");
    let redo_before = c.controldata_redo_lsn();
    c.psql("CHECKPOINT;"); // must not fail
    let redo_after = c.controldata_redo_lsn();
    assert!(
        redo_after > redo_before,
        "[{name}] the checkpoint did not complete: REDO {redo_before} -> {redo_after}"
    );
    let log = c.log_since(mark);
    let warnings = ptrack_lines(&log, "WARNING");
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("ptrack: could not write")),
        "[{name}] no 'could not write' WARNING:\n{log}"
    );
    eprintln!("[{name}] {}", warnings[0]);
    assert!(
        !c.temp_map_path().exists(),
        "[{name}] .tmp left after the failed flush"
    );
    assert_eq!(
        map_header_redo(&c),
        good_redo,
        "[{name}] global/ptrack.map changed although every flush fails"
    );
    // Still serving, reads and writes.
    assert_eq!(c.query_one("SELECT count(*) FROM after_fault"), "10000");
    c.psql("INSERT INTO after_fault VALUES (0); CHECKPOINT;");
    assert_eq!(c.query_one("SELECT count(*) FROM known"), "3000");
    assert!(!c.pagemapset(c.init_lsn()).is_empty());

    // Restart with the fault still on: the shutdown checkpoint's flush fails
    // too, the map on disk stays stale.
    c.stop(StopMode::Fast);
    assert!(
        map_header_redo(&c) < c.controldata_redo_lsn(),
        "[{name}] the map on disk is not older than the latest checkpoint"
    );
    let mark = c.log_mark();
    c.start();
    let log = c.log_since(mark);
    assert_stale_map_discarded(name, &c, &log, old_init, &known);

    // Clearing the fault: the next checkpoint writes a good map, kept over a restart.
    c.reset_sighup(FAIL_AFTER);
    c.psql("CHECKPOINT;");
    let init = c.init_lsn();
    let mark = c.log_mark();
    c.restart();
    let log = c.log_since(mark);
    // Hook mode resumes the live map the clean stop kept; WAL mode, or a
    // server without tmpfs, loads the map file.
    assert!(
        log.contains("ptrack: resumed the live map") || log.contains("ptrack: loaded map"),
        "[{name}] map neither resumed nor loaded:\n{log}"
    );
    assert_eq!(
        c.init_lsn(),
        init,
        "[{name}] init LSN changed over a clean restart"
    );
}

/// (d) A real I/O error: the server runs under a file-size limit smaller than
/// the 64 MB map (but larger than WAL segments and relation files), so every
/// flush fails with EFBIG.
#[test]
fn efbig_flush_keeps_the_server_up() {
    let name = "efbig";
    let mut c = Cluster::new(name);
    c.set_conf("ptrack.map_size", "64");
    c.start();
    let known = known_table(&c);
    let old_init = c.init_lsn();
    c.stop(StopMode::Fast);

    let mark = c.log_mark();
    c.try_start_with_file_size_limit(40 * 1024)
        .unwrap_or_else(|e| panic!("{e}"));
    let limit = fs::read_to_string(format!(
        "/proc/{}/limits",
        c.postmaster_pid().expect("postmaster.pid")
    ))
    .unwrap_or_default();
    let fsize = limit
        .lines()
        .find(|l| l.starts_with("Max file size"))
        .unwrap_or("")
        .to_string();
    assert!(
        fsize.contains("41943040"),
        "[{name}] postmaster limit: {fsize:?}"
    );
    c.psql("CREATE TABLE after_limit AS SELECT g FROM generate_series(1, 10000) g;");
    let redo_before = c.controldata_redo_lsn();
    c.psql("CHECKPOINT;");
    assert!(
        c.controldata_redo_lsn() > redo_before,
        "[{name}] checkpoint did not complete"
    );
    let log = c.log_since(mark);
    let warnings = ptrack_lines(&log, "WARNING");
    let efbig = warnings
        .iter()
        .find(|w| w.contains("ptrack: could not write"))
        .unwrap_or_else(|| panic!("[{name}] no 'could not write' WARNING:\n{log}"));
    assert!(
        efbig.contains("File too large"),
        "[{name}] the flush failed, but not with EFBIG: {efbig}"
    );
    eprintln!("[{name}] {efbig}");
    assert!(
        !c.temp_map_path().exists(),
        "[{name}] .tmp left after the failed flush"
    );
    assert_eq!(c.query_one("SELECT count(*) FROM after_limit"), "10000");
    c.pgbench("postgres", &["-i", "-s", "1", "-q"]);
    c.stop(StopMode::Fast);

    let mark = c.log_mark();
    c.start(); // no limit
    let log = c.log_since(mark);
    assert_stale_map_discarded(name, &c, &log, old_init, &known);
    c.psql("CHECKPOINT;");
    assert!(
        fs::metadata(c.map_path()).expect("map").len() > 64 << 20,
        "[{name}] no full map written without the limit"
    );
}

/// (e) The map files are private to the server's OS user.
#[test]
fn map_files_are_private() {
    let name = "map_modes";
    let mut c = Cluster::new(name);
    c.start();
    c.psql("CREATE EXTENSION ptrack; CREATE TABLE t AS SELECT 1 AS x; CHECKPOINT;");
    assert_private_to_server(name, &c.map_path());

    // Catch the temporary file during a slowed-down full flush.
    c.set_sighup(FULL, "1");
    c.set_sighup(PAUSE, "20");
    let checkpoint = c.spawn_psql("CHECKPOINT");
    let tmp = c.temp_map_path();
    assert!(
        wait_for(Duration::from_secs(60), || tmp.exists()),
        "[{name}] no global/ptrack.map.tmp during a flush"
    );
    assert_private_to_server(name, &tmp);
    assert!(
        checkpoint.finish(Duration::from_secs(60)),
        "CHECKPOINT failed"
    );
    // The live map in tmpfs, when the server keeps one.
    if let Some(live) = c.live_map_file() {
        assert_private_to_server(name, &live);
    } else {
        eprintln!("[{name}] no live map in /dev/shm: the server keeps it in shared memory");
    }
    c.reset_sighup(PAUSE);
    c.reset_sighup(FULL);
    c.restart();
    assert_private_to_server(name, &c.map_path());
}

/// `path` has mode 0600 and belongs to the server's OS user, like every file
/// PostgreSQL keeps in PGDATA.
fn assert_private_to_server(name: &str, path: &std::path::Path) {
    let (mode, uid) =
        mode_and_owner(path).unwrap_or_else(|| panic!("[{name}] stat {}", path.display()));
    assert_eq!(mode, 0o600, "[{name}] {} has mode {mode:o}", path.display());
    assert_eq!(uid, server_uid(), "[{name}] {} owner", path.display());
}
