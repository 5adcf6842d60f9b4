//! Section `criterion`: the core micro-benchmarks `cargo bench` just wrote.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use crate::json::{self, obj, Json};
use crate::options::{Opts, Params};
use crate::Context;

/// One criterion benchmark's results.
pub struct CriterionResult {
    pub group: String,
    pub function: String,
    pub mean_ns: f64,
    pub median_ns: f64,
    /// ("bytes" | "elements", amount per iteration)
    pub throughput: Option<(String, f64)>,
}

impl CriterionResult {
    pub fn per_second(&self) -> Option<f64> {
        self.throughput
            .as_ref()
            .map(|(_, amount)| amount / (self.mean_ns / 1e9))
    }
}

pub fn read_criterion(dir: &Path, since: Option<u64>) -> Vec<CriterionResult> {
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

pub fn section_criterion(opts: &Opts, _: &Params, ctx: &mut Context) -> (Json, String) {
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
