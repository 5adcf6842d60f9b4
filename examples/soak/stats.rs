//! What each iteration and the whole soak counted, and the JSON results file made of it.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use crate::common;

#[derive(Default)]
pub struct IterationStat {
    pub seconds: f64,
    pub blocks: u64,
    pub changed: u64,
    pub reported: u64,
    /// Every changed block missing from the pagemapset.
    pub missed: u64,
    /// Of those, the README's documented exception: changes PostgreSQL does
    /// not WAL-log (checker: "not WAL-logged") in an iteration with an OS crash.
    pub missed_documented: u64,
    pub false_positives: u64,
    pub crashes: u64,
    pub crashes_during_flush: u64,
    pub backend_kills: u64,
    pub os_crashes: u64,
    pub actions: Vec<String>,
}

#[derive(Default)]
pub struct Stats {
    pub seed: u64,
    pub started_unix: u64,
    pub pg_version: String,
    pub iterations_planned: u64,
    pub iterations: Vec<IterationStat>,
    pub clean_restarts: u64,
    pub checkpoints: u64,
    pub pgbench_runs: u64,
    pub ddl_runs: u64,
    pub map_discards: u64,
    /// Files with missed blocks of the two known kinds (the soak goes on past
    /// those).
    pub known_fn_evidence: Vec<String>,
    pub status: String,
    pub failure: Option<String>,
    pub elapsed: f64,
}

fn json_str(s: &str) -> String {
    common::json_string(s)
}

impl Stats {
    fn sum(&self, f: impl Fn(&IterationStat) -> u64) -> u64 {
        self.iterations.iter().map(f).sum()
    }

    fn to_json(&self) -> String {
        let reported = self.sum(|i| i.reported);
        let fp = self.sum(|i| i.false_positives);
        let blocks = self.sum(|i| i.blocks);
        let changed = self.sum(|i| i.changed);
        let unchanged = blocks - changed;
        let rate = |n: u64, d: u64| if d == 0 { 0.0 } else { n as f64 / d as f64 };
        let mut j = String::from("{\n");
        let mut field = |k: &str, v: String| {
            let _ = writeln!(j, "  {}: {v},", json_str(k));
        };
        field(
            "benchmark",
            json_str("ptrack soak: randomized workload, crashes, cold-copy check"),
        );
        field("status", json_str(&self.status));
        field(
            "failure",
            self.failure.as_deref().map_or("null".into(), json_str),
        );
        field("postgresql_version", json_str(&self.pg_version));
        field("seed", self.seed.to_string());
        field("started_unix", self.started_unix.to_string());
        field("duration_seconds", format!("{:.1}", self.elapsed));
        field("iterations_planned", self.iterations_planned.to_string());
        field("iterations", self.iterations.len().to_string());
        field("blocks_checked", blocks.to_string());
        field("changed_blocks", changed.to_string());
        field("reported_blocks", reported.to_string());
        let missed = self.sum(|i| i.missed);
        let documented = self.sum(|i| i.missed_documented);
        field("false_negatives", (missed - documented).to_string());
        field(
            "missed_blocks_documented_os_crash_exception",
            documented.to_string(),
        );
        let evidence: Vec<String> = self.known_fn_evidence.iter().map(|e| json_str(e)).collect();
        field(
            "missed_block_files",
            format!("[{}]", evidence.join(",\n    ")),
        );
        field("false_positives", fp.to_string());
        field(
            "false_positive_rate_of_reported",
            format!("{:.4}", rate(fp, reported)),
        );
        field(
            "false_positive_rate_of_unchanged",
            format!("{:.4}", rate(fp, unchanged)),
        );
        field("crashes", self.sum(|i| i.crashes).to_string());
        field(
            "crashes_immediate_stop",
            (self.sum(|i| i.crashes) - self.sum(|i| i.backend_kills) - self.sum(|i| i.os_crashes))
                .to_string(),
        );
        field(
            "crashes_backend_kill",
            self.sum(|i| i.backend_kills).to_string(),
        );
        field(
            "crashes_simulated_os",
            self.sum(|i| i.os_crashes).to_string(),
        );
        field(
            "crashes_during_map_flush",
            self.sum(|i| i.crashes_during_flush).to_string(),
        );
        field("clean_restarts", self.clean_restarts.to_string());
        field("checkpoints", self.checkpoints.to_string());
        field("pgbench_runs", self.pgbench_runs.to_string());
        field("ddl_runs", self.ddl_runs.to_string());
        field("maps_discarded", self.map_discards.to_string());
        field(
            "mean_iteration_seconds",
            format!(
                "{:.1}",
                self.iterations.iter().map(|i| i.seconds).sum::<f64>()
                    / self.iterations.len().max(1) as f64
            ),
        );
        let _ = writeln!(
            j,
            "  \"per_iteration_fields\": [\"seconds\", \"blocks\", \"changed\", \"reported\", \
             \"missed\", \"false_positives\", \"crashes\", \"crashes_during_map_flush\", \"actions\"],"
        );
        j.push_str("  \"per_iteration\": [\n");
        for (n, i) in self.iterations.iter().enumerate() {
            let actions: Vec<String> = i.actions.iter().map(|a| json_str(a)).collect();
            let _ = write!(
                j,
                "    [{:.1}, {}, {}, {}, {}, {}, {}, {}, [{}]]",
                i.seconds,
                i.blocks,
                i.changed,
                i.reported,
                i.missed,
                i.false_positives,
                i.crashes,
                i.crashes_during_flush,
                actions.join(", ")
            );
            j.push_str(if n + 1 < self.iterations.len() {
                ",\n"
            } else {
                "\n"
            });
        }
        j.push_str("  ]\n}\n");
        j
    }

    pub fn write(&self, path: &Path) {
        if let Some(dir) = path.parent() {
            let _ = fs::create_dir_all(dir);
        }
        let tmp = path.with_extension("json.tmp");
        fs::write(&tmp, self.to_json()).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
        fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
    }
}
