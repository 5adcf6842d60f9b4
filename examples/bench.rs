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
//! Options: `--out-dir DIR` (default benches/results), `--stem NAME` (default
//! bench-YYYYMMDD, with `-quick` in quick mode), `--criterion-dir DIR`
//! (default target/criterion), `--criterion-since UNIX_SECONDS` (only results
//! written since then count as this run's). Environment: `BENCH_QUICK=1`
//! (tiny sizes, one round: checks the harness), `BENCH_ONLY`, and overrides
//! `BENCH_ROUNDS`, `BENCH_ROUND_SECONDS`, `BENCH_PGBENCH_SCALE`,
//! `BENCH_BACKUP_SCALE`, `BENCH_CALLGRIND_N` (`N1,N2`). Needs
//! `PTRACK_PG_PREFIX` like the tests, and root (drop_caches, runuser).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::checker::{is_temp_relation_file_name, parse_relation_file_name, relation_dirs};
use common::faults::{wait_for, Rng};
use common::{chown_to_server, lsn, pg_install, Cluster, Lsn, PageMapSet, StopMode, BLCKSZ};
use json::Json;
use ptrack_core::{Fork, OwnedLsnMap, RelFileKey};

const MB: f64 = 1024.0 * 1024.0;
const SECTIONS: [&str; 6] = [
    "criterion",
    "pgbench",
    "callgrind",
    "backup",
    "checkpoint",
    "fidelity",
];

// ---------------------------------------------------------------------------
// JSON: a small writer and, for criterion's files, a small parser
// ---------------------------------------------------------------------------

mod json {
    use std::fmt::Write as _;

    #[derive(Clone, Debug, PartialEq)]
    pub enum Json {
        Null,
        Bool(bool),
        Int(i64),
        Num(f64),
        Str(String),
        Arr(Vec<Json>),
        Obj(Vec<(String, Json)>),
    }

    impl From<bool> for Json {
        fn from(v: bool) -> Json {
            Json::Bool(v)
        }
    }
    impl From<f64> for Json {
        fn from(v: f64) -> Json {
            if v.is_finite() {
                Json::Num(v)
            } else {
                Json::Null
            }
        }
    }
    impl From<u64> for Json {
        fn from(v: u64) -> Json {
            i64::try_from(v).map_or(Json::Num(v as f64), Json::Int)
        }
    }
    impl From<u32> for Json {
        fn from(v: u32) -> Json {
            Json::Int(i64::from(v))
        }
    }
    impl From<i64> for Json {
        fn from(v: i64) -> Json {
            Json::Int(v)
        }
    }
    impl From<usize> for Json {
        fn from(v: usize) -> Json {
            Json::from(v as u64)
        }
    }
    impl From<&str> for Json {
        fn from(v: &str) -> Json {
            Json::Str(v.to_string())
        }
    }
    impl From<String> for Json {
        fn from(v: String) -> Json {
            Json::Str(v)
        }
    }
    impl<T: Into<Json>> From<Vec<T>> for Json {
        fn from(v: Vec<T>) -> Json {
            Json::Arr(v.into_iter().map(Into::into).collect())
        }
    }
    impl<T: Into<Json>> From<Option<T>> for Json {
        fn from(v: Option<T>) -> Json {
            v.map_or(Json::Null, Into::into)
        }
    }

    /// An object from `(key, value)` pairs, in order.
    pub fn obj<const N: usize>(pairs: [(&str, Json); N]) -> Json {
        Json::Obj(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }

    impl Json {
        pub fn get(&self, key: &str) -> Option<&Json> {
            match self {
                Json::Obj(pairs) => pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v),
                _ => None,
            }
        }

        pub fn as_f64(&self) -> Option<f64> {
            match self {
                Json::Int(i) => Some(*i as f64),
                Json::Num(n) => Some(*n),
                _ => None,
            }
        }

        pub fn as_str(&self) -> Option<&str> {
            match self {
                Json::Str(s) => Some(s),
                _ => None,
            }
        }

        /// Appends `key: value` to an object.
        pub fn push(&mut self, key: &str, value: impl Into<Json>) {
            if let Json::Obj(pairs) = self {
                pairs.push((key.to_string(), value.into()));
            }
        }

        fn is_scalar(&self) -> bool {
            !matches!(self, Json::Arr(_) | Json::Obj(_))
        }

        /// Pretty-printed; arrays of scalars stay on one line.
        pub fn pretty(&self) -> String {
            let mut out = String::new();
            self.write(&mut out, 0);
            out.push('\n');
            out
        }

        fn write(&self, out: &mut String, indent: usize) {
            let pad = |n: usize| "  ".repeat(n);
            match self {
                Json::Null => out.push_str("null"),
                Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
                Json::Int(i) => {
                    let _ = write!(out, "{i}");
                }
                Json::Num(n) => {
                    if n.fract() == 0.0 && n.abs() < 1e15 {
                        let _ = write!(out, "{n:.1}");
                    } else {
                        let _ = write!(out, "{n}");
                    }
                }
                Json::Str(s) => write_str(out, s),
                Json::Arr(items) if items.iter().all(Json::is_scalar) => {
                    out.push('[');
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            out.push_str(", ");
                        }
                        item.write(out, indent);
                    }
                    out.push(']');
                }
                Json::Arr(items) => {
                    out.push_str("[\n");
                    for (i, item) in items.iter().enumerate() {
                        out.push_str(&pad(indent + 1));
                        item.write(out, indent + 1);
                        out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
                    }
                    out.push_str(&pad(indent));
                    out.push(']');
                }
                Json::Obj(pairs) if pairs.is_empty() => out.push_str("{}"),
                Json::Obj(pairs) => {
                    out.push_str("{\n");
                    for (i, (k, v)) in pairs.iter().enumerate() {
                        out.push_str(&pad(indent + 1));
                        write_str(out, k);
                        out.push_str(": ");
                        v.write(out, indent + 1);
                        out.push_str(if i + 1 < pairs.len() { ",\n" } else { "\n" });
                    }
                    out.push_str(&pad(indent));
                    out.push('}');
                }
            }
        }
    }

    fn write_str(out: &mut String, s: &str) {
        out.push_str(&crate::common::json_string(s));
    }

    /// Parses a JSON document (enough for criterion's output files).
    pub fn parse(text: &str) -> Result<Json, String> {
        let mut p = Parser {
            s: text.as_bytes(),
            i: 0,
        };
        let v = p.value()?;
        p.ws();
        if p.i != p.s.len() {
            return Err(format!("trailing characters at {}", p.i));
        }
        Ok(v)
    }

    struct Parser<'a> {
        s: &'a [u8],
        i: usize,
    }

    impl Parser<'_> {
        fn ws(&mut self) {
            while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
                self.i += 1;
            }
        }

        fn peek(&self) -> Option<u8> {
            self.s.get(self.i).copied()
        }

        fn expect(&mut self, c: u8) -> Result<(), String> {
            self.ws();
            if self.peek() == Some(c) {
                self.i += 1;
                Ok(())
            } else {
                Err(format!("expected {:?} at {}", c as char, self.i))
            }
        }

        fn literal(&mut self, word: &str, v: Json) -> Result<Json, String> {
            if self.s[self.i..].starts_with(word.as_bytes()) {
                self.i += word.len();
                Ok(v)
            } else {
                Err(format!("bad literal at {}", self.i))
            }
        }

        fn value(&mut self) -> Result<Json, String> {
            self.ws();
            match self.peek() {
                Some(b'{') => {
                    self.i += 1;
                    let mut pairs = Vec::new();
                    self.ws();
                    if self.peek() == Some(b'}') {
                        self.i += 1;
                        return Ok(Json::Obj(pairs));
                    }
                    loop {
                        self.ws();
                        let k = self.string()?;
                        self.expect(b':')?;
                        let v = self.value()?;
                        pairs.push((k, v));
                        self.ws();
                        match self.peek() {
                            Some(b',') => self.i += 1,
                            Some(b'}') => {
                                self.i += 1;
                                return Ok(Json::Obj(pairs));
                            }
                            _ => return Err(format!("bad object at {}", self.i)),
                        }
                    }
                }
                Some(b'[') => {
                    self.i += 1;
                    let mut items = Vec::new();
                    self.ws();
                    if self.peek() == Some(b']') {
                        self.i += 1;
                        return Ok(Json::Arr(items));
                    }
                    loop {
                        items.push(self.value()?);
                        self.ws();
                        match self.peek() {
                            Some(b',') => self.i += 1,
                            Some(b']') => {
                                self.i += 1;
                                return Ok(Json::Arr(items));
                            }
                            _ => return Err(format!("bad array at {}", self.i)),
                        }
                    }
                }
                Some(b'"') => self.string().map(Json::Str),
                Some(b't') => self.literal("true", Json::Bool(true)),
                Some(b'f') => self.literal("false", Json::Bool(false)),
                Some(b'n') => self.literal("null", Json::Null),
                Some(_) => {
                    let start = self.i;
                    while self.i < self.s.len()
                        && matches!(
                            self.s[self.i],
                            b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                        )
                    {
                        self.i += 1;
                    }
                    let t =
                        std::str::from_utf8(&self.s[start..self.i]).map_err(|e| e.to_string())?;
                    t.parse::<f64>()
                        .map(Json::Num)
                        .map_err(|e| format!("bad number {t:?}: {e}"))
                }
                None => Err("unexpected end".into()),
            }
        }

        fn string(&mut self) -> Result<String, String> {
            if self.peek() != Some(b'"') {
                return Err(format!("expected a string at {}", self.i));
            }
            self.i += 1;
            let mut out = Vec::new();
            while let Some(c) = self.peek() {
                self.i += 1;
                match c {
                    b'"' => return String::from_utf8(out).map_err(|e| e.to_string()),
                    b'\\' => {
                        let e = self.peek().ok_or("unexpected end")?;
                        self.i += 1;
                        match e {
                            b'n' => out.push(b'\n'),
                            b't' => out.push(b'\t'),
                            b'r' => out.push(b'\r'),
                            b'b' => out.push(8),
                            b'f' => out.push(12),
                            b'u' => {
                                let hex = self.s.get(self.i..self.i + 4).ok_or("bad \\u")?;
                                let code = u32::from_str_radix(
                                    std::str::from_utf8(hex).map_err(|e| e.to_string())?,
                                    16,
                                )
                                .map_err(|e| e.to_string())?;
                                self.i += 4;
                                let ch = char::from_u32(code).unwrap_or('\u{fffd}');
                                let mut buf = [0u8; 4];
                                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                            }
                            other => out.push(other),
                        }
                    }
                    other => out.push(other),
                }
            }
            Err("unterminated string".into())
        }
    }
}

use json::obj;

// ---------------------------------------------------------------------------
// Options, sizes, small helpers
// ---------------------------------------------------------------------------

struct Opts {
    quick: bool,
    only: Option<BTreeSet<String>>,
    out_dir: PathBuf,
    stem: String,
    criterion_dir: PathBuf,
    criterion_since: Option<u64>,
}

/// Sizes of everything; BENCH_QUICK shrinks them all.
struct Params {
    pgbench_scale: u32,
    rounds: usize,
    round_seconds: u32,
    warmup_seconds: u32,
    clients: u32,
    callgrind_scale: u32,
    callgrind_n: (u64, u64),
    backup_scale: u32,
    checkpoint_scale: u32,
    checkpoint_rounds: usize,
    checkpoint_burst_tx: u32,
    fidelity_files: u32,
    fidelity_blocks_per_file: u32,
    fidelity_sizes_mb: Vec<u64>,
    fidelity_trials: usize,
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
    fn new(quick: bool) -> Params {
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
            round_seconds: env_or("BENCH_ROUND_SECONDS", p.round_seconds),
            backup_scale: env_or("BENCH_BACKUP_SCALE", p.backup_scale),
            callgrind_n: n.unwrap_or(p.callgrind_n),
            ..p
        }
    }

    fn to_json(&self) -> Json {
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

fn today() -> String {
    Command::new("date")
        .arg("+%Y%m%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "00000000".into())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn parse_opts() -> Opts {
    let quick = matches!(
        std::env::var("BENCH_QUICK").as_deref(),
        Ok(v) if !v.is_empty() && v != "0"
    );
    let only = std::env::var("BENCH_ONLY")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map(|v| {
            let set: BTreeSet<String> = v.split(',').map(|s| s.trim().to_string()).collect();
            for s in &set {
                assert!(
                    SECTIONS.contains(&s.as_str()),
                    "BENCH_ONLY: unknown section {s:?} (sections: {})",
                    SECTIONS.join(", ")
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
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| panic!("{name} needs a value"))
        };
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

fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn min(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// `{median, min, max, n}` of a series.
fn summary(xs: &[f64]) -> Json {
    obj([
        ("median", median(xs).into()),
        ("min", min(xs).into()),
        ("max", max(xs).into()),
        ("n", xs.len().into()),
    ])
}

fn log(msg: impl AsRef<str>) {
    eprintln!("bench: {}", msg.as_ref());
}

fn pct(x: f64) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    if x.abs() >= 0.1 {
        format!("{:+.1} %", x * 100.0)
    } else {
        format!("{:+.3} %", x * 100.0)
    }
}

/// An integer with thousands separators.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "**no**"
    }
}

fn read_trim(path: &str) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

fn command_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `sync; echo 3 > /proc/sys/vm/drop_caches`. False when not permitted.
fn drop_caches() -> bool {
    // SAFETY: sync(2) has no preconditions and cannot fail.
    unsafe { libc::sync() };
    fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

fn load_average() -> String {
    read_trim("/proc/loadavg").unwrap_or_default()
}

// ---------------------------------------------------------------------------
// The machine
// ---------------------------------------------------------------------------

fn machine() -> (Json, String) {
    let install = pg_install();
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let ram_kb: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = read_trim("/proc/sys/kernel/osrelease").unwrap_or_default();
    let os = fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_default();
    let prefix_name = install
        .prefix
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // pg-<version>-<flavor>-<hash>, as build-postgres.sh names its prefixes.
    let flavor = prefix_name
        .split('-')
        .nth(2)
        .unwrap_or("unknown")
        .to_string();
    let configure = command_line(
        &install.bindir.join("pg_config").display().to_string(),
        &["--configure"],
    )
    .unwrap_or_default();
    let cassert = configure.contains("--enable-cassert");
    let git = command_line("git", &["rev-parse", "--short", "HEAD"]).unwrap_or_default();
    let dirty = command_line("git", &["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|s| !s.is_empty());
    let rustc = command_line("rustc", &["--version"]).unwrap_or_default();
    let ram_gib = ram_kb as f64 / MB;
    let j = obj([
        ("nproc", nproc.into()),
        ("cpu_model", model.clone().into()),
        ("ram_gib", ram_gib.into()),
        ("kernel", kernel.clone().into()),
        ("os", os.clone().into()),
        ("postgresql_version", install.version.clone().into()),
        (
            "postgresql_prefix",
            install.prefix.display().to_string().into(),
        ),
        ("build_flavor", flavor.clone().into()),
        ("cassert", cassert.into()),
        ("pg_configure", configure.into()),
        ("git_commit", git.clone().into()),
        ("git_dirty", dirty.into()),
        ("rustc", rustc.clone().into()),
        ("load_average_at_start", load_average().into()),
    ]);
    let mut md = String::new();
    let _ = writeln!(md, "| | |\n|---|---|");
    let _ = writeln!(md, "| CPU | {model}, {nproc} CPUs (nproc) |");
    let _ = writeln!(md, "| RAM | {ram_gib:.1} GiB |");
    let _ = writeln!(md, "| kernel | {kernel} ({os}) |");
    let _ = writeln!(
        md,
        "| PostgreSQL | {} ({} build{}) |",
        install.version,
        flavor,
        if cassert {
            ", **with cassert**"
        } else {
            ", no cassert"
        }
    );
    let _ = writeln!(
        md,
        "| ptrack | commit {git}{} |",
        if dirty { " (uncommitted changes)" } else { "" }
    );
    let _ = writeln!(md, "| Rust | {rustc} |");
    let _ = writeln!(md, "| load average at start | {} |", load_average());
    (j, md)
}

// ---------------------------------------------------------------------------
// Section: criterion
// ---------------------------------------------------------------------------

/// One criterion benchmark's results.
struct CriterionResult {
    group: String,
    function: String,
    mean_ns: f64,
    median_ns: f64,
    /// ("bytes" | "elements", amount per iteration)
    throughput: Option<(String, f64)>,
}

impl CriterionResult {
    fn per_second(&self) -> Option<f64> {
        self.throughput
            .as_ref()
            .map(|(_, amount)| amount / (self.mean_ns / 1e9))
    }
}

fn read_criterion(dir: &Path, since: Option<u64>) -> Vec<CriterionResult> {
    let mut out = Vec::new();
    let Ok(groups) = fs::read_dir(dir) else {
        return out;
    };
    let mut group_dirs: Vec<PathBuf> = groups
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n != "report"))
        .collect();
    group_dirs.sort();
    for group in group_dirs {
        let Ok(benches) = fs::read_dir(&group) else {
            continue;
        };
        let mut bench_dirs: Vec<PathBuf> = benches
            .filter_map(Result::ok)
            .map(|e| e.path().join("new"))
            .filter(|p| p.join("estimates.json").is_file() && p.join("benchmark.json").is_file())
            .collect();
        bench_dirs.sort();
        for new in bench_dirs {
            let estimates_path = new.join("estimates.json");
            if let Some(since) = since {
                let modified = fs::metadata(&estimates_path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs());
                if modified < since {
                    continue;
                }
            }
            let parse = |p: &Path| {
                fs::read_to_string(p)
                    .map_err(|e| e.to_string())
                    .and_then(|t| json::parse(&t))
                    .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            };
            let estimates = parse(&estimates_path);
            let benchmark = parse(&new.join("benchmark.json"));
            let point = |k: &str| {
                estimates
                    .get(k)
                    .and_then(|e| e.get("point_estimate"))
                    .and_then(Json::as_f64)
                    .unwrap_or(f64::NAN)
            };
            let throughput = benchmark.get("throughput").and_then(|t| match t {
                Json::Obj(pairs) => pairs
                    .first()
                    .and_then(|(k, v)| v.as_f64().map(|a| (k.to_lowercase(), a))),
                _ => None,
            });
            out.push(CriterionResult {
                group: benchmark
                    .get("group_id")
                    .and_then(Json::as_str)
                    .unwrap_or("?")
                    .to_string(),
                function: benchmark
                    .get("function_id")
                    .and_then(Json::as_str)
                    .unwrap_or("?")
                    .to_string(),
                mean_ns: point("mean"),
                median_ns: point("median"),
                throughput,
            });
        }
    }
    out
}

fn fmt_duration_ns(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.3} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.3} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.3} µs", ns / 1e3)
    } else {
        format!("{ns:.2} ns")
    }
}

fn fmt_rate(kind: &str, per_second: f64) -> String {
    if kind == "bytes" {
        if per_second >= 1e9 {
            format!("{:.2} GB/s", per_second / 1e9)
        } else {
            format!("{:.1} MB/s", per_second / 1e6)
        }
    } else if per_second >= 1e6 {
        format!("{:.1} M/s", per_second / 1e6)
    } else {
        format!("{:.0} /s", per_second)
    }
}

fn section_criterion(opts: &Opts, ctx: &mut Context) -> (Json, String) {
    let results = read_criterion(&opts.criterion_dir, opts.criterion_since);
    assert!(
        !results.is_empty(),
        "no criterion results in {} (run `cargo bench -p ptrack-core --bench core` first)",
        opts.criterion_dir.display()
    );
    let mut md = String::from(
        "| group | benchmark | mean | median | throughput (from the mean) |\n|---|---|---|---|---|\n",
    );
    let mut items = Vec::new();
    for r in &results {
        let per_second = r.per_second();
        items.push(obj([
            ("group", r.group.clone().into()),
            ("benchmark", r.function.clone().into()),
            ("mean_ns", r.mean_ns.into()),
            ("median_ns", r.median_ns.into()),
            (
                "throughput_kind",
                r.throughput.as_ref().map(|t| t.0.clone()).into(),
            ),
            (
                "throughput_per_iteration",
                r.throughput.as_ref().map(|t| t.1).into(),
            ),
            ("throughput_per_second", per_second.into()),
        ]));
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            r.group,
            r.function,
            fmt_duration_ns(r.mean_ns),
            fmt_duration_ns(r.median_ns),
            match (&r.throughput, per_second) {
                (Some((kind, _)), Some(ps)) => fmt_rate(kind, ps),
                _ => "–".into(),
            }
        );
    }
    ctx.criterion = results;
    ctx.criterion_fresh = true;
    (
        obj([
            ("source", opts.criterion_dir.display().to_string().into()),
            ("benchmarks", Json::Arr(items)),
        ]),
        md,
    )
}

// ---------------------------------------------------------------------------
// Server configurations, CPU accounting, pgbench output
// ---------------------------------------------------------------------------

struct ServerConfig {
    name: &'static str,
    settings: &'static [(&'static str, &'static str)],
}

impl ServerConfig {
    fn mode(&self) -> Option<&'static str> {
        self.settings
            .iter()
            .find(|(k, _)| *k == "ptrack.mode")
            .map(|(_, v)| *v)
            .filter(|_| self.ptrack_loaded())
    }

    fn ptrack_loaded(&self) -> bool {
        self.settings
            .iter()
            .any(|(k, v)| *k == "shared_preload_libraries" && v.contains("ptrack"))
    }

    fn summarizes(&self) -> bool {
        self.settings
            .iter()
            .any(|(k, v)| *k == "summarize_wal" && *v == "on")
    }
}

const OFF: ServerConfig = ServerConfig {
    name: "off",
    settings: &[("shared_preload_libraries", "''"), ("summarize_wal", "off")],
};
const HOOKS_64MB: ServerConfig = ServerConfig {
    name: "hooks-64MB",
    settings: &[
        ("shared_preload_libraries", "'ptrack'"),
        ("ptrack.map_size", "64"),
        ("ptrack.mode", "hooks"),
        ("summarize_wal", "off"),
    ],
};
const HOOKS_1GB: ServerConfig = ServerConfig {
    name: "hooks-1GB",
    settings: &[
        ("shared_preload_libraries", "'ptrack'"),
        ("ptrack.map_size", "1024"),
        ("ptrack.mode", "hooks"),
        ("summarize_wal", "off"),
    ],
};
const WAL_64MB: ServerConfig = ServerConfig {
    name: "wal-64MB",
    settings: &[
        ("shared_preload_libraries", "'ptrack'"),
        ("ptrack.map_size", "64"),
        ("ptrack.mode", "wal"),
        ("summarize_wal", "off"),
    ],
};
const SUMMARIZE_WAL: ServerConfig = ServerConfig {
    name: "summarize_wal",
    settings: &[("shared_preload_libraries", "''"), ("summarize_wal", "on")],
};

/// Bytes of WAL the configuration's WAL reader (ptrack's follower or
/// PostgreSQL's summarizer) has still to read; None when there is none.
fn reader_lag(c: &Cluster, cfg: &ServerConfig) -> Option<f64> {
    let sql = if cfg.mode() == Some("wal") {
        "SELECT coalesce(wal_lag_bytes, 0) FROM ptrack_status()"
    } else if cfg.summarizes() {
        "SELECT greatest(pg_wal_lsn_diff(pg_current_wal_flush_lsn(), pending_lsn), 0) \
         FROM pg_get_wal_summarizer_state()"
    } else {
        return None;
    };
    c.query_one(sql).parse().ok()
}

/// Waits until the WAL reader has caught up (≤ 1 MB behind, at most 60 s);
/// returns the seconds waited, None when the configuration has no reader.
fn wait_reader(c: &Cluster, cfg: &ServerConfig) -> Option<f64> {
    reader_lag(c, cfg)?;
    let t0 = Instant::now();
    let caught_up = wait_for(Duration::from_secs(60), || {
        reader_lag(c, cfg).is_some_and(|lag| lag <= MB)
    });
    if !caught_up {
        log(format!(
            "{}: the WAL reader is still {:?} bytes behind after 60 s",
            cfg.name,
            reader_lag(c, cfg)
        ));
    }
    Some(t0.elapsed().as_secs_f64())
}

/// Stops the server, applies `cfg`, starts it (pg_ctl -w waits until it
/// accepts connections), runs `reset` and a CHECKPOINT.
fn switch_to(c: &mut Cluster, cfg: &ServerConfig, reset: &str) {
    if c.is_running() {
        c.stop(StopMode::Fast);
    }
    for (k, v) in cfg.settings {
        c.set_conf(k, v);
    }
    c.start();
    if cfg.mode() != Some("wal") {
        // The WAL follower's slot outlives WAL mode: without the follower it
        // would keep every WAL segment from now on.
        c.psql(
            "SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots \
             WHERE slot_name = 'ptrack' AND NOT active",
        );
    }
    if !reset.is_empty() {
        c.psql(reset);
    }
    c.psql("CHECKPOINT");
    wait_reader(c, cfg);
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions; it returns -1 only for an unknown
    // name, which _SC_CLK_TCK is not.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// (ppid, utime + stime, cutime + cstime) of a process, in clock ticks.
fn proc_times(pid: u32) -> Option<(u32, u64, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state): ppid is field 4, utime..cstime are 14..17.
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    Some((num(1)? as u32, num(11)? + num(12)?, num(13)? + num(14)?))
}

/// CPU seconds used by the server so far: user + system time of the
/// postmaster and of all its live children, plus the postmaster's children
/// already reaped (cutime + cstime).
fn server_cpu_seconds(c: &Cluster) -> f64 {
    let postmaster = c.postmaster_pid().expect("postmaster.pid");
    let (_, own, reaped) = proc_times(postmaster).expect("postmaster's /proc/<pid>/stat");
    let mut ticks = own + reaped;
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.filter_map(Result::ok) {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some((ppid, time, children)) = proc_times(pid) {
                if ppid == postmaster {
                    ticks += time + children;
                }
            }
        }
    }
    ticks as f64 / clock_ticks_per_second()
}

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

// ---------------------------------------------------------------------------
// Section: pgbench overhead
// ---------------------------------------------------------------------------

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
}

fn section_pgbench(p: &Params, ctx: &mut Context) -> (Json, String) {
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
        let series = |rs: &[&PgbenchRound], f: fn(&PgbenchRound) -> f64| -> Vec<f64> {
            rs.iter().map(|r| f(r)).collect()
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
                if cfg.name == OFF.name {
                    "baseline".into()
                } else {
                    pct(tps_ratio - 1.0)
                },
                median(&cpu),
                if cfg.name == OFF.name {
                    "baseline".into()
                } else {
                    pct(cpu_ratio - 1.0)
                },
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

    let raw: Vec<Json> = rounds
        .iter()
        .map(|r| {
            obj([
                ("round", r.round.into()),
                ("config", r.config.into()),
                ("workload", r.workload.into()),
                ("tps", r.tps.into()),
                ("transactions", r.transactions.into()),
                ("elapsed_s", r.elapsed_s.into()),
                ("wal_bytes", r.wal_bytes.into()),
                ("cpu_s", r.cpu_s.into()),
                ("cpu_us_per_tx", r.cpu_us_per_tx().into()),
                ("wal_mb_per_s", r.wal_mb_per_s().into()),
                ("reader_catch_up_s", r.reader_catch_up_s.into()),
            ])
        })
        .collect();
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

// ---------------------------------------------------------------------------
// Section: instruction counts under callgrind
// ---------------------------------------------------------------------------

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

/// Where ptrack's instructions go in a run, from `callgrind_annotate`:
/// (label, function) pairs whose inclusive cost is reported.
const PROFILE_FUNCTIONS: [(&str, &str); 7] = [
    (
        "start: map allocation, file verification and load",
        "ptrack::map_store::on_shmem_startup",
    ),
    (
        "  of which verifying global/ptrack.map (CRC)",
        "ptrack_core::mapfile::open_verified",
    ),
    (
        "map flushes (every checkpoint, and once more at exit)",
        "ptrack::map_store::persist_map",
    ),
    (
        "  of which the final flush at exit",
        "ptrack::map_store::final_flush",
    ),
    (
        "CRC-32 (crc32fast), all calls",
        "crc32fast::specialized::pclmulqdq::calculate",
    ),
    ("marking: md write hook", "ptrack::hooks::on_mdwrite"),
    ("marking: md extend hook", "ptrack::hooks::on_mdextend"),
];

/// Inclusive instructions and call count of `function` in a callgrind
/// output file, through `callgrind_annotate`.
struct Profile {
    inclusive: String,
    callers: String,
}

impl Profile {
    fn of(out_file: &Path) -> Option<Profile> {
        let run = |extra: &[&str]| {
            // It shortens file names under its working directory, which
            // splits a function's lines between two names: run it elsewhere.
            let out = Command::new("callgrind_annotate")
                .args(["--inclusive=yes", "--threshold=100"])
                .args(extra)
                .arg(out_file)
                .current_dir(out_file.parent().unwrap_or(Path::new("/")))
                .stderr(Stdio::null())
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        };
        Some(Profile {
            inclusive: run(&[])?,
            callers: run(&["--tree=caller"])?,
        })
    }

    fn leading_count(line: &str) -> Option<u64> {
        line.split_whitespace()
            .next()
            .and_then(|n| n.replace(',', "").parse().ok())
    }

    /// The line names `function` itself (not a function inlined into it).
    fn names(line: &str, function: &str) -> bool {
        let needle = format!(":{function}");
        line.find(&needle).is_some_and(|i| {
            let rest = &line[i + needle.len()..];
            rest.is_empty() || rest.starts_with(" [") || rest.starts_with(" (")
        })
    }

    fn inclusive(&self, function: &str) -> u64 {
        self.inclusive
            .lines()
            .filter(|l| Self::names(l, function))
            .filter_map(Self::leading_count)
            .max()
            .unwrap_or(0)
    }

    /// Calls of `function`: the `(Nx)` of its callers' lines above its own.
    fn calls(&self, function: &str) -> u64 {
        let mut callers: Vec<u64> = Vec::new();
        for line in self.callers.lines() {
            let t = line.trim_start();
            if line.contains(" < ") || t.split_whitespace().nth(2) == Some("<") {
                let count = line
                    .rfind("x)")
                    .and_then(|end| {
                        let start = line[..end].rfind('(')? + 1;
                        line[start..end].parse::<u64>().ok()
                    })
                    .unwrap_or(0);
                callers.push(count);
            } else if line.contains(" *  ") && Self::names(line, function) {
                return callers.iter().sum();
            } else if t.is_empty() {
                callers.clear();
            }
        }
        0
    }
}

struct CallgrindRun {
    config: &'static str,
    out_file: PathBuf,
    transactions: u64,
    instructions: u64,
    seconds: f64,
    map_file_written: bool,
}

fn section_callgrind(p: &Params) -> (Json, String) {
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
    let raw: Vec<Json> = runs
        .iter()
        .map(|r| {
            obj([
                ("config", r.config.into()),
                ("transactions", r.transactions.into()),
                ("instructions", r.instructions.into()),
                ("seconds", r.seconds.into()),
                ("map_file_written", r.map_file_written.into()),
            ])
        })
        .collect();
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

// ---------------------------------------------------------------------------
// Section: backup-side speed
// ---------------------------------------------------------------------------

/// Every relation segment file (all forks) under base/, global/ and
/// pg_tblspc/, with its path relative to PGDATA.
fn relation_segment_files(pgdata: &Path) -> Vec<(String, PathBuf)> {
    let mut files = Vec::new();
    for dir in relation_dirs(pgdata) {
        let Ok(entries) = fs::read_dir(pgdata.join(&dir)) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if parse_relation_file_name(&name).is_none() || is_temp_relation_file_name(&name) {
                continue;
            }
            let path = entry.path();
            if path.is_file() {
                files.push((format!("{dir}/{name}"), path));
            }
        }
    }
    files.sort();
    files
}

struct LsnScan {
    seconds: f64,
    files: usize,
    bytes: u64,
    pages: u64,
    changed_pages: u64,
    /// Changed blocks per file, for the comparison with the pagemapset.
    changed: BTreeMap<String, Vec<u64>>,
}

/// Reads every relation segment file sequentially in 1 MB reads and counts
/// the pages whose pd_lsn is at least `since`.
fn lsn_scan(pgdata: &Path, since: Lsn) -> LsnScan {
    let t0 = Instant::now();
    let files = relation_segment_files(pgdata);
    let mut buf = vec![0u8; 1 << 20];
    let mut scan = LsnScan {
        seconds: 0.0,
        files: files.len(),
        bytes: 0,
        pages: 0,
        changed_pages: 0,
        changed: BTreeMap::new(),
    };
    for (rel, path) in &files {
        // Files may vanish while the server runs (it is idle here).
        let Ok(mut f) = fs::File::open(path) else {
            continue;
        };
        let mut block = 0u64;
        let mut changed = Vec::new();
        loop {
            // Fill the buffer (short reads happen) up to EOF.
            let mut filled = 0;
            while filled < buf.len() {
                match f.read(&mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => panic!("read {}: {e}", path.display()),
                }
            }
            if filled == 0 {
                break;
            }
            scan.bytes += filled as u64;
            for page in buf[..filled].chunks_exact(BLCKSZ) {
                let hi = u32::from_le_bytes(page[0..4].try_into().unwrap());
                let lo = u32::from_le_bytes(page[4..8].try_into().unwrap());
                let page_lsn = (u64::from(hi) << 32) | u64::from(lo);
                if page_lsn >= since.0 {
                    changed.push(block);
                }
                block += 1;
            }
            if filled < buf.len() {
                break;
            }
        }
        scan.pages += block;
        scan.changed_pages += changed.len() as u64;
        if !changed.is_empty() {
            scan.changed.insert(rel.clone(), changed);
        }
    }
    scan.seconds = t0.elapsed().as_secs_f64();
    scan
}

/// Runs `prelude` (untimed), then `sql` under psql's `\timing`, in one
/// session; returns the reported milliseconds and `sql`'s output.
fn timed_sql(c: &Cluster, prelude: &str, sql: &str) -> (f64, String) {
    let out = c.psql(&format!("{prelude}\n\\timing on\n{sql}"));
    let out = out
        .lines()
        .skip(prelude.lines().filter(|l| !l.is_empty()).count());
    let out: String = out.map(|l| format!("{l}\n")).collect();
    let ms = out
        .lines()
        .find_map(|l| l.strip_prefix("Time: "))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Time: line in psql's output:\n{out}"));
    let rows = out
        .lines()
        .filter(|l| !l.starts_with("Time: ") && !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    (ms, rows)
}

/// One row of output, untimed, before the timed pagemapset query.
const PAGEMAPSET_PRELUDE: &str = "SELECT ptrack_version(), ptrack_init_lsn();";

fn section_backup(p: &Params) -> (Json, String) {
    let mut c = Cluster::new("bench-backup");
    for (k, v) in [
        ("ptrack.map_size", "64"),
        ("shared_buffers", "'256MB'"),
        ("max_wal_size", "'4GB'"),
        ("checkpoint_timeout", "'30min'"),
        ("autovacuum", "off"),
    ] {
        c.set_conf(k, v);
    }
    c.start();
    c.psql("CREATE EXTENSION ptrack");
    log(format!("backup: initializing scale {}", p.backup_scale));
    let t0 = Instant::now();
    c.pgbench("postgres", &["-i", "-s", &p.backup_scale.to_string(), "-q"]);
    let init_s = t0.elapsed().as_secs_f64();
    let cluster_pages_before = lsn_scan(&c.pgdata, Lsn(u64::MAX)).pages;
    let db_size: f64 = c
        .query_one("SELECT pg_database_size('postgres')")
        .parse()
        .unwrap();
    let mut phases = Vec::new();
    let mut notes = Vec::new();
    let mut md = String::new();
    let _ = writeln!(
        md,
        "pgbench scale {} ({:.2} GB database, {} relation pages in the cluster), map 64 MB, \
         hook mode. Per phase: CHECKPOINT, L = pg_current_wal_lsn(), an UPDATE of every \
         M-th account, CHECKPOINT; then `SELECT count(*), sum(pagecount) FROM \
         ptrack_get_pagemapset(L)` (psql \\timing, three runs, each in a session that first \
         runs `{PAGEMAPSET_PRELUDE}` untimed as pg_probackup does; the first right after \
         dropping the page cache) against reading every relation page and comparing its pd_lsn with L (1 MB \
         reads, page cache dropped first).\n",
        p.backup_scale,
        db_size / 1e9,
        cluster_pages_before
    );
    let _ = writeln!(
        md,
        "| changed | pages changed (LSN scan) | pages reported | pagemapset cold | warm | LSN \
         scan cold | warm | cold/cold | cold scan / warm pagemapset | ≥ 100× |\n\
         |---|---|---|---|---|---|---|---|---|---|"
    );
    for (label, modulus) in [("1%", 6100u64), ("10%", 610u64)] {
        log(format!(
            "backup: {label} (every {modulus}th account; load {})",
            load_average()
        ));
        c.psql("CHECKPOINT");
        let since = lsn(&c.query_one("SELECT pg_current_wal_lsn()"));
        let t0 = Instant::now();
        let updated: u64 = c
            .query_one(&format!(
                "WITH u AS (UPDATE pgbench_accounts SET abalance = abalance + 1 \
                 WHERE aid % {modulus} = 0 RETURNING 1) SELECT count(*) FROM u"
            ))
            .parse()
            .unwrap();
        let update_s = t0.elapsed().as_secs_f64();
        c.psql("CHECKPOINT");
        let query =
            format!("SELECT count(*), sum(pagecount) FROM ptrack_get_pagemapset('{since}')");
        let mut pagemapset_ms = Vec::new();
        let mut caches_dropped = true;
        let mut rows = String::new();
        for i in 0..3 {
            if i == 0 {
                caches_dropped &= drop_caches();
            }
            // As a backup tool does: its first queries (pg_probackup asks for
            // the version and the init LSN) bring the backend's catalog caches
            // in, then the timed pagemapset.
            let (ms, out) = timed_sql(&c, PAGEMAPSET_PRELUDE, &query);
            pagemapset_ms.push(ms);
            rows = out;
        }
        let (files_reported, pages_reported) = rows
            .split_once('|')
            .map(|(a, b)| {
                (
                    a.trim().parse::<u64>().unwrap_or(0),
                    b.trim().parse::<u64>().unwrap_or(0),
                )
            })
            .unwrap_or((0, 0));
        caches_dropped &= drop_caches();
        let cold = lsn_scan(&c.pgdata, since);
        let warm = lsn_scan(&c.pgdata, since);
        // Compare what the scan found with what ptrack reported.
        let pms: PageMapSet = c.pagemapset(since);
        let mut changed_not_reported = 0u64;
        let mut changed_not_reported_files = Vec::new();
        for (path, blocks) in &cold.changed {
            let missing = blocks.iter().filter(|&&b| !pms.is_set(path, b)).count() as u64;
            if missing > 0 {
                changed_not_reported += missing;
                changed_not_reported_files.push(format!("{path}: {missing}"));
            }
        }
        let in_full_forks: u64 = pms
            .maps
            .iter()
            .filter(|(path, _)| {
                let name = path.rsplit('/').next().unwrap_or("");
                name.contains("_fsm") || name.contains("_vm")
            })
            .map(|(_, m)| m.pagecount)
            .sum();
        let reported = pms.total_pages();
        let reported_not_changed = reported - (cold.changed_pages - changed_not_reported);
        let pm_cold_s = pagemapset_ms[0] / 1e3;
        let pm_warm_s = median(&pagemapset_ms[1..]) / 1e3;
        let ratio_cold = cold.seconds / pm_cold_s;
        let ratio_cold_scan_warm_pm = cold.seconds / pm_warm_s;
        let ratio_warm = warm.seconds / pm_warm_s;
        let _ = writeln!(
            md,
            "| {label} | {} ({:.2} %) | {} | {:.1} ms | {:.1} ms | {:.2} s | {:.2} s | {:.0}× | \
             {:.0}× | {} |",
            cold.changed_pages,
            cold.changed_pages as f64 * 100.0 / cold.pages as f64,
            reported,
            pagemapset_ms[0],
            pagemapset_ms[1..].iter().copied().fold(f64::NAN, f64::min),
            cold.seconds,
            warm.seconds,
            ratio_cold,
            ratio_cold_scan_warm_pm,
            yes_no(ratio_cold >= 100.0)
        );
        phases.push(obj([
            ("label", label.into()),
            ("modulus", modulus.into()),
            ("since_lsn", since.to_string().into()),
            ("rows_updated", updated.into()),
            ("update_seconds", update_s.into()),
            ("page_cache_dropped", caches_dropped.into()),
            ("pagemapset_ms", pagemapset_ms.clone().into()),
            ("pagemapset_cold_ms", pagemapset_ms[0].into()),
            ("pagemapset_warm_ms", summary(&pagemapset_ms[1..])),
            ("pagemapset_files", files_reported.into()),
            ("pagemapset_pages", pages_reported.into()),
            ("scan_cold_seconds", cold.seconds.into()),
            ("scan_warm_seconds", warm.seconds.into()),
            ("scan_files", cold.files.into()),
            ("scan_bytes", cold.bytes.into()),
            ("scan_pages", cold.pages.into()),
            ("scan_changed_pages", cold.changed_pages.into()),
            (
                "scan_changed_fraction",
                (cold.changed_pages as f64 / cold.pages as f64).into(),
            ),
            ("reported_pages", reported.into()),
            ("reported_pages_fsm_vm_in_full", in_full_forks.into()),
            ("reported_not_lsn_changed", reported_not_changed.into()),
            ("lsn_changed_not_reported", changed_not_reported.into()),
            (
                "lsn_changed_not_reported_files",
                changed_not_reported_files.clone().into(),
            ),
            ("ratio_scan_cold_vs_pagemapset_cold", ratio_cold.into()),
            (
                "ratio_scan_cold_vs_pagemapset_warm",
                ratio_cold_scan_warm_pm.into(),
            ),
            ("ratio_scan_warm_vs_pagemapset_warm", ratio_warm.into()),
            ("target_ratio", 100.0.into()),
            ("target_met", (ratio_cold >= 100.0).into()),
        ]));
        if changed_not_reported > 0 {
            notes.push(format!(
                "**{label}: {changed_not_reported} pages with a page LSN at or after L were not \
                 reported** ({}).",
                changed_not_reported_files.join(", ")
            ));
        }
    }
    for note in &notes {
        let _ = writeln!(md, "\n{note}");
    }
    let _ = writeln!(
        md,
        "\nPages reported but not LSN-changed include the free space and visibility map \
         forks, which are always reported in full, and map false positives; a page with \
         a newer LSN that is not reported would be a false negative (see the JSON: \
         `lsn_changed_not_reported`).\n"
    );
    c.stop(StopMode::Fast);
    let j = obj([
        (
            "setup",
            obj([
                ("scale", p.backup_scale.into()),
                ("database_bytes", db_size.into()),
                ("cluster_relation_pages", cluster_pages_before.into()),
                ("init_seconds", init_s.into()),
                ("map_size_mb", 64u64.into()),
                ("shared_buffers", "256MB".into()),
            ]),
        ),
        ("phases", Json::Arr(phases)),
    ]);
    (j, md)
}

// ---------------------------------------------------------------------------
// Section: checkpoint cost
// ---------------------------------------------------------------------------

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

fn section_checkpoint(p: &Params) -> (Json, String) {
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
    let series = |rs: &[&CheckpointRound], f: fn(&CheckpointRound) -> f64| -> Vec<f64> {
        rs.iter().map(|r| f(r)).collect()
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
            if cfg.name == OFF.name {
                "baseline".into()
            } else {
                pct(ratio - 1.0)
            },
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
    let raw: Vec<Json> = rounds
        .iter()
        .map(|r| {
            obj([
                ("round", r.round.into()),
                ("config", r.config.into()),
                ("wall_s", r.wall_s.into()),
                ("buffers_written", r.buffers.into()),
                ("write_s", r.write_s.into()),
                ("sync_s", r.sync_s.into()),
                ("total_s", r.total_s.into()),
            ])
        })
        .collect();
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

// ---------------------------------------------------------------------------
// Section: fidelity (simulation)
// ---------------------------------------------------------------------------

/// Relation file keys of a simulated data directory: the default tablespace
/// and one other, a few databases, relfilenodes from 16384 up with gaps,
/// main forks.
fn simulated_keys(files: u32, seed: u64) -> Vec<RelFileKey> {
    let mut rng = Rng::new(seed);
    let mut next_node = 16384u32;
    (0..files)
        .map(|i| {
            next_node += 1 + (rng.next_u64() % 7) as u32;
            RelFileKey {
                tablespace: if i % 8 == 7 { 16390 } else { 1663 },
                database: [5, 16384, 16385, 16388][(i % 4) as usize],
                relfilenode: next_node,
                fork: Fork::Main,
            }
        })
        .collect()
}

/// One simulated map: (false positives, files whose every block is reported).
fn simulate_map(keys: &[RelFileKey], per_file: u32, changed: &[bool], slots: usize) -> (u64, u64) {
    let owned = OwnedLsnMap::new(slots);
    let map = owned.view();
    map.start_tracking_at(ptrack_core::Lsn(1));
    for (f, key) in keys.iter().enumerate() {
        let base = f * per_file as usize;
        for b in 0..per_file {
            if changed[base + b as usize] {
                map.mark(&key.block(b), ptrack_core::Lsn(1000));
            }
        }
    }
    let (mut false_positives, mut whole_files) = (0u64, 0u64);
    for (f, key) in keys.iter().enumerate() {
        let query = map.file_query(key, ptrack_core::Lsn(500));
        let base = f * per_file as usize;
        let mut reported = 0u32;
        for b in 0..per_file {
            let is_reported = query.changed(b);
            reported += u32::from(is_reported);
            if changed[base + b as usize] {
                assert!(is_reported, "a changed block was not reported");
            } else {
                false_positives += u64::from(is_reported);
            }
        }
        whole_files += u64::from(reported == per_file);
    }
    (false_positives, whole_files)
}

fn section_fidelity(p: &Params) -> (Json, String) {
    let files = p.fidelity_files;
    let per_file = p.fidelity_blocks_per_file;
    let trials = p.fidelity_trials;
    let total_blocks = u64::from(files) * u64::from(per_file);
    let data_gb = total_blocks as f64 * BLCKSZ as f64 / (1024.0 * MB);
    let fractions = [0.01, 0.10];
    // (fraction index, map MB) -> per trial: (FP rate, q, files reported whole)
    type Trials = Vec<(f64, f64, u64)>;
    let mut results: BTreeMap<(usize, u64), Trials> = BTreeMap::new();
    let mut changed_counts: Vec<Vec<u64>> = vec![Vec::new(); fractions.len()];
    for trial in 0..trials {
        let keys = simulated_keys(files, 0x5eed_f1de + trial as u64);
        for (fi, &fraction) in fractions.iter().enumerate() {
            let mut rng = Rng::new(0xf1de_0000 + (fi as u64) * 1000 + trial as u64);
            let changed: Vec<bool> = (0..total_blocks).map(|_| rng.chance(fraction)).collect();
            let k = changed.iter().filter(|&&c| c).count() as u64;
            changed_counts[fi].push(k);
            let unchanged = total_blocks - k;
            for &size in &p.fidelity_sizes_mb {
                let slots = (size as usize) << 17; // MB of 8-byte slots
                let (fp, whole) = simulate_map(&keys, per_file, &changed, slots);
                let rate = fp as f64 / unchanged as f64;
                let q = 1.0 - (-2.0 * k as f64 / slots as f64).exp();
                log(format!(
                    "fidelity: trial {}, {:.0} % changed, {size} MB map: FP rate {:.4} % \
                     (q² {:.4} %), {whole} whole files",
                    trial + 1,
                    fraction * 100.0,
                    rate * 100.0,
                    q * q * 100.0
                ));
                results
                    .entry((fi, size))
                    .or_default()
                    .push((rate, q, whole));
            }
        }
    }

    let mut md = String::new();
    let _ = writeln!(
        md,
        "{total_blocks} blocks ({data_gb:.0} GB) in {files} files of {per_file} blocks; changed \
         blocks chosen at random (fixed seeds), marked at LSN 1000 in a map started at LSN 1; \
         every unchanged block queried since LSN 500 (`file_query(…).changed(b)`); {trials} \
         trials (different relation keys and changed blocks). Theory: with k changed blocks \
         and m slots a slot is raised with probability q = 1 − e^(−2k/m); a block's false \
         positive needs both its slots: q². Every query also looks for the file's cut marks \
         (WAL mode's truncations); a cut counts only with a complete chain of 33 marked \
         ranges, so collisions there report a whole file only when the map is saturated \
         (\"files reported whole\").\n"
    );
    let _ = writeln!(
        md,
        "| map MB | slots per block | 1 %: FP rate, mean (min–max) | q² | files reported \
         whole | 10 %: FP rate, mean (min–max) | q² | files reported whole |\n\
         |---|---|---|---|---|---|---|---|"
    );
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len().max(1) as f64;
    let mut fraction_items = Vec::new();
    let mut mean_rate_64: Vec<Option<f64>> = vec![None; fractions.len()];
    for (fi, &fraction) in fractions.iter().enumerate() {
        let mut points = Vec::new();
        for &size in &p.fidelity_sizes_mb {
            let v = &results[&(fi, size)];
            let rates: Vec<f64> = v.iter().map(|x| x.0).collect();
            let q = mean(&v.iter().map(|x| x.1).collect::<Vec<_>>());
            let whole: Vec<u64> = v.iter().map(|x| x.2).collect();
            if size == 64 {
                mean_rate_64[fi] = Some(mean(&rates));
            }
            points.push(obj([
                ("map_mb", size.into()),
                ("slots", ((size as usize) << 17).into()),
                ("false_positive_rate", rates.clone().into()),
                ("false_positive_rate_mean", mean(&rates).into()),
                ("false_positive_rate_summary", summary(&rates)),
                ("theory_blocks_q2", (q * q).into()),
                ("files_reported_whole", whole.into()),
            ]));
        }
        fraction_items.push(obj([
            ("changed_fraction", fraction.into()),
            ("changed_blocks", changed_counts[fi].clone().into()),
            ("points", Json::Arr(points)),
        ]));
    }
    for &size in &p.fidelity_sizes_mb {
        let slots_per_block = (size as f64 * 131072.0) / total_blocks as f64;
        let mut row = format!("| {size} | {slots_per_block:.3} |");
        for fi in 0..fractions.len() {
            let v = &results[&(fi, size)];
            let rates: Vec<f64> = v.iter().map(|x| x.0).collect();
            let q = mean(&v.iter().map(|x| x.1).collect::<Vec<_>>());
            let whole: Vec<f64> = v.iter().map(|x| x.2 as f64).collect();
            let _ = write!(
                row,
                " {:.4} % ({:.4}–{:.4}) | {:.4} % | {:.1} of {files} |",
                mean(&rates) * 100.0,
                min(&rates) * 100.0,
                max(&rates) * 100.0,
                q * q * 100.0,
                mean(&whole)
            );
        }
        let _ = writeln!(md, "{row}");
    }

    // The README: "map_size ≈ PGDATA/1000, i.e. 64 MB for 64 GB: at 1 % changed
    // about 0.04 % of unchanged blocks falsely reported; at 10 %, about 3 %".
    let claimed = [0.0004, 0.03];
    let claim_applies = (data_gb - 64.0).abs() < 0.5 && mean_rate_64.iter().all(Option::is_some);
    let mut checks = Vec::new();
    let mut holds_all = claim_applies;
    for (fi, claimed_rate) in claimed.into_iter().enumerate() {
        let measured = mean_rate_64[fi];
        // "About": within a quarter of the claimed value.
        let holds = measured.is_some_and(|m| (m - claimed_rate).abs() <= 0.25 * claimed_rate);
        holds_all &= holds;
        checks.push(obj([
            ("changed_fraction", fractions[fi].into()),
            ("claimed_rate", claimed_rate.into()),
            ("measured_mean_rate_64mb", measured.into()),
            ("holds_within_25_percent", holds.into()),
        ]));
    }
    let claim_text = if claim_applies {
        format!(
            "README sizing claim (64 MB for 64 GB: about 0.04 % at 1 % changed, about 3 % at \
             10 %): measured {:.4} % and {:.2} % (mean of {trials} trials): the claim **{}** \
             (criterion: within ±25 % of the claimed rate).",
            mean_rate_64[0].unwrap_or(f64::NAN) * 100.0,
            mean_rate_64[1].unwrap_or(f64::NAN) * 100.0,
            if holds_all { "holds" } else { "does not hold" }
        )
    } else {
        "README sizing claim: not checked (needs the 64 GB data set and a 64 MB map).".into()
    };
    let _ = writeln!(md, "\n{claim_text}\n");
    let j = obj([
        (
            "setup",
            obj([
                ("files", files.into()),
                ("blocks_per_file", per_file.into()),
                ("total_blocks", total_blocks.into()),
                ("data_gb", data_gb.into()),
                ("trials", trials.into()),
                ("mark_lsn", 1000u64.into()),
                ("map_start_lsn", 1u64.into()),
                ("query_since_lsn", 500u64.into()),
            ]),
        ),
        ("fractions", Json::Arr(fraction_items)),
        (
            "readme_claim",
            obj([
                ("applies", claim_applies.into()),
                ("checks", Json::Arr(checks)),
                ("holds", holds_all.into()),
                ("text", claim_text.into()),
            ]),
        ),
    ]);
    (j, md)
}

// ---------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Context {
    criterion: Vec<CriterionResult>,
    /// True when `criterion` holds this run's results.
    criterion_fresh: bool,
}

fn panic_message(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

const TITLES: [(&str, &str); 6] = [
    ("criterion", "Core micro-benchmarks (criterion)"),
    ("pgbench", "1. pgbench overhead (interleaved rounds)"),
    ("callgrind", "2. Instruction counts (callgrind)"),
    (
        "backup",
        "3. Backup-side speed: pagemapset against a page-LSN scan",
    ),
    ("checkpoint", "4. Checkpoint cost"),
    (
        "fidelity",
        "5. Fidelity: false-positive rate against map size (simulation)",
    ),
];

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
    for name in SECTIONS {
        if opts.only.as_ref().is_some_and(|o| !o.contains(name)) {
            continue;
        }
        log(format!("=== {name} (load {})", load_average()));
        let t0 = Instant::now();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| match name {
            "criterion" => section_criterion(&opts, &mut ctx),
            "pgbench" => {
                if ctx.criterion.is_empty() {
                    // An earlier run's decoder result, if any, for the ratio.
                    ctx.criterion = read_criterion(&opts.criterion_dir, None);
                }
                section_pgbench(&params, &mut ctx)
            }
            "callgrind" => section_callgrind(&params),
            "backup" => section_backup(&params),
            "checkpoint" => section_checkpoint(&params),
            "fidelity" => section_fidelity(&params),
            _ => unreachable!(),
        }));
        let seconds = t0.elapsed().as_secs_f64();
        let title = TITLES.iter().find(|(n, _)| *n == name).unwrap().1;
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
