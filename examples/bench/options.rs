//! The command line, the environment overrides and the sizes of every section.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::common::util::{option_value, today};
use crate::json::{obj, Json};
use crate::SECTIONS;

pub struct Opts {
    pub quick: bool,
    pub only: Option<BTreeSet<String>>,
    pub out_dir: PathBuf,
    pub stem: String,
    pub criterion_dir: PathBuf,
    pub criterion_since: Option<u64>,
}

/// Sizes of everything; BENCH_QUICK shrinks them all.
pub struct Params {
    pub pgbench_scale: u32,
    pub rounds: usize,
    pub round_seconds: u32,
    pub warmup_seconds: u32,
    pub clients: u32,
    pub callgrind_scale: u32,
    pub callgrind_n: (u64, u64),
    pub backup_scale: u32,
    pub checkpoint_scale: u32,
    pub checkpoint_rounds: usize,
    pub checkpoint_burst_tx: u32,
    pub fidelity_files: u32,
    pub fidelity_blocks_per_file: u32,
    pub fidelity_sizes_mb: Vec<u64>,
    pub fidelity_trials: usize,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not valid")),
        _ => default,
    }
}

impl Params {
    pub fn new(quick: bool) -> Params {
        let n = std::env::var("BENCH_CALLGRIND_N").ok().map(|v| {
            let (a, b) = v.split_once(',').expect("BENCH_CALLGRIND_N=N1,N2");
            (a.trim().parse().expect("N1"), b.trim().parse().expect("N2"))
        });
        let p = if quick {
            Params {
                pgbench_scale: 2,
                rounds: 1,
                round_seconds: 3,
                warmup_seconds: 2,
                clients: 2,
                callgrind_scale: 1,
                callgrind_n: (40, 120),
                backup_scale: 4,
                checkpoint_scale: 2,
                checkpoint_rounds: 1,
                checkpoint_burst_tx: 200,
                fidelity_files: 2048,
                fidelity_blocks_per_file: 4096,
                fidelity_sizes_mb: vec![1, 8, 64],
                fidelity_trials: 2,
            }
        } else {
            Params {
                pgbench_scale: 50,
                rounds: 5,
                round_seconds: 20,
                warmup_seconds: 60,
                clients: 2,
                callgrind_scale: 1,
                callgrind_n: (2000, 6000),
                backup_scale: 200,
                checkpoint_scale: 50,
                checkpoint_rounds: 5,
                checkpoint_burst_tx: 2000,
                fidelity_files: 2048,
                fidelity_blocks_per_file: 4096,
                fidelity_sizes_mb: vec![1, 2, 4, 8, 16, 32, 64, 128, 256],
                fidelity_trials: 5,
            }
        };
        Params {
            pgbench_scale: env_or("BENCH_PGBENCH_SCALE", p.pgbench_scale),
            rounds: env_or("BENCH_ROUNDS", p.rounds),
            checkpoint_rounds: env_or("BENCH_ROUNDS", p.checkpoint_rounds),
            round_seconds: env_or("BENCH_ROUND_SECONDS", p.round_seconds),
            backup_scale: env_or("BENCH_BACKUP_SCALE", p.backup_scale),
            callgrind_n: n.unwrap_or(p.callgrind_n),
            ..p
        }
    }

    pub fn to_json(&self) -> Json {
        obj([
            ("pgbench_scale", self.pgbench_scale.into()),
            ("rounds", self.rounds.into()),
            ("round_seconds", self.round_seconds.into()),
            ("warmup_seconds", self.warmup_seconds.into()),
            ("clients", self.clients.into()),
            ("callgrind_scale", self.callgrind_scale.into()),
            (
                "callgrind_transactions",
                vec![self.callgrind_n.0, self.callgrind_n.1].into(),
            ),
            ("backup_scale", self.backup_scale.into()),
            ("checkpoint_scale", self.checkpoint_scale.into()),
            ("checkpoint_rounds", self.checkpoint_rounds.into()),
            (
                "checkpoint_burst_transactions",
                self.checkpoint_burst_tx.into(),
            ),
            ("fidelity_files", self.fidelity_files.into()),
            (
                "fidelity_blocks_per_file",
                self.fidelity_blocks_per_file.into(),
            ),
            (
                "fidelity_map_sizes_mb",
                self.fidelity_sizes_mb.clone().into(),
            ),
        ])
    }
}

pub fn parse_opts() -> Opts {
    let quick = matches!(
        std::env::var("BENCH_QUICK").as_deref(),
        Ok(v) if !v.is_empty() && v != "0"
    );
    let only = std::env::var("BENCH_ONLY")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map(|v| {
            let set: BTreeSet<String> = v.split(',').map(|s| s.trim().to_string()).collect();
            let names: Vec<&str> = SECTIONS.iter().map(|s| s.name).collect();
            for s in &set {
                assert!(
                    names.contains(&s.as_str()),
                    "BENCH_ONLY: unknown section {s:?} (sections: {})",
                    names.join(", ")
                );
            }
            set
        });
    let mut opts = Opts {
        quick,
        only,
        out_dir: PathBuf::from("benches/results"),
        stem: format!("bench-{}{}", today(), if quick { "-quick" } else { "" }),
        criterion_dir: PathBuf::from("target/criterion"),
        criterion_since: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| option_value(&mut args, name);
        match a.as_str() {
            "--out-dir" => opts.out_dir = PathBuf::from(value("--out-dir")),
            "--stem" => opts.stem = value("--stem"),
            "--criterion-dir" => opts.criterion_dir = PathBuf::from(value("--criterion-dir")),
            "--criterion-since" => {
                opts.criterion_since = Some(value("--criterion-since").parse().expect("seconds"))
            }
            other => panic!(
                "unknown argument {other:?} (--out-dir DIR, --stem NAME, --criterion-dir DIR, \
                 --criterion-since UNIX_SECONDS)"
            ),
        }
    }
    opts
}
