//! Section `pgbench`: TPS, CPU and WAL per transaction, ptrack off against its modes.

use std::fmt::Write as _;
use std::fs;
use std::time::{Duration, Instant};

use crate::common::{chown_to_server, Cluster, StopMode};
use crate::criterion::read_criterion;
use crate::json::{obj, Json};
use crate::machine::load_average;
use crate::options::{Opts, Params};
use crate::report::{max, median, min, series, summary, vs_off};
use crate::server::{
    server_cpu_seconds, switch_to, wait_reader, HOOKS_1GB, HOOKS_64MB, OFF, SUMMARIZE_WAL, WAL_64MB,
};
use crate::{log, Context, MB};

/// (tps without initial connection time, transactions processed).
fn parse_pgbench(out: &str) -> (f64, u64) {
    let tps = out
        .lines()
        .find(|l| l.starts_with("tps = ") && l.contains("without initial connection time"))
        .and_then(|l| l["tps = ".len()..].split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no tps line in pgbench's output:\n{out}"));
    let tx = out
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split(['/', ' ']).next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no transaction count in pgbench's output:\n{out}"));
    (tps, tx)
}

const WRITE_HEAVY: &str = "\\set aid random(1, 100000 * :scale)
\\set bid random(1, 1 * :scale)
\\set tid random(1, 10 * :scale)
\\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
END;
";

/// What every configuration's block starts with (before its CHECKPOINT): the
/// same history size and vacuumed small tables, as plain pgbench does before
/// each run.
const PGBENCH_RESET: &str = "TRUNCATE pgbench_history; VACUUM pgbench_branches, pgbench_tellers";

struct PgbenchRound {
    round: usize,
    config: &'static str,
    workload: &'static str,
    tps: f64,
    transactions: u64,
    elapsed_s: f64,
    wal_bytes: f64,
    cpu_s: f64,
    reader_catch_up_s: Option<f64>,
}

impl PgbenchRound {
    fn cpu_us_per_tx(&self) -> f64 {
        self.cpu_s * 1e6 / self.transactions as f64
    }
    fn wal_mb_per_s(&self) -> f64 {
        self.wal_bytes / MB / self.elapsed_s
    }
    fn wal_bytes_per_tx(&self) -> f64 {
        self.wal_bytes / self.transactions as f64
    }

    /// The round's raw numbers, as the JSON's `rounds` lists them.
    fn to_json(&self) -> Json {
        obj([
            ("round", self.round.into()),
            ("config", self.config.into()),
            ("workload", self.workload.into()),
            ("tps", self.tps.into()),
            ("transactions", self.transactions.into()),
            ("elapsed_s", self.elapsed_s.into()),
            ("wal_bytes", self.wal_bytes.into()),
            ("cpu_s", self.cpu_s.into()),
            ("cpu_us_per_tx", self.cpu_us_per_tx().into()),
            ("wal_mb_per_s", self.wal_mb_per_s().into()),
            ("reader_catch_up_s", self.reader_catch_up_s.into()),
        ])
    }
}

pub fn section_pgbench(opts: &Opts, p: &Params, ctx: &mut Context) -> (Json, String) {
    if ctx.criterion.is_empty() {
        // An earlier run's decoder result, if any, for the ratio.
        ctx.criterion = read_criterion(&opts.criterion_dir, None);
    }
    let configs = [&OFF, &HOOKS_64MB, &HOOKS_1GB, &WAL_64MB, &SUMMARIZE_WAL];
    let mut c = Cluster::new("bench-pgbench");
    for (k, v) in [
        ("shared_buffers", "'128MB'"),
        ("synchronous_commit", "off"),
        ("checkpoint_timeout", "'5min'"),
        ("max_wal_size", "'4GB'"),
        ("autovacuum", "off"),
        ("log_checkpoints", "on"),
    ] {
        c.set_conf(k, v);
    }
    c.start();
    c.psql("CREATE EXTENSION ptrack");
    let scale = p.pgbench_scale.to_string();
    log(format!("pgbench: initializing scale {scale}"));
    let t0 = Instant::now();
    c.pgbench("postgres", &["-i", "-s", &scale, "-q"]);
    let init_s = t0.elapsed().as_secs_f64();
    let db_size: f64 = c
        .query_one("SELECT pg_database_size('postgres')")
        .parse()
        .unwrap();
    let script = c.base.join("write_heavy.sql");
    fs::write(&script, WRITE_HEAVY).expect("write the pgbench script");
    chown_to_server(&script);
    let script = script.display().to_string();
    let seconds = p.round_seconds.to_string();
    let clients = p.clients.to_string();
    let workloads: [(&str, Vec<&str>); 2] = [
        (
            "tpcb-like",
            vec![
                "-n", "-c", &clients, "-j", &clients, "-T", &seconds, "-M", "prepared",
            ],
        ),
        (
            "write-heavy",
            vec![
                "-n", "-c", &clients, "-j", &clients, "-T", &seconds, "-M", "prepared", "-s",
                &scale, "-f", &script,
            ],
        ),
    ];

    // The first updates after the load find full pages (fillfactor 100) and
    // extend the table; pass that before measuring anything.
    log(format!("pgbench: warm-up, {} s", p.warmup_seconds));
    c.pgbench(
        "postgres",
        &[
            "-n",
            "-c",
            &clients,
            "-j",
            &clients,
            "-T",
            &p.warmup_seconds.to_string(),
            "-M",
            "prepared",
        ],
    );
    let mut rounds: Vec<PgbenchRound> = Vec::new();
    for round in 0..p.rounds {
        for cfg in configs {
            log(format!(
                "pgbench: round {}/{}, {} (load {})",
                round + 1,
                p.rounds,
                cfg.name,
                load_average()
            ));
            switch_to(&mut c, cfg, PGBENCH_RESET);
            for (workload, args) in &workloads {
                let lsn0 = c.wal_insert_lsn();
                std::thread::sleep(Duration::from_millis(100));
                let cpu0 = server_cpu_seconds(&c);
                let t0 = Instant::now();
                let out = c.pgbench("postgres", args);
                let elapsed_s = t0.elapsed().as_secs_f64();
                // Let the backends exit, and the WAL reader (if any) finish
                // the transactions' WAL: its work is part of their cost.
                std::thread::sleep(Duration::from_millis(200));
                let reader_catch_up_s = wait_reader(&c, cfg);
                let cpu1 = server_cpu_seconds(&c);
                let lsn1 = c.wal_insert_lsn();
                let (tps, transactions) = parse_pgbench(&out);
                rounds.push(PgbenchRound {
                    round,
                    config: cfg.name,
                    workload,
                    tps,
                    transactions,
                    elapsed_s,
                    wal_bytes: (lsn1.0 - lsn0.0) as f64,
                    cpu_s: cpu1 - cpu0,
                    reader_catch_up_s,
                });
                let r = rounds.last().unwrap();
                log(format!(
                    "pgbench:   {workload}: {tps:.0} tps, {:.1} µs CPU/tx, {:.1} MB/s WAL",
                    r.cpu_us_per_tx(),
                    r.wal_mb_per_s()
                ));
            }
        }
    }
    c.stop(StopMode::Fast);

    // Summaries.
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Scale {} ({:.0} MB), shared_buffers 128MB, synchronous_commit off, autovacuum off, \
         {} rounds × {} s per configuration and workload (after a {} s warm-up), {} \
         clients, configurations interleaved (off, hooks-64MB, hooks-1GB, wal-64MB, \
         summarize_wal, off, …); before each configuration's block: restart, `{}`, \
         CHECKPOINT. CPU: the server processes' user + system time per transaction. \
         \"vs off\" is the ratio of medians − 1 (negative TPS = slower).\n",
        p.pgbench_scale,
        db_size / MB,
        p.rounds,
        p.round_seconds,
        p.warmup_seconds,
        p.clients,
        PGBENCH_RESET
    );
    let mut per_workload = Vec::new();
    let mut max_wal_rate: f64 = 0.0;
    for (workload, _) in &workloads {
        let _ = writeln!(
            md,
            "**{workload}**\n\n| configuration | TPS median | min–max | TPS vs off | CPU µs/tx \
             median | CPU vs off | WAL MB/s median | WAL bytes/tx |\n|---|---|---|---|---|---|---|---|"
        );
        let of = |cfg: &str| -> Vec<&PgbenchRound> {
            rounds
                .iter()
                .filter(|r| r.workload == *workload && r.config == cfg)
                .collect()
        };
        let off = of(OFF.name);
        let off_tps = median(&series(&off, |r| r.tps));
        let off_cpu = median(&series(&off, PgbenchRound::cpu_us_per_tx));
        let mut cfg_items = Vec::new();
        for cfg in configs {
            let rs = of(cfg.name);
            let tps = series(&rs, |r| r.tps);
            let cpu = series(&rs, PgbenchRound::cpu_us_per_tx);
            let wal = series(&rs, PgbenchRound::wal_mb_per_s);
            let wal_tx = series(&rs, PgbenchRound::wal_bytes_per_tx);
            max_wal_rate = max_wal_rate.max(max(&wal));
            let tps_ratio = median(&tps) / off_tps;
            let cpu_ratio = median(&cpu) / off_cpu;
            let _ = writeln!(
                md,
                "| {} | {:.0} | {:.0}–{:.0} | {} | {:.1} | {} | {:.1} | {:.0} |",
                cfg.name,
                median(&tps),
                min(&tps),
                max(&tps),
                vs_off(cfg.name == OFF.name, tps_ratio),
                median(&cpu),
                vs_off(cfg.name == OFF.name, cpu_ratio),
                median(&wal),
                median(&wal_tx),
            );
            cfg_items.push(obj([
                ("config", cfg.name.into()),
                ("tps", summary(&tps)),
                ("tps_ratio_vs_off", tps_ratio.into()),
                ("tps_overhead_vs_off", (1.0 - tps_ratio).into()),
                ("cpu_us_per_tx", summary(&cpu)),
                ("cpu_ratio_vs_off", cpu_ratio.into()),
                ("wal_mb_per_s", summary(&wal)),
                ("wal_bytes_per_tx", summary(&wal_tx)),
            ]));
        }
        md.push('\n');
        per_workload.push(obj([
            ("workload", (*workload).into()),
            ("configs", Json::Arr(cfg_items)),
        ]));
    }

    // How much faster the WAL decoder reads WAL than pgbench writes it.
    let decode = ctx
        .criterion
        .iter()
        .find(|r| r.group == "wal_decode")
        .and_then(|r| r.per_second().map(|ps| (ps, r.function.clone())));
    let decoder = match decode {
        Some((bytes_per_s, bench)) => {
            let ratio = bytes_per_s / (max_wal_rate * MB);
            let _ = writeln!(
                md,
                "WAL decoder (criterion `wal_decode`{}): {:.0} MB/s; the highest WAL rate \
                 pgbench produced in any round: {:.1} MB/s; the decoder is **{:.0}×** faster \
                 than pgbench writes WAL here.\n",
                if ctx.criterion_fresh {
                    ""
                } else {
                    ", an earlier run's result"
                },
                bytes_per_s / MB,
                max_wal_rate,
                ratio
            );
            obj([
                ("criterion_benchmark", format!("wal_decode/{bench}").into()),
                ("criterion_from_this_run", ctx.criterion_fresh.into()),
                ("decode_mb_per_s", (bytes_per_s / MB).into()),
                ("max_pgbench_wal_mb_per_s", max_wal_rate.into()),
                ("decode_vs_pgbench_wal_rate", ratio.into()),
            ])
        }
        None => {
            let _ = writeln!(
                md,
                "WAL decoder ratio: no criterion `wal_decode` result available.\n"
            );
            obj([("max_pgbench_wal_mb_per_s", max_wal_rate.into())])
        }
    };

    let raw: Vec<Json> = rounds.iter().map(PgbenchRound::to_json).collect();
    let j = obj([
        (
            "setup",
            obj([
                ("scale", p.pgbench_scale.into()),
                ("database_bytes", db_size.into()),
                ("init_seconds", init_s.into()),
                ("shared_buffers", "128MB".into()),
                ("synchronous_commit", "off".into()),
                ("checkpoint_timeout", "5min".into()),
                ("max_wal_size", "4GB".into()),
                ("autovacuum", "off".into()),
                ("clients", p.clients.into()),
                ("round_seconds", p.round_seconds.into()),
                ("warmup_seconds", p.warmup_seconds.into()),
                ("rounds", p.rounds.into()),
                (
                    "reset_before_each_config",
                    format!("{PGBENCH_RESET}; CHECKPOINT").into(),
                ),
                ("write_heavy_script", WRITE_HEAVY.into()),
                (
                    "cpu",
                    "utime+stime of the postmaster and its children plus the postmaster's \
                     cutime+cstime, before and after each run; WAL readers' catch-up included"
                        .into(),
                ),
                ("wal_bytes", "pg_current_wal_insert_lsn() difference".into()),
            ]),
        ),
        ("workloads", Json::Arr(per_workload)),
        ("wal_decoder", decoder),
        ("rounds", Json::Arr(raw)),
    ]);
    (j, md)
}
