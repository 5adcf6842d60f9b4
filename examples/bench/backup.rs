//! Section `backup`: `ptrack_get_pagemapset` against a page-LSN scan of the data directory.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::common::checker::{is_temp_relation_file_name, parse_relation_file_name, relation_dirs};
use crate::common::{lsn, Cluster, Lsn, PageMapSet, StopMode, BLCKSZ};
use crate::json::{obj, Json};
use crate::machine::{drop_caches, load_average};
use crate::options::{Opts, Params};
use crate::report::{median, summary, yes_no};
use crate::{log, Context};

/// Every relation segment file (all forks) under base/, global/ and
/// pg_tblspc/, with its path relative to PGDATA.
fn relation_segment_files(pgdata: &Path) -> Vec<(String, PathBuf)> {
    let mut files = Vec::new();
    for dir in relation_dirs(pgdata) {
        let Ok(entries) = fs::read_dir(pgdata.join(&dir)) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if parse_relation_file_name(&name).is_none() || is_temp_relation_file_name(&name) {
                continue;
            }
            let path = entry.path();
            if path.is_file() {
                files.push((format!("{dir}/{name}"), path));
            }
        }
    }
    files.sort();
    files
}

struct LsnScan {
    seconds: f64,
    files: usize,
    bytes: u64,
    pages: u64,
    changed_pages: u64,
    /// Changed blocks per file, for the comparison with the pagemapset.
    changed: BTreeMap<String, Vec<u64>>,
}

/// Reads every relation segment file sequentially in 1 MB reads and counts
/// the pages whose pd_lsn is at least `since`.
fn lsn_scan(pgdata: &Path, since: Lsn) -> LsnScan {
    let t0 = Instant::now();
    let files = relation_segment_files(pgdata);
    let mut buf = vec![0u8; 1 << 20];
    let mut scan = LsnScan {
        seconds: 0.0,
        files: files.len(),
        bytes: 0,
        pages: 0,
        changed_pages: 0,
        changed: BTreeMap::new(),
    };
    for (rel, path) in &files {
        // Files may vanish while the server runs (it is idle here).
        let Ok(mut f) = fs::File::open(path) else {
            continue;
        };
        let mut block = 0u64;
        let mut changed = Vec::new();
        loop {
            // Fill the buffer (short reads happen) up to EOF.
            let mut filled = 0;
            while filled < buf.len() {
                match f.read(&mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => panic!("read {}: {e}", path.display()),
                }
            }
            if filled == 0 {
                break;
            }
            scan.bytes += filled as u64;
            for page in buf[..filled].chunks_exact(BLCKSZ) {
                let hi = u32::from_le_bytes(page[0..4].try_into().unwrap());
                let lo = u32::from_le_bytes(page[4..8].try_into().unwrap());
                let page_lsn = (u64::from(hi) << 32) | u64::from(lo);
                if page_lsn >= since.0 {
                    changed.push(block);
                }
                block += 1;
            }
            if filled < buf.len() {
                break;
            }
        }
        scan.pages += block;
        scan.changed_pages += changed.len() as u64;
        if !changed.is_empty() {
            scan.changed.insert(rel.clone(), changed);
        }
    }
    scan.seconds = t0.elapsed().as_secs_f64();
    scan
}

/// Runs `prelude` (untimed), then `sql` under psql's `\timing`, in one
/// session; returns the reported milliseconds and `sql`'s output.
fn timed_sql(c: &Cluster, prelude: &str, sql: &str) -> (f64, String) {
    let out = c.psql(&format!("{prelude}\n\\timing on\n{sql}"));
    let out = out
        .lines()
        .skip(prelude.lines().filter(|l| !l.is_empty()).count());
    let out: String = out.map(|l| format!("{l}\n")).collect();
    let ms = out
        .lines()
        .find_map(|l| l.strip_prefix("Time: "))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Time: line in psql's output:\n{out}"));
    let rows = out
        .lines()
        .filter(|l| !l.starts_with("Time: ") && !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    (ms, rows)
}

/// One row of output, untimed, before the timed pagemapset query.
const PAGEMAPSET_PRELUDE: &str = "SELECT ptrack_version(), ptrack_init_lsn();";

pub fn section_backup(_: &Opts, p: &Params, _: &mut Context) -> (Json, String) {
    let mut c = Cluster::new("bench-backup");
    for (k, v) in [
        ("ptrack.map_size", "64"),
        ("shared_buffers", "'256MB'"),
        ("max_wal_size", "'4GB'"),
        ("checkpoint_timeout", "'30min'"),
        ("autovacuum", "off"),
    ] {
        c.set_conf(k, v);
    }
    c.start();
    c.psql("CREATE EXTENSION ptrack");
    log(format!("backup: initializing scale {}", p.backup_scale));
    let t0 = Instant::now();
    c.pgbench("postgres", &["-i", "-s", &p.backup_scale.to_string(), "-q"]);
    let init_s = t0.elapsed().as_secs_f64();
    let cluster_pages_before = lsn_scan(&c.pgdata, Lsn(u64::MAX)).pages;
    let db_size: f64 = c
        .query_one("SELECT pg_database_size('postgres')")
        .parse()
        .unwrap();
    let mut phases = Vec::new();
    let mut notes = Vec::new();
    let mut md = String::new();
    let _ = writeln!(
        md,
        "pgbench scale {} ({:.2} GB database, {} relation pages in the cluster), map 64 MB, \
         hook mode. Per phase: CHECKPOINT, L = pg_current_wal_lsn(), an UPDATE of every \
         M-th account, CHECKPOINT; then `SELECT count(*), sum(pagecount) FROM \
         ptrack_get_pagemapset(L)` (psql \\timing, three runs, each in a session that first \
         runs `{PAGEMAPSET_PRELUDE}` untimed as pg_probackup does; the first right after \
         dropping the page cache) against reading every relation page and comparing its pd_lsn with L (1 MB \
         reads, page cache dropped first).\n",
        p.backup_scale,
        db_size / 1e9,
        cluster_pages_before
    );
    let _ = writeln!(
        md,
        "| changed | pages changed (LSN scan) | pages reported | pagemapset cold | warm | LSN \
         scan cold | warm | cold/cold | cold scan / warm pagemapset | ≥ 100× |\n\
         |---|---|---|---|---|---|---|---|---|---|"
    );
    for (label, modulus) in [("1%", 6100u64), ("10%", 610u64)] {
        log(format!(
            "backup: {label} (every {modulus}th account; load {})",
            load_average()
        ));
        c.psql("CHECKPOINT");
        let since = lsn(&c.query_one("SELECT pg_current_wal_lsn()"));
        let t0 = Instant::now();
        let updated: u64 = c
            .query_one(&format!(
                "WITH u AS (UPDATE pgbench_accounts SET abalance = abalance + 1 \
                 WHERE aid % {modulus} = 0 RETURNING 1) SELECT count(*) FROM u"
            ))
            .parse()
            .unwrap();
        let update_s = t0.elapsed().as_secs_f64();
        c.psql("CHECKPOINT");
        let query =
            format!("SELECT count(*), sum(pagecount) FROM ptrack_get_pagemapset('{since}')");
        let mut pagemapset_ms = Vec::new();
        let mut caches_dropped = true;
        let mut rows = String::new();
        for i in 0..3 {
            if i == 0 {
                caches_dropped &= drop_caches();
            }
            // As a backup tool does: its first queries (pg_probackup asks for
            // the version and the init LSN) bring the backend's catalog caches
            // in, then the timed pagemapset.
            let (ms, out) = timed_sql(&c, PAGEMAPSET_PRELUDE, &query);
            pagemapset_ms.push(ms);
            rows = out;
        }
        let (files_reported, pages_reported) = rows
            .split_once('|')
            .map(|(a, b)| {
                (
                    a.trim().parse::<u64>().unwrap_or(0),
                    b.trim().parse::<u64>().unwrap_or(0),
                )
            })
            .unwrap_or((0, 0));
        caches_dropped &= drop_caches();
        let cold = lsn_scan(&c.pgdata, since);
        let warm = lsn_scan(&c.pgdata, since);
        // Compare what the scan found with what ptrack reported.
        let pms: PageMapSet = c.pagemapset(since);
        let mut changed_not_reported = 0u64;
        let mut changed_not_reported_files = Vec::new();
        for (path, blocks) in &cold.changed {
            let missing = blocks.iter().filter(|&&b| !pms.is_set(path, b)).count() as u64;
            if missing > 0 {
                changed_not_reported += missing;
                changed_not_reported_files.push(format!("{path}: {missing}"));
            }
        }
        let in_full_forks: u64 = pms
            .maps
            .iter()
            .filter(|(path, _)| {
                let name = path.rsplit('/').next().unwrap_or("");
                name.contains("_fsm") || name.contains("_vm")
            })
            .map(|(_, m)| m.pagecount)
            .sum();
        let reported = pms.total_pages();
        let reported_not_changed = reported - (cold.changed_pages - changed_not_reported);
        let pm_cold_s = pagemapset_ms[0] / 1e3;
        let pm_warm_s = median(&pagemapset_ms[1..]) / 1e3;
        let ratio_cold = cold.seconds / pm_cold_s;
        let ratio_cold_scan_warm_pm = cold.seconds / pm_warm_s;
        let ratio_warm = warm.seconds / pm_warm_s;
        let _ = writeln!(
            md,
            "| {label} | {} ({:.2} %) | {} | {:.1} ms | {:.1} ms | {:.2} s | {:.2} s | {:.0}× | \
             {:.0}× | {} |",
            cold.changed_pages,
            cold.changed_pages as f64 * 100.0 / cold.pages as f64,
            reported,
            pagemapset_ms[0],
            pagemapset_ms[1..].iter().copied().fold(f64::NAN, f64::min),
            cold.seconds,
            warm.seconds,
            ratio_cold,
            ratio_cold_scan_warm_pm,
            yes_no(ratio_cold >= 100.0)
        );
        phases.push(obj([
            ("label", label.into()),
            ("modulus", modulus.into()),
            ("since_lsn", since.to_string().into()),
            ("rows_updated", updated.into()),
            ("update_seconds", update_s.into()),
            ("page_cache_dropped", caches_dropped.into()),
            ("pagemapset_ms", pagemapset_ms.clone().into()),
            ("pagemapset_cold_ms", pagemapset_ms[0].into()),
            ("pagemapset_warm_ms", summary(&pagemapset_ms[1..])),
            ("pagemapset_files", files_reported.into()),
            ("pagemapset_pages", pages_reported.into()),
            ("scan_cold_seconds", cold.seconds.into()),
            ("scan_warm_seconds", warm.seconds.into()),
            ("scan_files", cold.files.into()),
            ("scan_bytes", cold.bytes.into()),
            ("scan_pages", cold.pages.into()),
            ("scan_changed_pages", cold.changed_pages.into()),
            (
                "scan_changed_fraction",
                (cold.changed_pages as f64 / cold.pages as f64).into(),
            ),
            ("reported_pages", reported.into()),
            ("reported_pages_fsm_vm_in_full", in_full_forks.into()),
            ("reported_not_lsn_changed", reported_not_changed.into()),
            ("lsn_changed_not_reported", changed_not_reported.into()),
            (
                "lsn_changed_not_reported_files",
                changed_not_reported_files.clone().into(),
            ),
            ("ratio_scan_cold_vs_pagemapset_cold", ratio_cold.into()),
            (
                "ratio_scan_cold_vs_pagemapset_warm",
                ratio_cold_scan_warm_pm.into(),
            ),
            ("ratio_scan_warm_vs_pagemapset_warm", ratio_warm.into()),
            ("target_ratio", 100.0.into()),
            ("target_met", (ratio_cold >= 100.0).into()),
        ]));
        if changed_not_reported > 0 {
            notes.push(format!(
                "**{label}: {changed_not_reported} pages with a page LSN at or after L were not \
                 reported** ({}).",
                changed_not_reported_files.join(", ")
            ));
        }
    }
    for note in &notes {
        let _ = writeln!(md, "\n{note}");
    }
    let _ = writeln!(
        md,
        "\nPages reported but not LSN-changed include the free space and visibility map \
         forks, which are always reported in full, and map false positives; a page with \
         a newer LSN that is not reported would be a false negative (see the JSON: \
         `lsn_changed_not_reported`).\n"
    );
    c.stop(StopMode::Fast);
    let j = obj([
        (
            "setup",
            obj([
                ("scale", p.backup_scale.into()),
                ("database_bytes", db_size.into()),
                ("cluster_relation_pages", cluster_pages_before.into()),
                ("init_seconds", init_s.into()),
                ("map_size_mb", 64u64.into()),
                ("shared_buffers", "256MB".into()),
            ]),
        ),
        ("phases", Json::Arr(phases)),
    ]);
    (j, md)
}
