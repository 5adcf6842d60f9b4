//! Crashes with clients and DDL in flight, and the recovery after them.

use std::time::Duration;

use crate::common::faults::{wait_for, Background};
use crate::common::{workload, StopMode};
use crate::iteration::Soak;
use crate::mix::TABLE_DDL;
use crate::stats::Stats;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crash {
    Immediate,
    BackendKill,
    Os,
}

impl Crash {
    fn label(self) -> &'static str {
        match self {
            Crash::Immediate => "immediate stop",
            Crash::BackendKill => "backend kill -9",
            Crash::Os => "simulated OS crash",
        }
    }
}

impl Soak {
    /// Clients and DDL in flight, maybe a checkpoint, then an immediate stop
    /// and a restart with crash recovery. Returns whether a map flush was in
    /// progress at the stop.
    pub fn crash(&mut self, actions: &mut Vec<String>, stats: &mut Stats) -> (bool, Crash) {
        let mut bg: Vec<Background> = Vec::new();
        let (mut args, label) = self.pgbench_args();
        args.extend(["-T".into(), "120".into()]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        bg.push(self.c.spawn_pgbench(workload::BENCH_DB, &refs));
        let mut what = vec![label];
        if self.rng.chance(0.5) {
            let sql = *self.rng.pick(TABLE_DDL);
            bg.push(self.c.spawn_psql(sql));
            what.push(format!("ddl {sql:?}"));
        }
        let aim_at_flush = self.pause_on && self.rng.chance(0.5);
        if aim_at_flush || self.rng.chance(0.4) {
            std::thread::sleep(Duration::from_millis(self.rng.range(0, 1000)));
            bg.push(self.c.spawn_psql("CHECKPOINT"));
            stats.checkpoints += 1;
            what.push("checkpoint".into());
        }
        if aim_at_flush {
            let tmp = self.c.temp_map_path();
            wait_for(Duration::from_secs(30), || tmp.exists());
        }
        let ms = if aim_at_flush {
            self.rng.range(0, 500)
        } else {
            self.rng.range(200, 3000)
        };
        std::thread::sleep(Duration::from_millis(ms));
        let during_flush = self.c.temp_map_path().exists();
        // Process crashes (immediate stop, a backend killed) keep the live map;
        // an OS crash (simulated: immediate stop, live map removed) does not.
        let kind = match self.rng.range(0, 99) {
            0..=54 => Crash::Immediate,
            55..=79 => Crash::BackendKill,
            _ => Crash::Os,
        };
        let mark = self.c.log_mark();
        let kind = match kind {
            Crash::BackendKill => match self.c.kill_a_backend("pgbench") {
                Some(_) => {
                    assert!(
                        self.c.wait_ready(Duration::from_secs(180)),
                        "the server did not come back after a backend was killed"
                    );
                    Crash::BackendKill
                }
                None => {
                    self.c.stop(StopMode::Immediate);
                    Crash::Immediate
                }
            },
            Crash::Immediate => {
                self.c.stop(StopMode::Immediate);
                Crash::Immediate
            }
            Crash::Os => {
                self.c.simulate_os_crash();
                Crash::Os
            }
        };
        for p in bg {
            p.finish(Duration::from_secs(30));
        }
        if kind != Crash::BackendKill {
            self.c.start();
        }
        let log = self.c.log_since(mark);
        assert!(
            log.contains("automatic recovery in progress") || log.contains("redo starts at"),
            "no crash recovery after {kind:?}:\n{log}"
        );
        if log.contains("discard") {
            stats.map_discards += 1;
            panic!("a map was discarded after a crash:\n{log}");
        }
        actions.push(format!(
            "{} after {ms} ms{} [{}]",
            kind.label(),
            if during_flush {
                " (during a map flush)"
            } else {
                ""
            },
            what.join(", ")
        ));
        (during_flush, kind)
    }
}
