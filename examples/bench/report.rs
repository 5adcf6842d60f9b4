//! Summaries of series and the number formats the markdown tables share.

use crate::json::{obj, Json};

pub fn median(xs: &[f64]) -> f64 {
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

pub fn min(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(f64::INFINITY, f64::min)
}

pub fn max(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// `{median, min, max, n}` of a series.
pub fn summary(xs: &[f64]) -> Json {
    obj([
        ("median", median(xs).into()),
        ("min", min(xs).into()),
        ("max", max(xs).into()),
        ("n", xs.len().into()),
    ])
}

/// One number of each round: a series to summarize.
pub fn series<R>(rounds: &[&R], f: impl Fn(&R) -> f64) -> Vec<f64> {
    rounds.iter().map(|r| f(r)).collect()
}

/// A "vs off" cell: `baseline` in ptrack off's own row, else the ratio − 1.
pub fn vs_off(is_off: bool, ratio: f64) -> String {
    if is_off {
        "baseline".into()
    } else {
        pct(ratio - 1.0)
    }
}

pub fn pct(x: f64) -> String {
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
pub fn grouped(n: u64) -> String {
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

pub fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "**no**"
    }
}
