//! Section `callgrind`: instructions per transaction and ptrack's fixed cost per run.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::callgrind_profile::{Profile, PROFILE_FUNCTIONS};
use crate::common::{chown_to_server, pg_install, Cluster, StopMode};
use crate::json::{obj, Json};
use crate::machine::{command_line, load_average};
use crate::options::{Opts, Params};
use crate::report::{grouped, pct, yes_no};
use crate::{log, Context, MB};

fn runuser_path() -> &'static str {
    ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("runuser")
}

/// N deterministic pgbench-like transactions, one per line (single-user mode
/// ends a query at a newline), then a CHECKPOINT.
fn callgrind_script(n: u64, scale: u64) -> String {
    let (accounts, tellers, branches) = (100_000 * scale, 10 * scale, scale);
    let mut s = String::new();
    for i in 0..n {
        let k = (i * 7919) % accounts + 1;
        let t = i % tellers + 1;
        let b = i % branches + 1;
        let d = (i % 1001) as i64 - 500;
        let _ = writeln!(
            s,
            "BEGIN; UPDATE pgbench_accounts SET abalance = abalance + {d} WHERE aid = {k}; \
             SELECT abalance FROM pgbench_accounts WHERE aid = {k}; \
             UPDATE pgbench_tellers SET tbalance = tbalance + {d} WHERE tid = {t}; \
             UPDATE pgbench_branches SET bbalance = bbalance + {d} WHERE bid = {b}; \
             INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) \
             VALUES ({t}, {b}, {k}, {d}, '2024-01-01 00:00:00'); COMMIT;"
        );
    }
    s.push_str("CHECKPOINT;\n");
    s
}

/// Total instructions (Ir) from a callgrind output file.
fn callgrind_total(path: &Path) -> u64 {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no summary/totals line in {}", path.display()))
}

struct CallgrindRun {
    config: &'static str,
    out_file: PathBuf,
    transactions: u64,
    instructions: u64,
    seconds: f64,
    map_file_written: bool,
}

impl CallgrindRun {
    /// The run's raw numbers, as the JSON's `runs` lists them.
    fn to_json(&self) -> Json {
        obj([
            ("config", self.config.into()),
            ("transactions", self.transactions.into()),
            ("instructions", self.instructions.into()),
            ("seconds", self.seconds.into()),
            ("map_file_written", self.map_file_written.into()),
        ])
    }
}

pub fn section_callgrind(_: &Opts, p: &Params, _: &mut Context) -> (Json, String) {
    let valgrind = command_line("valgrind", &["--version"])
        .expect("valgrind is not installed (apt-get install -y valgrind)");
    let install = pg_install();
    let mut c = Cluster::new("bench-callgrind");
    c.set_conf("ptrack.map_size", "64");
    c.set_conf("autovacuum", "off");
    c.start();
    c.pgbench(
        "postgres",
        &["-i", "-s", &p.callgrind_scale.to_string(), "-q"],
    );
    c.psql("CHECKPOINT");
    c.stop(StopMode::Fast);
    let (n1, n2) = p.callgrind_n;
    let mut runs: Vec<CallgrindRun> = Vec::new();
    for (config, preload) in [("off", ""), ("hooks-64MB", "ptrack")] {
        for n in [n1, n2] {
            let script = c.base.join(format!("script-{n}.sql"));
            if !script.exists() {
                fs::write(&script, callgrind_script(n, u64::from(p.callgrind_scale)))
                    .expect("write the script");
                chown_to_server(&script);
            }
            // A fresh copy of the same stopped data directory for every run.
            let data = c.base.join("run-data");
            let _ = fs::remove_dir_all(&data);
            let status = Command::new("cp")
                .arg("-a")
                .arg(&c.pgdata)
                .arg(&data)
                .status()
                .expect("cp");
            assert!(status.success(), "cp -a of the data directory failed");
            let out_file = c.base.join(format!("callgrind.{config}.{n}.out"));
            let map_file = data.join("global/ptrack.map");
            let map_mtime_before = fs::metadata(&map_file).and_then(|m| m.modified()).ok();
            log(format!(
                "callgrind: {config}, {n} transactions (load {})",
                load_average()
            ));
            let t0 = Instant::now();
            let out = Command::new(runuser_path())
                .args(["-u", "postgres", "--", "valgrind", "--tool=callgrind"])
                .arg(format!("--callgrind-out-file={}", out_file.display()))
                .arg("--dump-instr=no")
                .arg(install.bindir.join("postgres"))
                .arg("--single")
                .arg("-D")
                .arg(&data)
                .args([
                    "-c",
                    &format!("shared_preload_libraries={preload}"),
                    "-c",
                    "ptrack.map_size=64",
                    "-c",
                    "ptrack.mode=hooks",
                    "-c",
                    "shared_buffers=128kB",
                    "-c",
                    "huge_pages=off",
                    "postgres",
                ])
                .env("LC_ALL", "C")
                .env("LD_LIBRARY_PATH", install.prefix.join("lib"))
                .current_dir(&c.base)
                .stdin(fs::File::open(&script).expect("open the script"))
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()
                .expect("run valgrind");
            let seconds = t0.elapsed().as_secs_f64();
            let stderr = String::from_utf8_lossy(&out.stderr);
            let problems: Vec<&str> = stderr
                .lines()
                .filter(|l| l.contains("ERROR:") || l.contains("FATAL:") || l.contains("PANIC:"))
                .collect();
            assert!(
                out.status.success() && problems.is_empty(),
                "single-user postgres under callgrind failed ({}):\n{}",
                out.status,
                stderr.lines().rev().take(30).collect::<Vec<_>>().join("\n")
            );
            let map_mtime_after = fs::metadata(&map_file).and_then(|m| m.modified()).ok();
            let instructions = callgrind_total(&out_file);
            log(format!(
                "callgrind:   {instructions} instructions in {seconds:.0} s"
            ));
            runs.push(CallgrindRun {
                config,
                out_file: out_file.clone(),
                transactions: n,
                instructions,
                seconds,
                map_file_written: map_mtime_after.is_some() && map_mtime_after != map_mtime_before,
            });
            let _ = fs::remove_dir_all(&data);
        }
    }
    // Where the instructions of ptrack go, in the two runs with it.
    let profile = |n: u64| {
        runs.iter()
            .find(|r| r.config != "off" && r.transactions == n)
            .and_then(|r| Profile::of(&r.out_file))
    };
    let (profile1, profile2) = (profile(n1), profile(n2));
    drop(c);

    let ir = |config: &str, n: u64| -> f64 {
        runs.iter()
            .find(|r| r.config == config && r.transactions == n)
            .map(|r| r.instructions as f64)
            .unwrap()
    };
    let dn = (n2 - n1) as f64;
    let per_tx_off = (ir("off", n2) - ir("off", n1)) / dn;
    let per_tx_on = (ir("hooks-64MB", n2) - ir("hooks-64MB", n1)) / dn;
    let overhead = (per_tx_on - per_tx_off) / per_tx_off;
    let fixed = (ir("hooks-64MB", n1) - ir("off", n1)) - n1 as f64 * (per_tx_on - per_tx_off);
    let map_bytes = 64.0 * MB;
    let per_byte = fixed / map_bytes;
    let total_seconds: f64 = runs.iter().map(|r| r.seconds).sum();
    let on_runs_wrote_map = runs
        .iter()
        .filter(|r| r.config != "off")
        .all(|r| r.map_file_written);

    let mut md = String::new();
    let _ = writeln!(
        md,
        "Single-user server (`postgres --single`) under `valgrind --tool=callgrind`, scale {} \
         (shared_buffers 128kB: most transactions evict and write blocks), each run from a \
         fresh copy of the same stopped data directory; script of N pgbench-like transactions \
         then CHECKPOINT. {} runs took {:.0} s.\n",
        p.callgrind_scale,
        runs.len(),
        total_seconds
    );
    let _ = writeln!(md, "| ptrack | N | instructions |\n|---|---|---|");
    for r in &runs {
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            r.config,
            r.transactions,
            grouped(r.instructions)
        );
    }
    let _ = writeln!(
        md,
        "\n| figure | value | target | met |\n|---|---|---|---|\n\
         | instructions per transaction, off | {per_tx_off:.0} | | |\n\
         | instructions per transaction, hooks 64 MB | {per_tx_on:.0} | | |\n\
         | per-transaction overhead | {} | ≤ 0.10 % | {} |\n\
         | fixed cost per run (map load, flushes) | {} instructions | | |\n\
         | fixed cost per map byte | {per_byte:.3} | ≤ 0.7 | {} |\n",
        pct(overhead),
        yes_no(overhead <= 0.001),
        grouped(fixed.max(0.0) as u64),
        yes_no(per_byte <= 0.7)
    );
    let mut breakdown = Vec::new();
    if let (Some(p1), Some(p2)) = (&profile1, &profile2) {
        let _ = writeln!(
            md,
            "Where ptrack's instructions go (callgrind_annotate, inclusive), run of {n1} \
             transactions:\n\n| part | calls | instructions | per map byte | per transaction \
             (from the {n1} and {n2} runs) |\n|---|---|---|---|---|"
        );
        for (label, function) in PROFILE_FUNCTIONS {
            let (i1, i2) = (p1.inclusive(function), p2.inclusive(function));
            let calls = p1.calls(function);
            let per_tx = (i2 as f64 - i1 as f64) / dn;
            let _ = writeln!(
                md,
                "| {label} | {calls} | {} | {:.3} | {per_tx:.1} |",
                grouped(i1),
                i1 as f64 / map_bytes
            );
            breakdown.push(obj([
                ("part", label.trim().into()),
                ("function", function.into()),
                ("calls", calls.into()),
                ("instructions", i1.into()),
                ("instructions_longer_run", i2.into()),
                ("per_map_byte", (i1 as f64 / map_bytes).into()),
                ("per_transaction", per_tx.into()),
            ]));
        }
        md.push('\n');
    }
    if !on_runs_wrote_map {
        let _ = writeln!(
            md,
            "**Warning**: a run with ptrack did not rewrite global/ptrack.map.\n"
        );
    }
    let raw: Vec<Json> = runs.iter().map(CallgrindRun::to_json).collect();
    let j = obj([
        (
            "setup",
            obj([
                ("valgrind", valgrind.into()),
                ("scale", p.callgrind_scale.into()),
                ("shared_buffers", "128kB".into()),
                ("map_size_mb", 64u64.into()),
                ("transactions", vec![n1, n2].into()),
                (
                    "script_example",
                    callgrind_script(1, u64::from(p.callgrind_scale)).into(),
                ),
            ]),
        ),
        ("runs", Json::Arr(raw)),
        ("instructions_per_tx_off", per_tx_off.into()),
        ("instructions_per_tx_on", per_tx_on.into()),
        ("per_tx_overhead", overhead.into()),
        ("per_tx_overhead_target", 0.001.into()),
        ("per_tx_overhead_met", (overhead <= 0.001).into()),
        ("fixed_cost_instructions", fixed.into()),
        ("fixed_cost_per_map_byte", per_byte.into()),
        ("fixed_cost_per_map_byte_target", 0.7.into()),
        ("fixed_cost_per_map_byte_met", (per_byte <= 0.7).into()),
        ("total_seconds", total_seconds.into()),
        ("on_runs_wrote_map_file", on_runs_wrote_map.into()),
        ("profile_of_ptrack", Json::Arr(breakdown)),
    ]);
    (j, md)
}
