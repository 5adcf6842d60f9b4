//! The command line: iterations, seed and where the results go.

use std::path::PathBuf;

use crate::common::faults;
use crate::common::util::{option_value, today};

pub struct Args {
    pub iterations: u64,
    pub seed: u64,
    pub out: PathBuf,
}

pub fn parse_args() -> Args {
    let mut iterations = 200;
    let mut seed = None;
    let mut out = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| option_value(&mut args, name);
        match a.as_str() {
            "--iterations" => iterations = value("--iterations").parse().expect("iterations"),
            "--seed" => seed = Some(value("--seed").parse().expect("seed")),
            "--out" => out = Some(PathBuf::from(value("--out"))),
            n if n.parse::<u64>().is_ok() => iterations = n.parse().expect("iterations"),
            other => panic!("unknown argument {other:?} (--iterations N, --seed S, --out PATH)"),
        }
    }
    let out =
        out.unwrap_or_else(|| PathBuf::from(format!("benches/results/soak-{}.json", today())));
    Args {
        iterations,
        seed: seed.unwrap_or_else(|| faults::seed_from_env("PTRACK_SOAK_SEED")),
        out,
    }
}
