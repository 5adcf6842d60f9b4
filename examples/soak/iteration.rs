//! One iteration: a random run of steps, then the cold-copy check against the pagemapset.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::faults::{self, cold_check, Rng, SnapshotA};
use crate::common::{checker, workload, Cluster};
use crate::crash::Crash;
use crate::stats::{IterationStat, Stats};

const PAUSE: &str = "ptrack.debug_flush_pause_ms";

/// The soak's state: its cluster, its random choices, and whether map
/// flushes are slowed down now.
pub struct Soak {
    pub c: Cluster,
    pub rng: Rng,
    pub pause_on: bool,
}

impl Soak {
    fn set_pause(&mut self, on: bool, actions: &mut Vec<String>) {
        if on != self.pause_on {
            if on {
                self.c.set_sighup(PAUSE, "10");
            } else {
                self.c.reset_sighup(PAUSE);
            }
            self.pause_on = on;
            actions.push(format!(
                "flush pause {}",
                if on { "10 ms/chunk" } else { "off" }
            ));
        }
    }

    pub fn iteration(
        &mut self,
        a: &SnapshotA,
        snap_b: &Path,
        n: u64,
        stats: &mut Stats,
    ) -> (IterationStat, faults::ColdCheck) {
        let t0 = Instant::now();
        let mut it = IterationStat::default();
        let mut actions = Vec::new();
        if !self.c.is_running() {
            self.c.start();
        }
        let pause = self.rng.chance(0.35);
        self.set_pause(pause, &mut actions);
        let steps = self.rng.range(4, 8);
        for _ in 0..steps {
            match self.rng.range(0, 99) {
                0..=34 => self.pgbench_fg(&mut actions, stats),
                35..=54 => self.ddl_fg(&mut actions, stats),
                55..=64 => {
                    self.c.psql("CHECKPOINT;");
                    stats.checkpoints += 1;
                    actions.push("checkpoint".into());
                }
                65..=84 => {
                    it.crashes += 1;
                    let (during_flush, kind) = self.crash(&mut actions, stats);
                    it.crashes_during_flush += u64::from(during_flush);
                    it.backend_kills += u64::from(kind == Crash::BackendKill);
                    it.os_crashes += u64::from(kind == Crash::Os);
                }
                85..=89 => {
                    self.c.restart();
                    stats.clean_restarts += 1;
                    actions.push("clean restart".into());
                }
                _ => {
                    // pgbench and DDL at the same time.
                    let (mut args, label) = self.pgbench_args();
                    args.extend(["-T".into(), "3".into()]);
                    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                    let bench = self.c.spawn_pgbench(workload::BENCH_DB, &refs);
                    stats.pgbench_runs += 1;
                    self.ddl_fg(&mut actions, stats);
                    let ok = bench.finish(Duration::from_secs(120));
                    actions.push(format!("{label} -T 3 concurrently (ok: {ok})"));
                }
            }
        }
        // The next iteration starts without a pause unless it picks one.
        self.set_pause(false, &mut actions);
        let label = format!("soak {n}");
        let check = cold_check(&mut self.c, a, snap_b, &label);
        let t = check.report.totals();
        it.seconds = t0.elapsed().as_secs_f64();
        it.blocks = t.blocks;
        it.changed = t.changed;
        it.reported = t.reported;
        it.missed = t.false_negatives;
        if it.os_crashes > 0 {
            it.missed_documented = check
                .report
                .files
                .iter()
                .flat_map(|f| &f.false_negatives)
                .filter(|(_, why)| {
                    *why == checker::NOT_WAL_LOGGED
                        || *why == checker::SPGIST_META_CACHE
                        || *why == checker::ZERO_EXTENSION
                })
                .count() as u64;
        }
        if it.missed > 0 && stats.known_fn_evidence.len() < 60 {
            for line in faults::describe_false_negatives(&self.c, &check.report, 10) {
                stats.known_fn_evidence.push(format!(
                    "iteration {n} ({} crashes, {} simulated OS crashes): {line}",
                    it.crashes, it.os_crashes
                ));
            }
        }
        it.false_positives = t.false_positives;
        it.actions = actions;
        (it, check)
    }
}
