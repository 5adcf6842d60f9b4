//! Section `checkpoint`: CHECKPOINT duration after a write burst, ptrack off against two map sizes.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::common::faults::wait_for;
use crate::common::{Cluster, StopMode, BLCKSZ};
use crate::json::{obj, Json};
use crate::machine::load_average;
use crate::options::{Opts, Params};
use crate::report::{max, median, min, series, summary, vs_off, yes_no};
use crate::server::{switch_to, HOOKS_1GB, HOOKS_64MB, OFF};
use crate::{log, Context, MB};

/// (buffers written, write s, sync s, total s) from the last "checkpoint
/// complete" line of a log excerpt.
fn parse_checkpoint_complete(log: &str) -> Option<(u64, f64, f64, f64)> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("checkpoint complete:"))?;
    let after = |key: &str| -> Option<&str> {
        let i = line.find(key)? + key.len();
        line[i..].split([' ', ';', ',']).find(|s| !s.is_empty())
    };
    let seconds = |key: &str| after(key).and_then(|v| v.parse::<f64>().ok());
    Some((
        after("wrote ")?.parse().ok()?,
        seconds("write=")?,
        seconds("sync=")?,
        seconds("total=")?,
    ))
}

struct CheckpointRound {
    round: usize,
    config: &'static str,
    wall_s: f64,
    buffers: u64,
    write_s: f64,
    sync_s: f64,
    total_s: f64,
}

impl CheckpointRound {
    /// The round's raw numbers, as the JSON's `rounds` lists them.
    fn to_json(&self) -> Json {
        obj([
            ("round", self.round.into()),
            ("config", self.config.into()),
            ("wall_s", self.wall_s.into()),
            ("buffers_written", self.buffers.into()),
            ("write_s", self.write_s.into()),
            ("sync_s", self.sync_s.into()),
            ("total_s", self.total_s.into()),
        ])
    }
}

pub fn section_checkpoint(_: &Opts, p: &Params, _: &mut Context) -> (Json, String) {
    let configs = [&OFF, &HOOKS_64MB, &HOOKS_1GB];
    let mut c = Cluster::new("bench-checkpoint");
    let shared_buffers = if p.checkpoint_scale >= 20 {
        "1GB"
    } else {
        "128MB"
    };
    for (k, v) in [
        ("shared_buffers", format!("'{shared_buffers}'")),
        ("max_wal_size", "'4GB'".into()),
        ("checkpoint_timeout", "'30min'".into()),
        ("autovacuum", "off".into()),
        ("log_checkpoints", "on".into()),
        ("synchronous_commit", "off".into()),
    ] {
        c.set_conf(k, &v);
    }
    c.start();
    log(format!(
        "checkpoint: initializing scale {}",
        p.checkpoint_scale
    ));
    c.pgbench(
        "postgres",
        &["-i", "-s", &p.checkpoint_scale.to_string(), "-q"],
    );
    let tx = p.checkpoint_burst_tx.to_string();
    let mut rounds = Vec::new();
    for round in 0..p.checkpoint_rounds {
        for cfg in configs {
            log(format!(
                "checkpoint: round {}/{}, {} (load {})",
                round + 1,
                p.checkpoint_rounds,
                cfg.name,
                load_average()
            ));
            switch_to(&mut c, cfg, "");
            c.pgbench(
                "postgres",
                &["-n", "-c", "2", "-j", "2", "-t", &tx, "-M", "prepared"],
            );
            let mark = c.log_mark();
            let t0 = Instant::now();
            c.psql("CHECKPOINT");
            let wall_s = t0.elapsed().as_secs_f64();
            // The log line may lag the command's return by a moment.
            let mut parsed = None;
            wait_for(Duration::from_secs(10), || {
                parsed = parse_checkpoint_complete(&c.log_since(mark));
                parsed.is_some()
            });
            let (buffers, write_s, sync_s, total_s) = parsed.unwrap_or_else(|| {
                panic!(
                    "no 'checkpoint complete' line in the server log:\n{}",
                    c.log_since(mark)
                )
            });
            log(format!(
                "checkpoint:   {buffers} buffers, wall {wall_s:.3} s, total={total_s:.3} s"
            ));
            rounds.push(CheckpointRound {
                round,
                config: cfg.name,
                wall_s,
                buffers,
                write_s,
                sync_s,
                total_s,
            });
        }
    }
    c.stop(StopMode::Fast);

    let mut md = String::new();
    let _ = writeln!(
        md,
        "pgbench scale {}, shared_buffers {shared_buffers}; per round and configuration: \
         restart, CHECKPOINT, `pgbench -n -t {} -c 2`, then a timed CHECKPOINT (psql wall \
         time, and the server log's write/sync/total); {} rounds, interleaved.\n",
        p.checkpoint_scale, p.checkpoint_burst_tx, p.checkpoint_rounds
    );
    let _ = writeln!(
        md,
        "| configuration | buffers written | wall median (min–max) | total= median | sync= \
         median | total vs off | ≤ 5 % | map flush (total − off) | map MB / data MB |\n\
         |---|---|---|---|---|---|---|---|---|"
    );
    let of = |cfg: &str| -> Vec<&CheckpointRound> {
        rounds.iter().filter(|r| r.config == cfg).collect()
    };
    let off = of(OFF.name);
    let off_total = median(&series(&off, |r| r.total_s));
    let mut items = Vec::new();
    let mut notes = Vec::new();
    for cfg in configs {
        let rs = of(cfg.name);
        let wall = series(&rs, |r| r.wall_s);
        let total = series(&rs, |r| r.total_s);
        let sync = series(&rs, |r| r.sync_s);
        let write = series(&rs, |r| r.write_s);
        let buffers = series(&rs, |r| r.buffers as f64);
        let map_mb = cfg
            .settings
            .iter()
            .find(|(k, _)| *k == "ptrack.map_size")
            .filter(|_| cfg.ptrack_loaded())
            .map_or(0.0, |(_, v)| v.parse::<f64>().unwrap());
        let data_mb = median(&buffers) * BLCKSZ as f64 / MB;
        let ratio = median(&total) / off_total;
        let flush_s = median(&total) - off_total;
        let _ = writeln!(
            md,
            "| {} | {:.0} ({:.0} MB) | {:.3} s ({:.3}–{:.3}) | {:.3} s | {:.3} s | {} | {} | {} | {} |",
            cfg.name,
            median(&buffers),
            data_mb,
            median(&wall),
            min(&wall),
            max(&wall),
            median(&total),
            median(&sync),
            vs_off(cfg.name == OFF.name, ratio),
            if cfg.name == OFF.name {
                ""
            } else {
                yes_no(ratio <= 1.05)
            },
            if cfg.name == OFF.name {
                "–".into()
            } else {
                format!("{flush_s:.3} s ({:.0} MB/s)", map_mb / flush_s)
            },
            if cfg.name == OFF.name {
                "–".into()
            } else {
                format!("{:.1}", map_mb / data_mb)
            },
        );
        items.push(obj([
            ("config", cfg.name.into()),
            ("map_mb", map_mb.into()),
            ("buffers_written", summary(&buffers)),
            ("wall_s", summary(&wall)),
            ("total_s", summary(&total)),
            ("write_s", summary(&write)),
            ("sync_s", summary(&sync)),
            ("total_ratio_vs_off", ratio.into()),
            ("target_ratio", 1.05.into()),
            ("target_met", (ratio <= 1.05).into()),
            ("map_flush_s_estimate", flush_s.into()),
            (
                "map_flush_share_of_total",
                (flush_s / median(&total)).into(),
            ),
            ("map_mb_per_data_mb", (map_mb / data_mb).into()),
            ("checkpoint_total_s_for_5_percent", (flush_s / 0.05).into()),
        ]));
        if cfg.ptrack_loaded() {
            notes.push(format!(
                "{}: the map flush ({flush_s:.3} s) is ≤ 5 % of a checkpoint only when the \
                 checkpoint takes ≥ {:.1} s without ptrack (this burst's: {off_total:.3} s).",
                cfg.name,
                flush_s / 0.05
            ));
        }
    }
    for note in &notes {
        let _ = writeln!(md, "\n{note}");
    }
    let _ = writeln!(
        md,
        "\nA map of S MB is an S MB file written (with its CRC) and fsynced at every \
         checkpoint whatever the checkpoint wrote: its cost is fixed per checkpoint, so its \
         share falls as checkpoints grow. \"map flush\" is the difference of the median \
         server-side totals.\n"
    );
    let raw: Vec<Json> = rounds.iter().map(CheckpointRound::to_json).collect();
    let j = obj([
        (
            "setup",
            obj([
                ("scale", p.checkpoint_scale.into()),
                ("shared_buffers", shared_buffers.into()),
                (
                    "burst",
                    format!("pgbench -n -t {tx} -c 2 -j 2 -M prepared").into(),
                ),
                ("rounds", p.checkpoint_rounds.into()),
            ]),
        ),
        ("configs", Json::Arr(items)),
        ("rounds", Json::Arr(raw)),
    ]);
    (j, md)
}
