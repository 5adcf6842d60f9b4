//! Section `startup`: what a restart costs with a 1 GB map, after a clean
//! stop (a switchover) and after a reboot (the live map gone), against a
//! server without ptrack.
//!
//! Measured per start: the server's CPU time once `pg_ctl start -w` returns
//! (postmaster and children, user + system: the map's start-up work runs in
//! the postmaster) and the wall time of the start. CPU time, unlike wall time,
//! barely moves with the machine's noise. Which path ptrack took (resumed the
//! live map, or loaded the map file) is read from the server log and reported
//! as it happened, so the section runs unchanged against an older build.

use std::fmt::Write as _;
use std::time::Instant;

use crate::common::{Cluster, StopMode};
use crate::json::{obj, Json};
use crate::machine::load_average;
use crate::options::{Opts, Params};
use crate::report::{max, median, min, series, summary};
use crate::server::{server_cpu_seconds, switch_to, HOOKS_1GB, OFF};
use crate::{log, Context};

/// How the server went down before the measured start.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Restart {
    /// A clean stop with ptrack: the live map may stay in tmpfs.
    Clean,
    /// A clean stop, then the live map removed: what a reboot leaves.
    Reboot,
    /// A clean stop of the server without ptrack.
    Off,
}

impl Restart {
    fn name(self) -> &'static str {
        match self {
            Restart::Clean => "hooks-1GB, clean restart",
            Restart::Reboot => "hooks-1GB, restart after a reboot",
            Restart::Off => "off, clean restart",
        }
    }
}

struct StartRound {
    round: usize,
    restart: Restart,
    cpu_s: f64,
    wall_s: f64,
    /// What ptrack logged it did with the map.
    path: &'static str,
}

/// Stops `c` cleanly, removes its live map for a reboot, starts it and
/// measures the start.
fn measured_start(c: &mut Cluster, restart: Restart, round: usize) -> StartRound {
    c.stop(StopMode::Fast);
    if restart == Restart::Reboot {
        if let Some(live) = c.live_map_file() {
            std::fs::remove_file(&live).expect("remove the live map");
        }
    }
    let mark = c.log_mark();
    let t0 = Instant::now();
    c.start();
    let wall_s = t0.elapsed().as_secs_f64();
    let cpu_s = server_cpu_seconds(c);
    let started = c.log_since(mark);
    let path = if started.contains("ptrack: resumed the live map") {
        "resumed the live map"
    } else if started.contains("ptrack: loaded map") {
        "loaded the map file"
    } else if restart == Restart::Off {
        "no ptrack"
    } else {
        panic!("startup: ptrack neither resumed nor loaded its map:\n{started}")
    };
    log(format!(
        "startup:   {}: {path}, CPU {cpu_s:.3} s, wall {wall_s:.3} s",
        restart.name()
    ));
    StartRound {
        round,
        restart,
        cpu_s,
        wall_s,
        path,
    }
}

pub fn section_startup(_: &Opts, p: &Params, _: &mut Context) -> (Json, String) {
    let mut tracked = Cluster::new("bench-startup");
    let mut untracked = Cluster::new("bench-startup-off");
    for c in [&mut tracked, &mut untracked] {
        c.set_conf("autovacuum", "off");
        c.set_conf("checkpoint_timeout", "'30min'");
    }
    switch_to(&mut tracked, &HOOKS_1GB, "");
    switch_to(&mut untracked, &OFF, "");
    // Marks in the map, so that its file is not all zeros.
    tracked.pgbench("postgres", &["-i", "-s", "10", "-q"]);
    tracked.psql("CHECKPOINT");
    let mut rounds = Vec::new();
    for round in 0..p.checkpoint_rounds {
        log(format!(
            "startup: round {}/{} (load {})",
            round + 1,
            p.checkpoint_rounds,
            load_average()
        ));
        rounds.push(measured_start(&mut tracked, Restart::Clean, round));
        rounds.push(measured_start(&mut tracked, Restart::Reboot, round));
        rounds.push(measured_start(&mut untracked, Restart::Off, round));
    }
    tracked.stop(StopMode::Fast);
    untracked.stop(StopMode::Fast);

    let mut md = String::new();
    let _ = writeln!(
        md,
        "A 1 GB map (`ptrack.map_size = 1024`, hook mode) over pgbench scale 10; per round a \
         clean restart, a clean stop with the live map then removed (a reboot) and a start, \
         and a clean restart of a server without ptrack; {} rounds, interleaved. CPU: the \
         server's user + system time when `pg_ctl start -w` returns.\n",
        p.checkpoint_rounds
    );
    let _ = writeln!(
        md,
        "| start | ptrack's path | CPU median (min–max) | CPU − off | wall median (min–max) |\n\
         |---|---|---|---|---|"
    );
    let of = |restart: Restart| -> Vec<&StartRound> {
        rounds.iter().filter(|r| r.restart == restart).collect()
    };
    let off_cpu = median(&series(&of(Restart::Off), |r| r.cpu_s));
    let mut items = Vec::new();
    for restart in [Restart::Clean, Restart::Reboot, Restart::Off] {
        let rs = of(restart);
        let cpu = series(&rs, |r| r.cpu_s);
        let wall = series(&rs, |r| r.wall_s);
        let mut paths: Vec<&str> = rs.iter().map(|r| r.path).collect();
        paths.dedup();
        let _ = writeln!(
            md,
            "| {} | {} | {:.3} s ({:.3}–{:.3}) | {:+.3} s | {:.3} s ({:.3}–{:.3}) |",
            restart.name(),
            paths.join(", "),
            median(&cpu),
            min(&cpu),
            max(&cpu),
            median(&cpu) - off_cpu,
            median(&wall),
            min(&wall),
            max(&wall)
        );
        items.push(obj([
            ("start", restart.name().into()),
            ("ptrack_path", paths.join(", ").into()),
            ("cpu_s", summary(&cpu)),
            ("cpu_s_over_off", (median(&cpu) - off_cpu).into()),
            ("wall_s", summary(&wall)),
        ]));
    }
    let raw: Vec<Json> = rounds
        .iter()
        .map(|r| {
            obj([
                ("round", r.round.into()),
                ("start", r.restart.name().into()),
                ("ptrack_path", r.path.into()),
                ("cpu_s", r.cpu_s.into()),
                ("wall_s", r.wall_s.into()),
            ])
        })
        .collect();
    let j = obj([
        ("rounds_interleaved", p.checkpoint_rounds.into()),
        ("results", items.into()),
        ("rounds", raw.into()),
    ]);
    (j, md)
}
