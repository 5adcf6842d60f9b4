//! Where ptrack's instructions go in a callgrind run, from `callgrind_annotate`.

use std::path::Path;
use std::process::{Command, Stdio};

/// Where ptrack's instructions go in a run, from `callgrind_annotate`:
/// (label, function) pairs whose inclusive cost is reported.
pub const PROFILE_FUNCTIONS: [(&str, &str); 7] = [
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
pub struct Profile {
    inclusive: String,
    callers: String,
}

impl Profile {
    pub fn of(out_file: &Path) -> Option<Profile> {
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

    pub fn inclusive(&self, function: &str) -> u64 {
        self.inclusive
            .lines()
            .filter(|l| Self::names(l, function))
            .filter_map(Self::leading_count)
            .max()
            .unwrap_or(0)
    }

    /// Calls of `function`: the `(Nx)` of its callers' lines above its own.
    pub fn calls(&self, function: &str) -> u64 {
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
