//! `ptrack.map_size` changed without losing tracking: at start the old map
//! file (verified as fully as one of the right size) is re-keyed into the new
//! map through the data-directory walk, so no block's answer falls and
//! `ptrack_init_lsn()` stays. Run in both modes (`PTRACK_TEST_MODE=wal`).

mod common;

use std::time::Instant;

use common::checker::{self, cold_check, take_snapshot_a};
use common::log::{ptrack_lines, ptrack_warnings};
use common::util::phase;
use common::{workload, Cluster, Lsn, StopMode, MAP_SIZE_MB};

/// Stops the server, sets `ptrack.map_size` to `to_mb` and starts it again;
/// checks the LOG line of the carry-over and that nothing was discarded.
fn resize(c: &mut Cluster, name: &str, from_mb: u64, to_mb: u64, init: Lsn) {
    if c.is_running() {
        c.stop(StopMode::Fast);
    }
    c.set_conf("ptrack.map_size", &to_mb.to_string());
    let mark = c.log_mark();
    c.start();
    let log = c.log_since(mark);
    let discards: Vec<String> = ptrack_warnings(&log)
        .into_iter()
        .filter(|w| w.contains("discard") || w.contains("new map"))
        .collect();
    assert!(
        discards.is_empty(),
        "[{name}] map_size {from_mb} -> {to_mb}: the map was discarded:\n{log}"
    );
    let wanted = format!("map resized from {from_mb} to {to_mb} MB");
    let line = ptrack_lines(&log, "LOG")
        .into_iter()
        .find(|l| l.contains(&wanted))
        .unwrap_or_else(|| panic!("[{name}] no LOG line \"{wanted}\":\n{log}"));
    eprintln!("[{name}] {line}");
    assert_eq!(
        c.query_one("SHOW ptrack.map_size"),
        format!("{to_mb}MB"),
        "[{name}] the setting"
    );
    assert_eq!(
        c.init_lsn(),
        init,
        "[{name}] ptrack_init_lsn() moved at map_size {from_mb} -> {to_mb}"
    );
}

/// A table with content, its pages emptied and vacuumed but kept
/// (`vacuum_truncate` off), so that a later truncation and regrowth by COPY
/// leaves zero blocks where older copies hold rows.
fn create_cut_table(c: &Cluster) -> String {
    c.psql(
        "CREATE TABLE cut (id int, pad text)
             WITH (autovacuum_enabled = off, fillfactor = 10, vacuum_truncate = off);
         INSERT INTO cut SELECT g, repeat('x', 400) FROM generate_series(1, 4000) g;
         DELETE FROM cut;
         VACUUM (FREEZE) cut;",
    );
    c.query_one("SELECT pg_relation_filepath('cut')")
}

fn strict_for(report: &checker::Report, path: &str, name: &str) {
    let stat = report.totals_where(|f| f.path == path);
    assert!(stat.changed > 0, "[{name}] {path} did not change: {stat}");
    assert_eq!(
        stat.false_negatives, 0,
        "[{name}] {path}, truncated before the resize and grown back after it: {stat}"
    );
}

/// The three map sizes the test goes through, in MB: 16, 32, 8 unless
/// `PTRACK_RESIZE_SIZES` says otherwise (`64,256,64` is the target,
/// run by hand: see the README).
fn sizes() -> [u64; 3] {
    let Ok(text) = std::env::var("PTRACK_RESIZE_SIZES") else {
        return [MAP_SIZE_MB, 2 * MAP_SIZE_MB, MAP_SIZE_MB / 2];
    };
    let sizes: Vec<u64> = text
        .split(',')
        .map(|s| s.trim().parse().expect("PTRACK_RESIZE_SIZES: MB,MB,MB"))
        .collect();
    sizes.try_into().expect("PTRACK_RESIZE_SIZES: three sizes")
}

/// 16 → 32 → 8 MB with the cold-copy workload in between; a relation
/// truncated before the first resize is grown back by COPY after it. The
/// cold-copy check passes for L (before the first resize), and for L2 (after
/// the truncation, before the resize: WAL mode's cut table must have been
/// carried over), and the init LSN never moves.
#[test]
fn map_size_changes_keep_tracking() {
    let name = "map_resize";
    let t0 = Instant::now();
    let [first, second, third] = sizes();
    let mut c = Cluster::new(name);
    c.set_conf("autovacuum", "off");
    c.set_conf("ptrack.map_size", &first.to_string());
    c.start();
    workload::setup(&c);
    let cut_path = create_cut_table(&c);
    let snap_a = c.base.join("snap_a");
    let a = take_snapshot_a(&mut c, &snap_a);
    phase(name, t0, &format!("snapshot A taken, L = {}", a.lsn));

    c.start();
    let init = c.init_lsn();
    assert!(init <= a.lsn, "[{name}] init {init} after L {}", a.lsn);
    workload::part1(&c);
    c.psql("ALTER TABLE cut SET (vacuum_truncate = on); VACUUM cut;");
    assert_eq!(
        c.query_one("SELECT pg_relation_size('cut')"),
        "0",
        "[{name}] VACUUM did not truncate the table; the test proves nothing"
    );
    let snap_a2 = c.base.join("snap_a2");
    let a2 = take_snapshot_a(&mut c, &snap_a2);
    resize(&mut c, name, first, second, init);
    phase(name, t0, "resized up");

    workload::part2(&c);
    c.psql("COPY cut (id) FROM PROGRAM 'seq 1 3000';");
    resize(&mut c, name, second, third, init);
    phase(name, t0, "resized down");
    workload::burst(&c);

    let snap_b = c.base.join("snap_b");
    let check = cold_check(&mut c, &a, &snap_b, name);
    assert_eq!(check.init, init, "[{name}] init LSN at the end");
    check.report.assert_no_false_negatives_for_mode(name);
    strict_for(&check.report, &cut_path, name);
    let totals = check.report.totals();
    assert!(
        totals.changed >= 2_000,
        "[{name}] the workload changed only {} blocks: the check proves nothing",
        totals.changed
    );

    let old = std::fs::read(snap_a.join(&cut_path)).expect("older copy");
    let regrown = std::fs::read(snap_b.join(&cut_path)).expect("newer copy");
    let zero_over_old = (0..regrown.len() / common::BLCKSZ)
        .filter(|&b| {
            let range = b * common::BLCKSZ..(b + 1) * common::BLCKSZ;
            regrown[range.clone()].iter().all(|&x| x == 0)
                && old.get(range).is_some_and(|p| p.iter().any(|&x| x != 0))
        })
        .count();
    eprintln!(
        "[{name}] {cut_path}: zero blocks over old content after the regrowth: {zero_over_old}"
    );

    let label = format!("{name} since L2");
    let report = checker::compare(&a2.dir, &snap_b, &c.pagemapset(a2.lsn));
    eprintln!("{}", report.summary(&label));
    report.assert_no_false_negatives_for_mode(&label);
    strict_for(&report, &cut_path, &label);
    phase(name, t0, "compared");

    // The resized map is written at its new size at the next checkpoint.
    c.psql("CHECKPOINT;");
    c.stop(StopMode::Fast);
    // The full part at the new size (the shutdown checkpoint appended a
    // delta record after it).
    let map = std::fs::read(c.map_path()).expect("map file");
    let slots = third * 1_048_576 / 8;
    assert_eq!(
        u64::from_le_bytes(map[24..32].try_into().expect("8 bytes")),
        slots,
        "[{name}] slot count of the map file"
    );
    assert!(
        map.len() >= common::mapfile::full_part_len(slots),
        "[{name}] map file length {}",
        map.len()
    );
}
