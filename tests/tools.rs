//! PostgreSQL's own tools on a ptrack cluster: what they do to the map, and
//! that ptrack never trusts a map after a tool changed blocks behind its back.
//!
//! pg_basebackup and pg_rewind skip the map files and pg_resetwal removes them
//! (the core patch); a restored or rewound data directory (backup_label) and a
//! change of data checksums make the extension discard the map at start.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::checker;
use common::log::{expect_warning, ptrack_warnings};
use common::mapfile::{map_files, map_header};
use common::pagemap::assert_reports_all;
use common::replica::{self, base_backup, BackupKind};
use common::workload::create_known_table;
use common::{chown_to_server, lsn, Cluster, Lsn, StopMode};

/// A cluster that checkpoints only when asked and leaves tables alone.
fn new_cluster(name: &str) -> Cluster {
    let mut c = Cluster::new(name);
    c.set_conf("checkpoint_timeout", "'1h'");
    c.set_conf("autovacuum", "off");
    c
}

/// `START WAL LOCATION` of a backup_label.
fn backup_label_start(label: &str) -> Lsn {
    let line = label
        .lines()
        .find_map(|l| l.strip_prefix("START WAL LOCATION: "))
        .unwrap_or_else(|| panic!("no START WAL LOCATION in backup_label:\n{label}"));
    lsn(line.split_whitespace().next().expect("an LSN"))
}

/// Starts `c`, returning what it logged while starting.
fn start_logged(c: &mut Cluster) -> String {
    let mark = c.log_mark();
    c.start();
    c.log_since(mark)
}

/// (a) A pg_basebackup of a ptrack primary started as a new server: no map in
/// the backup, a new map with a new init LSN, full answers before it.
#[test]
fn basebackup_started_as_new_server() {
    let mut source = new_cluster("bb_source");
    source.start();
    let known = create_known_table(&source);
    assert!(
        source.map_path().exists(),
        "the source has no map to leave out"
    );
    let mid = source.wal_insert_lsn();
    source.psql("CREATE TABLE later AS SELECT g FROM generate_series(1, 1000) g;");

    let mut clone = base_backup(&source, "bb_clone", BackupKind::Clone);
    assert_eq!(
        map_files(&clone.pgdata),
        Vec::<String>::new(),
        "pg_basebackup copied ptrack's map files"
    );
    assert!(!clone.pgdata.join("standby.signal").exists());
    let label = fs::read_to_string(clone.pgdata.join("backup_label")).expect("backup_label");
    let backup_start = backup_label_start(&label);
    assert!(mid < backup_start);
    source.stop(StopMode::Fast);

    let log = start_logged(&mut clone);
    expect_warning(&log, &["not found"], "basebackup clone");
    assert!(!clone.is_in_recovery(), "the clone is not a primary");
    let init = clone.init_lsn();
    assert!(
        init >= backup_start && init > mid,
        "the clone's init LSN {init} is not fresh: backup start {backup_start}, source LSN {mid}"
    );
    assert_reports_all(
        &clone.pagemapset(mid),
        &known.0,
        known.1,
        &format!("clone: LSN {mid} before its init LSN {init}"),
    );
    // From here on the clone tracks its own writes, and only them.
    clone.psql("UPDATE later SET g = -g WHERE g = 1; CHECKPOINT;");
    let later = clone.query_one("SELECT pg_relation_filepath('later')");
    let set = clone.pagemapset(init);
    assert!(
        set.is_set(&later, 0),
        "the clone's own write is not reported"
    );
    assert!(
        set.get(&known.0).is_none(),
        "the untouched table is reported for the clone's init LSN {init}: the new map is not selective"
    );
    clone.stop(StopMode::Fast);
    let h = map_header(&clone.pgdata).expect("the clone writes its own map");
    assert_eq!(h.system_identifier, clone.system_identifier());
    assert_eq!(h.init_lsn, init);
}

/// (b) pg_rewind of an old primary after its standby was promoted and both
/// wrote: the old map is discarded, the rewound server (a standby of the new
/// primary) starts a new map whose init LSN is after the shared history.
#[test]
fn pg_rewind_old_primary() {
    rewind("rewind", false);
}

/// (b, stricter) ... and every block pg_rewind (and the replay after it)
/// changed is reported for the old primary's last checkpoint REDO L, checked
/// block by block against cold copies taken before the rewind and after it.
///
/// This needs the old primary's map: the new map's first marks come from the
/// replay after the rewind, on the new primary's timeline, at LSNs that can be
/// below L. The core patch makes pg_rewind keep the target's map (from
/// PostgreSQL 14 on it would delete it as an excluded file); the extension
/// discards it and starts the new map above the highest LSN it records.
#[test]
fn pg_rewind_reports_what_the_rewind_changed() {
    rewind("rewind_strict", true);
}

fn rewind(name: &str, cold_check: bool) {
    let mut p = new_cluster(&format!("{name}_p"));
    p.set_conf("wal_keep_size", "'128MB'");
    p.start();
    let known = create_known_table(&p);
    p.psql(
        "CREATE TABLE div (id int PRIMARY KEY, v text) WITH (autovacuum_enabled = off);
         INSERT INTO div SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
         CHECKPOINT;",
    );
    let mut s = base_backup(&p, &format!("{name}_s"), BackupKind::Standby);
    s.start();
    replica::catch_up(&p, &s);
    let common_lsn = p.wal_insert_lsn();
    s.promote();

    // Diverge: the old primary rewrites `div`, the new one writes elsewhere.
    p.psql("UPDATE div SET v = v || 'p'; CHECKPOINT;");
    s.psql("CREATE TABLE on_s AS SELECT g FROM generate_series(1, 5000) g; CHECKPOINT;");
    p.stop(StopMode::Fast);
    let snap_a = p.base.join("snap_a");
    p.snapshot(&snap_a);
    let l = p.controldata_redo_lsn();
    let old_map = map_header(&p.pgdata).expect("the old primary's map");
    assert_eq!(old_map.checkpoint_redo, l);

    let out = p.tool(
        "pg_rewind",
        &[
            "--target-pgdata",
            &p.pgdata.display().to_string(),
            "--source-server",
            &s.conninfo(),
            "--write-recovery-conf",
        ],
    );
    eprintln!("pg_rewind: {}", out.trim());
    // pg_rewind copied the new primary's configuration files: give the old
    // primary its own settings back, and no replication slot on the new one.
    p.rewrite_settings();
    let auto_conf = p.pgdata.join("postgresql.auto.conf");
    let kept_lines: String = fs::read_to_string(&auto_conf)
        .expect("postgresql.auto.conf")
        .lines()
        .filter(|l| !l.starts_with("primary_slot_name"))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(&auto_conf, kept_lines).expect("write postgresql.auto.conf");
    assert!(
        p.pgdata.join("backup_label").exists(),
        "pg_rewind left no backup_label"
    );
    assert_eq!(
        map_files(&p.pgdata),
        vec!["ptrack.map".to_string()],
        "pg_rewind must keep the target's map (and only it) for ptrack to discard"
    );
    let kept = map_header(&p.pgdata).expect("the kept map");
    assert_eq!(
        kept, old_map,
        "pg_rewind changed the target's map instead of leaving it alone"
    );
    let log = start_logged(&mut p);
    let w = expect_warning(&log, &["discard"], "rewound primary");
    eprintln!("rewound primary: {w}");
    assert!(p.is_in_recovery(), "the rewound primary is not a standby");

    // Let the new primary's WAL pass L, so that L is a valid start LSN on the
    // rewound server, then write everything out with a restartpoint.
    let mut switches = 0;
    while s.wal_insert_lsn() <= l {
        s.psql("INSERT INTO on_s VALUES (0); SELECT pg_switch_wal();");
        switches += 1;
        assert!(
            switches < 100,
            "could not move the new primary's WAL past {l}"
        );
    }
    replica::restartpoint(&s, &p);
    let init = p.init_lsn();
    eprintln!(
        "rewound primary: init LSN {init}, common history up to {common_lsn}, old primary's \
         last REDO {l}, its map's init {}",
        old_map.init_lsn
    );
    assert!(
        init > common_lsn,
        "init LSN {init} not after the shared history {common_lsn}"
    );
    assert!(
        init > l,
        "init LSN {init} not above the old primary's last checkpoint REDO {l}: changes \
         pg_rewind made offline could be missed for it"
    );
    assert_reports_all(
        &p.pagemapset(common_lsn),
        &known.0,
        known.1,
        &format!("rewound primary: LSN {common_lsn} before its init LSN {init}"),
    );

    if !cold_check {
        s.stop(StopMode::Fast);
        p.stop(StopMode::Fast);
        return;
    }
    p.stop(StopMode::Fast);
    let snap_b = p.base.join("snap_b");
    p.snapshot(&snap_b);
    p.start();
    let pagemap = p.pagemapset(l);
    let report = checker::compare(&snap_a, &snap_b, &pagemap);
    eprintln!("{}", report.summary("pg_rewind"));
    let div = p.query_one("SELECT pg_relation_filepath('div')");
    let div_stat = report
        .files
        .iter()
        .find(|f| f.path == div)
        .unwrap_or_else(|| panic!("{div} not compared"));
    assert!(
        div_stat.changed > 0,
        "pg_rewind did not take back the old primary's changes to {div}"
    );
    if report.totals().false_negatives > 0 {
        eprintln!(
            "rewound primary: init LSN {init} <= L = {l}: the new map claims to know changes \
             since L, but pg_rewind's are not in it"
        );
    }
    report.assert_no_false_negatives("pg_rewind");
    s.stop(StopMode::Fast);
    p.stop(StopMode::Fast);
}

/// (c) pg_resetwal removes the map files; the next start begins a new map.
#[test]
fn pg_resetwal_removes_the_map() {
    let mut c = new_cluster("resetwal");
    c.start();
    let known = create_known_table(&c);
    let old_init = c.init_lsn();
    let mid = c.wal_insert_lsn();
    c.stop(StopMode::Fast);
    assert!(c.map_path().exists());
    let tmp = c.pgdata.join("global/ptrack.map.tmp");
    fs::copy(c.map_path(), &tmp).expect("make a ptrack.map.tmp");
    chown_to_server(&tmp);

    c.tool("pg_resetwal", &["-D", &c.pgdata.display().to_string()]);
    assert_eq!(
        map_files(&c.pgdata),
        Vec::<String>::new(),
        "pg_resetwal left ptrack's map files"
    );
    let log = start_logged(&mut c);
    expect_warning(&log, &["not found"], "pg_resetwal");
    let init = c.init_lsn();
    assert!(
        init > mid && init > old_init,
        "init LSN after pg_resetwal: {init}, before: {old_init}, WAL position before: {mid}"
    );
    assert_reports_all(
        &c.pagemapset(mid),
        &known.0,
        known.1,
        &format!("after pg_resetwal: LSN {mid} before init LSN {init}"),
    );
    c.stop(StopMode::Fast);
}

/// (d) pg_checksums --disable/--enable on a stopped cluster.
///
/// `--enable` rewrites every page whose checksum is not already right. Two
/// cases: a round trip with no start in between (the checksums are all right:
/// nothing is rewritten, the map may stay), and a run with checksums off in
/// between, after which `--enable` rewrites pages: the map must be discarded.
/// Both are checked block by block against cold copies.
#[test]
fn pg_checksums_disable_enable() {
    let mut c = new_cluster("checksums");
    c.start();
    let known = create_known_table(&c);
    c.psql(
        "CREATE TABLE hot (id int, v text) WITH (autovacuum_enabled = off);
         INSERT INTO hot SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
         CHECKPOINT;",
    );
    let pgdata = c.pgdata.display().to_string();

    // 1. Round trip while stopped.
    let mid = c.wal_insert_lsn();
    c.stop(StopMode::Fast);
    let snap_a = c.base.join("snap_a");
    c.snapshot(&snap_a);
    let l = c.controldata_redo_lsn();
    c.tool("pg_checksums", &["--disable", "-D", &pgdata]);
    let out = c.tool("pg_checksums", &["--enable", "-D", &pgdata]);
    eprintln!("pg_checksums --enable: {}", out.trim().replace('\n', "; "));
    let snap_b = c.base.join("snap_b");
    c.snapshot(&snap_b);
    let log = start_logged(&mut c);
    let discarded = ptrack_warnings(&log)
        .iter()
        .any(|w| w.to_lowercase().contains("discard"));
    let report = checker::compare(&snap_a, &snap_b, &c.pagemapset(l));
    eprintln!("{}", report.summary("checksums round trip"));
    report.assert_no_false_negatives("checksums round trip");
    if discarded {
        assert_reports_all(
            &c.pagemapset(mid),
            &known.0,
            known.1,
            "round trip, discarded",
        );
    } else {
        assert_eq!(
            report.totals().changed,
            0,
            "pg_checksums changed blocks and the map was kept"
        );
    }
    eprintln!("checksums round trip: map discarded: {discarded}");

    // 2. Checksums off for a while: pages written without checksums.
    c.stop(StopMode::Fast);
    c.tool("pg_checksums", &["--disable", "-D", &pgdata]);
    let log = start_logged(&mut c);
    expect_warning(&log, &["discard", "checksums"], "checksums turned off");
    assert_eq!(c.query_one("SHOW data_checksums"), "off");
    c.psql("UPDATE hot SET v = v || 'x' WHERE id % 4 = 0; CHECKPOINT;");
    let mid = c.wal_insert_lsn();
    let old_init = c.init_lsn();
    c.stop(StopMode::Fast);
    assert_eq!(
        map_header(&c.pgdata).expect("map").data_checksum_version,
        0,
        "the map written with checksums off records it"
    );
    c.snapshot(&snap_a);
    let l = c.controldata_redo_lsn();
    let out = c.tool("pg_checksums", &["--enable", "-D", &pgdata]);
    eprintln!("pg_checksums --enable: {}", out.trim().replace('\n', "; "));
    c.snapshot(&snap_b);
    let log = start_logged(&mut c);
    let w = expect_warning(&log, &["discard", "checksums"], "checksums turned on");
    eprintln!("checksums on: {w}");
    assert_eq!(c.query_one("SHOW data_checksums"), "on");
    let init = c.init_lsn();
    assert!(
        init > mid && init > old_init,
        "init LSN {old_init} -> {init}, WAL before {mid}"
    );
    assert_reports_all(
        &c.pagemapset(mid),
        &known.0,
        known.1,
        &format!("after pg_checksums --enable: LSN {mid} < init {init}"),
    );
    let report = checker::compare(&snap_a, &snap_b, &c.pagemapset(l));
    eprintln!("{}", report.summary("checksums enabled"));
    report.assert_no_false_negatives("checksums enabled");
    assert!(
        report.totals().changed > 0,
        "pg_checksums --enable rewrote nothing: the case is not exercised"
    );
    c.stop(StopMode::Fast);
}

/// (e) A file-system level backup (pg_backup_start, cp -a including the map,
/// pg_backup_stop, backup_label) started as a new server: the copied map is
/// discarded because of the backup_label.
#[test]
fn file_system_backup_discards_the_map() {
    let mut source = new_cluster("fsb_source");
    source.start();
    let known = create_known_table(&source);
    let mid = source.wal_insert_lsn();

    let mut copy = Cluster::empty_like(&source, "fsb_copy");
    fs::create_dir(&copy.pgdata).expect("mkdir copy");
    fs::set_permissions(&copy.pgdata, fs::Permissions::from_mode(0o700)).expect("chmod");
    chown_to_server(&copy.pgdata);
    let src = source.pgdata.display().to_string();
    let dst = copy.pgdata.display().to_string();
    let out = source.psql(&format!(
        "SELECT 'start:' || pg_backup_start('ptrack test', true);
         CREATE TABLE during_backup AS SELECT g FROM generate_series(1, 10000) g;
         \\! cp -a {src}/. {dst}/ 2>/dev/null
         SELECT 'label:' || encode(convert_to(labelfile, 'UTF8'), 'hex') FROM pg_backup_stop(false);
         \\! cp -a {src}/pg_wal/. {dst}/pg_wal/"
    ));
    let start = lsn(out
        .lines()
        .find_map(|l| l.strip_prefix("start:"))
        .expect("pg_backup_start's LSN"));
    let label_hex = out
        .lines()
        .find_map(|l| l.strip_prefix("label:"))
        .expect("pg_backup_stop's labelfile");
    let label: Vec<u8> = (0..label_hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&label_hex[i..i + 2], 16).expect("hex"))
        .collect();
    assert_eq!(backup_label_start(&String::from_utf8_lossy(&label)), start);
    for f in ["postmaster.pid", "postmaster.opts"] {
        let _ = fs::remove_file(copy.pgdata.join(f));
    }
    let label_path = copy.pgdata.join("backup_label");
    fs::write(&label_path, &label).expect("write backup_label");
    fs::set_permissions(&label_path, fs::Permissions::from_mode(0o600)).expect("chmod");
    chown_to_server(&label_path);
    copy.rewrite_settings();
    let copied = map_header(&copy.pgdata).expect("the copy has the source's map");
    assert_eq!(copied.system_identifier, source.system_identifier());

    let log = start_logged(&mut copy);
    let w = expect_warning(&log, &["discard"], "file-system backup");
    eprintln!("file-system backup: {w}");
    assert!(!copy.is_in_recovery());
    assert_eq!(
        copy.query_one("SELECT count(*) FROM during_backup"),
        "10000"
    );
    let init = copy.init_lsn();
    assert!(
        init >= start && init > mid,
        "init LSN of the copy {init}: backup start {start}, source before {mid}"
    );
    assert_reports_all(
        &copy.pagemapset(mid),
        &known.0,
        known.1,
        &format!("restored copy: LSN {mid} before its init LSN {init}"),
    );
    copy.stop(StopMode::Fast);
    source.stop(StopMode::Fast);
}

/// (f) pg_checksums --check passes on a cluster with map files (skipped).
#[test]
fn pg_checksums_check_skips_the_map() {
    let mut c = new_cluster("checksums_check");
    c.start();
    create_known_table(&c);
    c.stop(StopMode::Fast);
    assert!(c.map_path().exists());
    let tmp = c.pgdata.join("global/ptrack.map.tmp");
    fs::copy(c.map_path(), &tmp).expect("make a ptrack.map.tmp");
    chown_to_server(&tmp);
    let out = c.run_tool(
        "pg_checksums",
        &["--check", "-D", &c.pgdata.display().to_string()],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pg_checksums --check failed:\n{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("Bad checksums:") && l.trim_end().ends_with(" 0")),
        "{text}"
    );
    let scanned: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Blocks scanned:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(scanned > 0, "pg_checksums scanned nothing:\n{text}");
    assert_eq!(map_files(&c.pgdata), vec!["ptrack.map", "ptrack.map.tmp"]);
    // The server removes the leftover temporary file and keeps the map.
    let log = start_logged(&mut c);
    assert!(
        ptrack_warnings(&log).is_empty(),
        "map not kept after pg_checksums --check:\n{log}"
    );
    assert_eq!(map_files(&c.pgdata), vec!["ptrack.map"]);
    c.stop(StopMode::Fast);
}
