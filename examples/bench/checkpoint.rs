//! Section `checkpoint`: a CHECKPOINT after a write burst of about 10,000
//! blocks (issue #12's case), ptrack off against a 64 MB and a 1 GB map.
//!
//! The first map flush after a start writes the whole map whatever changed,
//! and so does every flush of builds without delta records: each round
//! restarts into its configuration and takes a warm-up CHECKPOINT first, so
//! that the measured checkpoint is the steady state, not the start's cost.
//!
//! The burst's length is calibrated once, under ptrack off, until the
//! checkpoint after it writes about `BENCH_CHECKPOINT_BUFFERS` buffers
//! (default 10,000; 0 keeps the configured burst): what a checkpoint writes
//! depends on the scale and on pgbench's random rows, not on the transaction
//! count alone.
//!
//! Durations on a shared machine move with its load, so every measured
//! checkpoint also records the checkpointer's own counters across it (the map
//! flush runs in the checkpointer, in its sync phase): CPU time from
//! /proc/<pid>/stat and schedstat, bytes from /proc/<pid>/io. The flush's
//! bytes come from ptrack's debug1 line; a build that logs none there (before
//! delta records) wrote its whole map file, whose size is taken instead.

use std::fmt::Write as _;
use std::fs;
use std::time::{Duration, Instant};

use crate::common::faults::wait_for;
use crate::common::{Cluster, StopMode, BLCKSZ};
use crate::json::{obj, Json};
use crate::machine::load_average;
use crate::options::{Opts, Params};
use crate::report::{max, median, min, pct, series, summary, vs_off, yes_no};
use crate::server::{clock_ticks_per_second, proc_times, switch_to, HOOKS_1GB, HOOKS_64MB, OFF};
use crate::{log, Context, MB};

const DEFAULT_TARGET_BUFFERS: u64 = 10_000;
/// Close enough to the target: the burst's random rows move the count by
/// about 1 % from one burst to the next anyway.
const TARGET_TOLERANCE: f64 = 0.02;
const CALIBRATION_TRIES: usize = 4;
/// pgbench's tables' fillfactor (see the initialization).
const FILLFACTOR: u32 = 90;
/// Issue #12: the map flush at most this share of the checkpoint without ptrack.
const TARGET_SHARE: f64 = 0.05;

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

/// What a checkpoint's map flush wrote, as the server log tells it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum MapFlush {
    /// ptrack is not loaded.
    NoPtrack,
    Full {
        bytes: u64,
    },
    Delta {
        bytes: u64,
        regions: u64,
    },
    /// ptrack is loaded but logged no flush: a build before delta records,
    /// which writes the whole map file at every checkpoint.
    Unlogged {
        file_bytes: u64,
    },
}

impl MapFlush {
    fn kind(self) -> &'static str {
        match self {
            MapFlush::NoPtrack => "none",
            MapFlush::Full { .. } => "full",
            MapFlush::Delta { .. } => "delta",
            MapFlush::Unlogged { .. } => "full (unlogged)",
        }
    }

    fn bytes(self) -> u64 {
        match self {
            MapFlush::NoPtrack => 0,
            MapFlush::Full { bytes } | MapFlush::Delta { bytes, .. } => bytes,
            MapFlush::Unlogged { file_bytes } => file_bytes,
        }
    }

    fn regions(self) -> Option<u64> {
        match self {
            MapFlush::Delta { regions, .. } => Some(regions),
            _ => None,
        }
    }
}

/// The number right after `key` in `line`.
fn number_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let end = rest
        .find(|ch: char| !ch.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The last map flush ptrack's debug1 lines report in a log excerpt.
fn parse_map_flush(log: &str) -> Option<MapFlush> {
    log.lines().rev().find_map(|line| {
        if line.contains("ptrack: wrote the full map (") {
            Some(MapFlush::Full {
                bytes: number_after(line, "ptrack: wrote the full map (")?,
            })
        } else if line.contains("ptrack: appended ") {
            Some(MapFlush::Delta {
                regions: number_after(line, "ptrack: appended ")?,
                bytes: number_after(line, " changed regions (")?,
            })
        } else {
            None
        }
    })
}

/// The checkpointer's counters at one moment.
#[derive(Clone, Copy)]
struct ProcCounters {
    /// utime + stime, in clock ticks.
    cpu_ticks: u64,
    /// schedstat's time on a CPU, in ns: finer than the ticks, which a
    /// checkpoint of 10,000 buffers spends only a few of.
    on_cpu_ns: Option<u64>,
    wchar: u64,
    write_bytes: u64,
}

fn proc_counters(pid: u32) -> ProcCounters {
    let (_, cpu_ticks, _) =
        proc_times(pid).unwrap_or_else(|| panic!("the checkpointer's /proc/{pid}/stat"));
    let on_cpu_ns = fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok());
    let io = fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_else(|e| panic!("the checkpointer's /proc/{pid}/io (needs root): {e}"));
    let field = |name: &str| -> u64 {
        io.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/io"))
    };
    ProcCounters {
        cpu_ticks,
        on_cpu_ns,
        wchar: field("wchar:"),
        write_bytes: field("write_bytes:"),
    }
}

fn checkpointer_pid(c: &Cluster) -> u32 {
    let pid = c.query_one("SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'");
    pid.trim()
        .parse()
        .unwrap_or_else(|_| panic!("checkpointer pid {pid:?}"))
}

fn burst(c: &Cluster, tx: u32) {
    c.pgbench(
        "postgres",
        &[
            "-n",
            "-c",
            "2",
            "-j",
            "2",
            "-t",
            &tx.to_string(),
            "-M",
            "prepared",
        ],
    );
}

/// One CHECKPOINT as measured.
struct Checkpoint {
    wall_s: f64,
    buffers: u64,
    write_s: f64,
    sync_s: f64,
    total_s: f64,
    cpu_s: f64,
    on_cpu_s: Option<f64>,
    wchar: u64,
    write_bytes: u64,
    /// What ptrack logged of its flush; `None` when it logged none.
    flush: Option<MapFlush>,
    timings: FlushTimings,
}

/// Spans of the sync phase's end, from the log's millisecond timestamps.
/// The map flush runs after the last data file's fsync, so these leave out
/// the data writes, whose time moves with the load by more than a delta
/// costs.
#[derive(Clone, Copy, Default)]
struct FlushTimings {
    /// The last "checkpoint sync:" line to ptrack's flush line.
    to_flush_line_s: Option<f64>,
    /// The last "checkpoint sync:" line to "checkpoint complete": the
    /// flush, whichever build, and the checkpoint's end (its WAL record,
    /// pg_control).
    to_complete_s: Option<f64>,
}

/// Seconds since midnight of a line's `%m` prefix (`2026-12-03
/// 13:50:01.123 UTC [pid] ...`, the default log_line_prefix).
fn log_time(line: &str) -> Option<f64> {
    let mut hms = line.split_whitespace().nth(1)?.split(':');
    let mut next = || hms.next()?.parse::<f64>().ok();
    Some(next()? * 3600.0 + next()? * 60.0 + next()?)
}

fn flush_timings(log: &str) -> FlushTimings {
    let mut last_fsync = None;
    let mut timings = FlushTimings::default();
    let since = |t: f64, t0: f64| {
        let dt = t - t0;
        // Past midnight.
        if dt < 0.0 {
            dt + 86_400.0
        } else {
            dt
        }
    };
    for line in log.lines() {
        let Some(t) = log_time(line) else { continue };
        if line.contains("checkpoint sync: number=") {
            last_fsync = Some(t);
        } else if line.contains("ptrack: wrote the full map (")
            || line.contains("ptrack: appended ")
        {
            timings.to_flush_line_s = last_fsync.map(|t0| since(t, t0));
        } else if line.contains("checkpoint complete:") {
            timings.to_complete_s = last_fsync.map(|t0| since(t, t0));
        }
    }
    timings
}

fn timed_checkpoint(c: &Cluster) -> Checkpoint {
    let pid = checkpointer_pid(c);
    let mark = c.log_mark();
    let before = proc_counters(pid);
    let t0 = Instant::now();
    c.psql("CHECKPOINT");
    let wall_s = t0.elapsed().as_secs_f64();
    // CHECKPOINT returns once the checkpointer has finished it, flush and
    // log line included.
    let after = proc_counters(pid);
    // The log line may lag the command's return by a moment.
    let mut parsed = None;
    wait_for(Duration::from_secs(10), || {
        parsed = parse_checkpoint_complete(&c.log_since(mark));
        parsed.is_some()
    });
    let excerpt = c.log_since(mark);
    let (buffers, write_s, sync_s, total_s) = parsed
        .unwrap_or_else(|| panic!("no 'checkpoint complete' line in the server log:\n{excerpt}"));
    Checkpoint {
        wall_s,
        buffers,
        write_s,
        sync_s,
        total_s,
        cpu_s: (after.cpu_ticks - before.cpu_ticks) as f64 / clock_ticks_per_second(),
        on_cpu_s: after
            .on_cpu_ns
            .zip(before.on_cpu_ns)
            .map(|(a, b)| (a - b) as f64 / 1e9),
        wchar: after.wchar - before.wchar,
        write_bytes: after.write_bytes - before.write_bytes,
        flush: parse_map_flush(&excerpt),
        timings: flush_timings(&excerpt),
    }
}

/// Transactions per client whose checkpoint writes about `target` buffers,
/// and every (transactions, buffers) tried.
fn calibrate_burst(c: &mut Cluster, start_tx: u32, target: u64) -> (u32, Vec<(u32, u64)>) {
    let mut tx = start_tx.max(1);
    let mut tries = Vec::new();
    for _ in 0..CALIBRATION_TRIES {
        // As the measured rounds do: a burst into cold shared buffers.
        switch_to(c, &OFF, "");
        burst(c, tx);
        let buffers = timed_checkpoint(c).buffers;
        log(format!(
            "checkpoint: calibration: -t {tx} wrote {buffers} buffers"
        ));
        tries.push((tx, buffers));
        if (buffers as f64 / target as f64 - 1.0).abs() <= TARGET_TOLERANCE {
            break;
        }
        // Buffers grow a little slower than transactions (rows share
        // blocks), so the next try is at least as close.
        let next = f64::from(tx) * target as f64 / buffers.max(1) as f64;
        tx = (next.round() as u32).clamp((tx / 4).max(1), tx.saturating_mul(4));
    }
    (tx, tries)
}

struct CheckpointRound {
    round: usize,
    config: &'static str,
    m: Checkpoint,
    /// The warm-up checkpoint's flush, as logged.
    warmup_flush: Option<MapFlush>,
    /// The measured flush: logged, or inferred for a build that logs none.
    flush: MapFlush,
}

impl CheckpointRound {
    /// The round's raw numbers, as the JSON's `rounds` lists them.
    fn to_json(&self) -> Json {
        let m = &self.m;
        obj([
            ("round", self.round.into()),
            ("config", self.config.into()),
            ("wall_s", m.wall_s.into()),
            ("buffers_written", m.buffers.into()),
            ("write_s", m.write_s.into()),
            ("sync_s", m.sync_s.into()),
            ("total_s", m.total_s.into()),
            ("checkpointer_cpu_s", m.cpu_s.into()),
            ("checkpointer_on_cpu_s", m.on_cpu_s.into()),
            ("checkpointer_wchar_bytes", m.wchar.into()),
            ("checkpointer_write_bytes", m.write_bytes.into()),
            (
                "last_fsync_to_flush_line_s",
                m.timings.to_flush_line_s.into(),
            ),
            ("last_fsync_to_complete_s", m.timings.to_complete_s.into()),
            ("map_flush", self.flush.kind().into()),
            ("map_bytes_written", self.flush.bytes().into()),
            ("map_regions_written", self.flush.regions().into()),
            (
                "warmup_map_flush",
                self.warmup_flush.map(MapFlush::kind).into(),
            ),
        ])
    }
}

/// Bytes the checkpointer wrote besides its data buffers: the map's,
/// the WAL's and pg_control's.
fn beyond_data(r: &CheckpointRound) -> f64 {
    r.m.wchar as f64 - (r.m.buffers * BLCKSZ as u64) as f64
}

fn map_file_bytes(c: &Cluster) -> u64 {
    fs::metadata(c.pgdata.join("global/ptrack.map")).map_or(0, |m| m.len())
}

/// "a (b–c)" of a series, each `f`-formatted.
fn spread(xs: &[f64], f: impl Fn(f64) -> String) -> String {
    format!("{} ({}–{})", f(median(xs)), f(min(xs)), f(max(xs)))
}

fn mb(bytes: f64) -> String {
    if bytes.abs() >= 100.0 * MB {
        format!("{:.0}", bytes / MB)
    } else {
        format!("{:.2}", bytes / MB)
    }
}

/// "kind ×n" for each flush kind in the rounds.
fn flush_counts(
    rs: &[&CheckpointRound],
    of: impl Fn(&CheckpointRound) -> Option<MapFlush>,
) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for r in rs {
        let kind = of(r).map_or("unlogged", MapFlush::kind);
        match counts.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => counts.push((kind, 1)),
        }
    }
    counts
        .iter()
        .map(|(k, n)| format!("{k} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn section_checkpoint(opts: &Opts, p: &Params, _: &mut Context) -> (Json, String) {
    let configs = [&OFF, &HOOKS_64MB, &HOOKS_1GB];
    let target_buffers = match std::env::var("BENCH_CHECKPOINT_BUFFERS") {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse::<u64>()
            .unwrap_or_else(|_| panic!("BENCH_CHECKPOINT_BUFFERS={v:?} is not a number")),
        // Quick mode's tables are too small to hold 10,000 changed blocks.
        _ if opts.quick => 0,
        _ => DEFAULT_TARGET_BUFFERS,
    };
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
        // ptrack's flush line is debug1; every configuration logs alike.
        ("log_min_messages", "debug1".into()),
    ] {
        c.set_conf(k, &v);
    }
    c.start();
    log(format!(
        "checkpoint: initializing scale {}",
        p.checkpoint_scale
    ));
    // With room left in every page the burst's updates stay HOT and the
    // pages' dead versions are pruned, so every burst dirties as many blocks
    // as the one before; at fillfactor 100 each update also dirtied an index
    // leaf at first and ever fewer later (from 9,300 buffers down to 5,600
    // over 45 bursts).
    c.pgbench(
        "postgres",
        &[
            "-i",
            "-s",
            &p.checkpoint_scale.to_string(),
            "-F",
            &FILLFACTOR.to_string(),
            "-q",
        ],
    );
    let (tx, calibration) = if target_buffers == 0 {
        (p.checkpoint_burst_tx, Vec::new())
    } else {
        calibrate_burst(&mut c, p.checkpoint_burst_tx, target_buffers)
    };
    log(format!("checkpoint: burst of -t {tx} per client"));
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
            let mark = c.log_mark();
            // Restarts, then the warm-up CHECKPOINT: the start's full write.
            switch_to(&mut c, cfg, "");
            let restarted = c.log_since(mark);
            // Only what follows the start: the stop flushed the map too.
            let warmup_flush = restarted
                .rfind("database system is ready to accept connections")
                .and_then(|at| parse_map_flush(&restarted[at..]));
            burst(&c, tx);
            let m = timed_checkpoint(&c);
            let flush = match m.flush {
                _ if !cfg.ptrack_loaded() => MapFlush::NoPtrack,
                Some(flush) => flush,
                None => MapFlush::Unlogged {
                    file_bytes: map_file_bytes(&c),
                },
            };
            log(format!(
                "checkpoint:   {} buffers, wall {:.3} s, total={:.3} s, checkpointer CPU {:.3} s, \
                 wchar {} MB, map flush {} {} B (warm-up: {})",
                m.buffers,
                m.wall_s,
                m.total_s,
                m.cpu_s,
                mb(m.wchar as f64),
                flush.kind(),
                flush.bytes(),
                warmup_flush.map_or("unlogged", MapFlush::kind)
            ));
            rounds.push(CheckpointRound {
                round,
                config: cfg.name,
                m,
                warmup_flush,
                flush,
            });
        }
    }
    c.stop(StopMode::Fast);

    let mut md = String::new();
    let calibration_text = if calibration.is_empty() {
        "the configured burst".to_string()
    } else {
        let tries: Vec<String> = calibration
            .iter()
            .map(|(t, b)| format!("-t {t}: {b}"))
            .collect();
        format!(
            "calibrated under ptrack off for about {target_buffers} buffers written ({})",
            tries.join(", ")
        )
    };
    let _ = writeln!(
        md,
        "pgbench scale {} (fillfactor {FILLFACTOR}: the updates stay HOT, so every burst \
         dirties as many blocks), shared_buffers {shared_buffers}, log_min_messages debug1; per round \
         and configuration: restart, a warm-up CHECKPOINT (the first map flush after a start \
         is a full write: not measured), `pgbench -n -t {tx} -c 2 -j 2` ({calibration_text}), \
         then a timed CHECKPOINT: psql wall time, the server log's write/sync/total, the \
         checkpointer's CPU time (utime+stime of /proc/<pid>/stat; on-CPU time of \
         /proc/<pid>/schedstat) and bytes written (wchar and write_bytes of /proc/<pid>/io) \
         across it, and ptrack's debug1 flush line; {} rounds, interleaved.\n",
        p.checkpoint_scale, p.checkpoint_rounds
    );
    let _ = writeln!(
        md,
        "| configuration | buffers written | wall median (min–max) | total= median | sync= \
         median | total vs off | ≤ 5 % | map flush (total − off) | map MB written / data MB |\n\
         |---|---|---|---|---|---|---|---|---|"
    );
    let of = |cfg: &str| -> Vec<&CheckpointRound> {
        rounds.iter().filter(|r| r.config == cfg).collect()
    };
    let off = of(OFF.name);
    let off_total = median(&series(&off, |r| r.m.total_s));
    let off_cpu = median(&series(&off, |r| r.m.cpu_s));
    let off_on_cpu = median(&series(&off, |r| r.m.on_cpu_s.unwrap_or(f64::NAN)));
    let off_wchar = median(&series(&off, |r| r.m.wchar as f64));
    let off_write_bytes = median(&series(&off, |r| r.m.write_bytes as f64));
    let off_beyond = median(&series(&off, beyond_data));
    let to_complete = |r: &CheckpointRound| r.m.timings.to_complete_s.unwrap_or(f64::NAN);
    let to_flush_line = |r: &CheckpointRound| r.m.timings.to_flush_line_s.unwrap_or(f64::NAN);
    let off_to_complete = median(&series(&off, to_complete));
    let mut timings_md = String::new();
    let mut items = Vec::new();
    let mut notes = Vec::new();
    let mut counters_md = String::new();
    let mut shares_md = String::new();
    for cfg in configs {
        let is_off = cfg.name == OFF.name;
        let rs = of(cfg.name);
        let wall = series(&rs, |r| r.m.wall_s);
        let total = series(&rs, |r| r.m.total_s);
        let sync = series(&rs, |r| r.m.sync_s);
        let write = series(&rs, |r| r.m.write_s);
        let buffers = series(&rs, |r| r.m.buffers as f64);
        let cpu = series(&rs, |r| r.m.cpu_s);
        let on_cpu = series(&rs, |r| r.m.on_cpu_s.unwrap_or(f64::NAN));
        let wchar = series(&rs, |r| r.m.wchar as f64);
        let write_bytes = series(&rs, |r| r.m.write_bytes as f64);
        let map_bytes = series(&rs, |r| r.flush.bytes() as f64);
        let map_mb = cfg
            .settings
            .iter()
            .find(|(k, _)| *k == "ptrack.map_size")
            .filter(|_| cfg.ptrack_loaded())
            .map_or(0.0, |(_, v)| v.parse::<f64>().unwrap());
        let data_mb = median(&buffers) * BLCKSZ as f64 / MB;
        let map_mb_written = median(&map_bytes) / MB;
        let ratio = median(&total) / off_total;
        let flush_s = median(&total) - off_total;
        let cpu_part = median(&cpu) - off_cpu;
        let on_cpu_part = median(&on_cpu) - off_on_cpu;
        let wchar_part = median(&wchar) - off_wchar;
        let write_bytes_part = median(&write_bytes) - off_write_bytes;
        let beyond = series(&rs, beyond_data);
        let beyond_part = median(&beyond) - off_beyond;
        let end = series(&rs, to_complete);
        let flush_line = series(&rs, to_flush_line);
        let end_part = median(&end) - off_to_complete;
        let dash = |s: String| if is_off { "–".to_string() } else { s };
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
            vs_off(is_off, ratio),
            if is_off { "" } else { yes_no(ratio <= 1.0 + TARGET_SHARE) },
            dash(if flush_s > 0.0 {
                format!("{flush_s:.3} s ({:.0} MB/s)", map_mb_written / flush_s)
            } else {
                format!("{flush_s:.3} s")
            }),
            dash(format!("{:.3}", map_mb_written / data_mb)),
        );
        let _ = writeln!(
            counters_md,
            "| {} | {} | {} | {} s | {} s | {} | {} | {} | {} |",
            cfg.name,
            if is_off {
                "–".to_string()
            } else {
                flush_counts(&rs, |r| Some(r.flush))
            },
            dash(spread(&map_bytes, mb)),
            spread(&cpu, |x| format!("{x:.3}")),
            spread(&on_cpu, |x| format!("{x:.3}")),
            spread(&wchar, mb),
            spread(&write_bytes, mb),
            vs_off(is_off, median(&cpu) / off_cpu),
            vs_off(is_off, median(&wchar) / off_wchar),
        );
        let _ = writeln!(
            timings_md,
            "| {} | {} s | {} | {} |",
            cfg.name,
            spread(&end, |x| format!("{x:.3}")),
            if flush_line.iter().any(|x| x.is_finite()) {
                spread(&flush_line, |x| format!("{x:.3}")) + " s"
            } else {
                "–".into()
            },
            dash(format!(
                "{end_part:+.3} s: {} of off's total=",
                pct(end_part / off_total)
            )),
        );
        if !is_off {
            let share = |part: f64, of_off: f64| {
                format!(
                    "{} ({})",
                    pct(part / of_off),
                    yes_no(part / of_off <= TARGET_SHARE)
                )
            };
            let _ = writeln!(
                shares_md,
                "| {} | {flush_s:+.3} s: {} | {cpu_part:+.3} s: {} | {on_cpu_part:+.4} s: {} | \
                 {} MB: {} | {} MB: {} | {} MB: {} |",
                cfg.name,
                share(flush_s, off_total),
                share(cpu_part, off_cpu),
                share(on_cpu_part, off_on_cpu),
                mb(wchar_part),
                share(wchar_part, off_wchar),
                mb(beyond_part),
                share(beyond_part, off_wchar),
                mb(median(&map_bytes)),
                share(median(&map_bytes), off_wchar),
            );
        }
        items.push(obj([
            ("config", cfg.name.into()),
            ("map_mb", map_mb.into()),
            ("buffers_written", summary(&buffers)),
            ("wall_s", summary(&wall)),
            ("total_s", summary(&total)),
            ("write_s", summary(&write)),
            ("sync_s", summary(&sync)),
            ("total_ratio_vs_off", ratio.into()),
            ("target_ratio", (1.0 + TARGET_SHARE).into()),
            ("target_met", (ratio <= 1.0 + TARGET_SHARE).into()),
            ("map_flush_s_estimate", flush_s.into()),
            (
                "map_flush_share_of_total",
                (flush_s / median(&total)).into(),
            ),
            ("map_mb_per_data_mb", (map_mb / data_mb).into()),
            (
                "map_mb_written_per_data_mb",
                (map_mb_written / data_mb).into(),
            ),
            (
                "checkpoint_total_s_for_5_percent",
                (flush_s / TARGET_SHARE).into(),
            ),
            ("checkpointer_cpu_s", summary(&cpu)),
            ("checkpointer_on_cpu_s", summary(&on_cpu)),
            ("checkpointer_wchar_bytes", summary(&wchar)),
            ("checkpointer_write_bytes", summary(&write_bytes)),
            ("checkpointer_wchar_beyond_data_bytes", summary(&beyond)),
            ("last_fsync_to_complete_s", summary(&end)),
            ("last_fsync_to_flush_line_s", summary(&flush_line)),
            ("map_bytes_written", summary(&map_bytes)),
            ("map_flushes", flush_counts(&rs, |r| Some(r.flush)).into()),
            (
                "warmup_map_flushes",
                flush_counts(&rs, |r| r.warmup_flush).into(),
            ),
            ("cpu_ratio_vs_off", (median(&cpu) / off_cpu).into()),
            ("on_cpu_ratio_vs_off", (median(&on_cpu) / off_on_cpu).into()),
            ("wchar_ratio_vs_off", (median(&wchar) / off_wchar).into()),
            (
                "write_bytes_ratio_vs_off",
                (median(&write_bytes) / off_write_bytes).into(),
            ),
            (
                "map_part",
                obj([
                    ("total_s", flush_s.into()),
                    ("total_share_of_off", (flush_s / off_total).into()),
                    ("cpu_s", cpu_part.into()),
                    ("cpu_share_of_off", (cpu_part / off_cpu).into()),
                    ("on_cpu_s", on_cpu_part.into()),
                    ("on_cpu_share_of_off", (on_cpu_part / off_on_cpu).into()),
                    ("wchar_bytes", wchar_part.into()),
                    ("wchar_share_of_off", (wchar_part / off_wchar).into()),
                    ("write_bytes", write_bytes_part.into()),
                    ("wchar_beyond_data_bytes", beyond_part.into()),
                    ("last_fsync_to_complete_s", end_part.into()),
                    (
                        "last_fsync_to_complete_share_of_off_total",
                        (end_part / off_total).into(),
                    ),
                    (
                        "wchar_beyond_data_share_of_off_wchar",
                        (beyond_part / off_wchar).into(),
                    ),
                    (
                        "write_bytes_share_of_off",
                        (write_bytes_part / off_write_bytes).into(),
                    ),
                    (
                        "map_bytes_share_of_off_wchar",
                        (median(&map_bytes) / off_wchar).into(),
                    ),
                ]),
            ),
        ]));
        if cfg.ptrack_loaded() {
            let flush = format!(
                "{}: the map flush ({flush_s:+.3} s by the totals; {on_cpu_part:+.4} s of the \
                 checkpointer's time on a CPU, {} MB written by it)",
                cfg.name,
                mb(median(&map_bytes)),
            );
            notes.push(if flush_s > 0.0 {
                format!(
                    "{flush} is ≤ 5 % of a checkpoint only when the checkpoint takes ≥ {:.3} s \
                     without ptrack (this burst's: {off_total:.3} s).",
                    flush_s / TARGET_SHARE
                )
            } else {
                format!("{flush}: the totals do not tell it from the noise.")
            });
        }
    }
    let _ = writeln!(
        md,
        "\nThe checkpointer's own counters across the measured CHECKPOINT (median (min–max)); \
         \"map bytes\" is what ptrack's debug1 line says it wrote, or the map file's size for \
         a build that logs no flush (it writes the whole file every time):\n\n\
         | configuration | measured map flushes | map MB written | checkpointer CPU \
         (utime+stime) | on-CPU (schedstat) | wchar MB | write_bytes MB | CPU vs off | wchar \
         vs off |\n|---|---|---|---|---|---|---|---|---|\n{counters_md}"
    );
    let _ = writeln!(
        md,
        "The map's part (the configuration's median minus off's) as a share of off's \
         checkpoint, against issue #12's 5 %:\n\n\
         | configuration | total= | CPU (utime+stime) | on-CPU (schedstat) | wchar | \
         wchar beyond the data buffers | map bytes (of off's wchar) |\n\
         |---|---|---|---|---|---|---|\n{shares_md}\n\
         \"Beyond the data buffers\" is wchar minus 8 kB per buffer written: the burst's \
         random rows move the buffer count by more than a delta's bytes, and this leaves them \
         out.\n"
    );
    let _ = writeln!(
        md,
        "The map flush runs at the end of the sync phase, after the last data file's fsync; \
         from the log's millisecond timestamps (median (min–max)), the span from that fsync's \
         \"checkpoint sync:\" line (debug1) to ptrack's flush line, and to \"checkpoint \
         complete\" (the flush, whichever build, and the checkpoint's end), whose excess over \
         off leaves out the data writes' noise:\n\n\
         | configuration | last fsync → checkpoint complete | last fsync → ptrack's flush \
         line | excess over off |\n|---|---|---|---|\n{timings_md}"
    );
    for note in &notes {
        let _ = writeln!(md, "{note}\n");
    }
    let _ = writeln!(
        md,
        "Warm-up flushes (not measured): {}.\n",
        configs
            .iter()
            .filter(|cfg| cfg.ptrack_loaded())
            .map(|cfg| format!(
                "{}: {}",
                cfg.name,
                flush_counts(&of(cfg.name), |r| r.warmup_flush)
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let _ = writeln!(
        md,
        "A build with delta records appends only the map's changed 64-byte regions at a \
         checkpoint (a full write only after a start, or when the delta would pass half the \
         map); a build without it writes (with its CRC) and fsyncs the whole S MB map file at \
         every checkpoint whatever the checkpoint wrote. \"map flush\" is the difference of the \
         median server-side totals, which the machine's noise moves by more than a small \
         flush costs; the checkpointer's CPU time and bytes do not move with the load.\n"
    );
    let raw: Vec<Json> = rounds.iter().map(CheckpointRound::to_json).collect();
    let j = obj([
        (
            "setup",
            obj([
                ("scale", p.checkpoint_scale.into()),
                ("fillfactor", FILLFACTOR.into()),
                ("shared_buffers", shared_buffers.into()),
                ("log_min_messages", "debug1".into()),
                (
                    "burst",
                    format!("pgbench -n -t {tx} -c 2 -j 2 -M prepared").into(),
                ),
                ("burst_transactions_per_client", tx.into()),
                ("target_buffers", target_buffers.into()),
                (
                    "calibration",
                    Json::Arr(
                        calibration
                            .iter()
                            .map(|&(t, b)| {
                                obj([("transactions_per_client", t.into()), ("buffers", b.into())])
                            })
                            .collect(),
                    ),
                ),
                ("warmup_checkpoint", true.into()),
                ("rounds", p.checkpoint_rounds.into()),
            ]),
        ),
        ("configs", Json::Arr(items)),
        ("rounds", Json::Arr(raw)),
    ]);
    (j, md)
}
