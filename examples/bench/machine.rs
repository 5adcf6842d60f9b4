//! The machine the run is on: its description, load average and page cache.

use std::fmt::Write as _;
use std::fs;
use std::process::Command;

use crate::common::pg_install;
use crate::json::{obj, Json};
use crate::MB;

fn read_trim(path: &str) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

pub fn command_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `sync; echo 3 > /proc/sys/vm/drop_caches`. False when not permitted.
pub fn drop_caches() -> bool {
    // SAFETY: sync(2) has no preconditions and cannot fail.
    unsafe { libc::sync() };
    fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

pub fn load_average() -> String {
    read_trim("/proc/loadavg").unwrap_or_default()
}

pub fn machine() -> (Json, String) {
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
