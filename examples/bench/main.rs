//! Performance benchmarks of ptrack: every figure of issue #5 in one run
//! (`scripts/bench.sh`, which also runs the criterion micro-benchmarks first
//! and makes the plots afterwards; see benches/README.md).
//!
//! Sections (`BENCH_ONLY=a,b` selects some):
//!
//! * `criterion`: collects the results `cargo bench -p ptrack-core --bench
//!   core` just wrote under target/criterion (mean, median, throughput).
//! * `pgbench`: TPS, server CPU per transaction and WAL rate of two pgbench
//!   workloads with ptrack off, in hook mode with a 64 MB and a 1 GB map, in
//!   WAL mode, and with PostgreSQL 17's own WAL summarizer instead; one data
//!   directory, configurations interleaved round by round.
//! * `callgrind`: instructions per transaction with and without ptrack in the
//!   single-user server under valgrind (noise-free), and ptrack's fixed cost
//!   per run (map load and flushes) per byte of map.
//! * `backup`: `ptrack_get_pagemapset` against the page-LSN scan an LSN-based
//!   incremental backup must do, with 1 % and 10 % of the pages changed.
//! * `checkpoint`: the duration of a CHECKPOINT after a fixed write burst,
//!   ptrack off against a 64 MB and a 1 GB map.
//! * `fidelity`: a simulation (no server): the false-positive rate against
//!   the map size for a 64 GB data directory, and the README's sizing claim.
//!
//! Every section records raw per-round numbers and their summaries. Results go
//! to `<out-dir>/<stem>.json` (rewritten after every section) and
//! `<out-dir>/<stem>.md`.
//!
//! One module a section (named as the section); the modules they share:
//! `options` (command line, environment, sizes), `server` (configurations
//! and the server's CPU time), `machine`, `report` (summaries, number
//! formats), `json`. A new benchmark is a module with a `section_*` function
//! and a row in `SECTIONS`.
//!
//! Options: `--out-dir DIR` (default benches/results), `--stem NAME` (default
//! bench-YYYYMMDD, with `-quick` in quick mode), `--criterion-dir DIR`
//! (default target/criterion), `--criterion-since UNIX_SECONDS` (only results
//! written since then count as this run's). Environment: `BENCH_QUICK=1`
//! (tiny sizes, one round: checks the harness), `BENCH_ONLY`, and overrides
//! `BENCH_ROUNDS`, `BENCH_ROUND_SECONDS`, `BENCH_PGBENCH_SCALE`,
//! `BENCH_BACKUP_SCALE`, `BENCH_CALLGRIND_N` (`N1,N2`),
//! `BENCH_CHECKPOINT_BUFFERS` (the burst before a measured checkpoint). Needs
//! `PTRACK_PG_PREFIX` like the tests, and root (drop_caches, runuser).

#[path = "../../tests/common/mod.rs"]
mod common;

mod backup;
mod callgrind;
mod callgrind_profile;
mod checkpoint;
mod criterion;
mod fidelity;
mod json;
mod machine;
mod options;
mod pgbench;
mod report;
mod server;
mod startup;

use std::fmt::Write as _;
use std::fs;
use std::panic::AssertUnwindSafe;
use std::time::Instant;

use common::util::{panic_message, today, unix_now};
use criterion::CriterionResult;
use json::{obj, Json};
use machine::{load_average, machine};
use options::{parse_opts, Opts, Params};

const MB: f64 = 1024.0 * 1024.0;

/// One section of the run: its name (for `BENCH_ONLY` and the JSON), its
/// title in the markdown, and what runs it (its JSON and its markdown).
struct Section {
    name: &'static str,
    title: &'static str,
    run: fn(&Opts, &Params, &mut Context) -> (Json, String),
}

/// Every section, in the order they run.
const SECTIONS: [Section; 7] = [
    Section {
        name: "criterion",
        title: "Core micro-benchmarks (criterion)",
        run: criterion::section_criterion,
    },
    Section {
        name: "pgbench",
        title: "1. pgbench overhead (interleaved rounds)",
        run: pgbench::section_pgbench,
    },
    Section {
        name: "callgrind",
        title: "2. Instruction counts (callgrind)",
        run: callgrind::section_callgrind,
    },
    Section {
        name: "backup",
        title: "3. Backup-side speed: pagemapset against a page-LSN scan",
        run: backup::section_backup,
    },
    Section {
        name: "checkpoint",
        title: "4. Checkpoint cost",
        run: checkpoint::section_checkpoint,
    },
    Section {
        name: "startup",
        title: "4b. Start-up cost with a 1 GB map",
        run: startup::section_startup,
    },
    Section {
        name: "fidelity",
        title: "5. Fidelity: false-positive rate against map size (simulation)",
        run: fidelity::section_fidelity,
    },
];

fn log(msg: impl AsRef<str>) {
    eprintln!("bench: {}", msg.as_ref());
}

/// What a section leaves for the later ones.
#[derive(Default)]
struct Context {
    criterion: Vec<CriterionResult>,
    /// True when `criterion` holds this run's results.
    criterion_fresh: bool,
}

fn main() {
    let opts = parse_opts();
    let params = Params::new(opts.quick);
    assert!(
        common::running_as_root(),
        "run as root (servers run as the postgres user via runuser; the page cache is dropped)"
    );
    let started = unix_now();
    let t_all = Instant::now();
    let (machine_json, machine_md) = machine();
    let doc = obj([
        ("benchmark", "ptrack performance (issue #5)".into()),
        ("quick", opts.quick.into()),
        ("date", today().into()),
        ("started_unix", started.into()),
        ("machine", machine_json),
        ("params", params.to_json()),
    ]);
    let mut sections = Json::Obj(Vec::new());
    let mut md_sections = Vec::new();
    let mut failures = Vec::new();
    let mut ctx = Context::default();
    fs::create_dir_all(&opts.out_dir).expect("create the output directory");
    let json_path = opts.out_dir.join(format!("{}.json", opts.stem));
    let md_path = opts.out_dir.join(format!("{}.md", opts.stem));
    let write_doc = |doc: &Json, sections: &Json, seconds: f64, failures: &[String]| {
        let mut d = doc.clone();
        d.push("sections", sections.clone());
        d.push("failures", failures.to_vec());
        d.push("duration_seconds", seconds);
        d.push("load_average_at_end", load_average());
        let tmp = json_path.with_extension("json.tmp");
        fs::write(&tmp, d.pretty()).expect("write the results");
        fs::rename(&tmp, &json_path).expect("rename the results");
    };
    for section in &SECTIONS {
        let name = section.name;
        if opts.only.as_ref().is_some_and(|o| !o.contains(name)) {
            continue;
        }
        log(format!("=== {name} (load {})", load_average()));
        let t0 = Instant::now();
        let result =
            std::panic::catch_unwind(AssertUnwindSafe(|| (section.run)(&opts, &params, &mut ctx)));
        let seconds = t0.elapsed().as_secs_f64();
        let title = section.title;
        match result {
            Ok((mut j, md)) => {
                j.push("seconds", seconds);
                sections.push(name, j);
                md_sections.push(format!("## {title}\n\n{md}"));
            }
            Err(e) => {
                let msg = panic_message(e.as_ref());
                log(format!("section {name} FAILED: {msg}"));
                sections.push(
                    name,
                    obj([("error", msg.clone().into()), ("seconds", seconds.into())]),
                );
                md_sections.push(format!("## {title}\n\n**Failed**: {msg}\n"));
                failures.push(format!("{name}: {msg}"));
            }
        }
        log(format!("=== {name} done in {seconds:.0} s"));
        write_doc(&doc, &sections, t_all.elapsed().as_secs_f64(), &failures);
    }
    let mut md = format!(
        "# ptrack benchmarks, {}{}\n\n",
        today(),
        if opts.quick {
            " (QUICK run: tiny sizes, one round; checks the harness, the numbers mean nothing)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        md,
        "Produced by `scripts/bench.sh` (raw numbers: `{}`) in {:.1} min.\n",
        json_path.file_name().unwrap().to_string_lossy(),
        t_all.elapsed().as_secs_f64() / 60.0
    );
    let _ = writeln!(md, "## Machine\n\n{machine_md}");
    for s in md_sections {
        md.push_str(&s);
        md.push('\n');
    }
    fs::write(&md_path, md).expect("write the markdown table");
    write_doc(&doc, &sections, t_all.elapsed().as_secs_f64(), &failures);
    log(format!(
        "results: {} and {}",
        json_path.display(),
        md_path.display()
    ));
    if !failures.is_empty() {
        log(format!("{} section(s) failed", failures.len()));
        std::process::exit(1);
    }
}
