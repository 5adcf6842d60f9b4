//! The server log: reading it (whole, from a mark, its tail) and finding
//! ptrack's messages in it.

use std::fs;

use super::env::lossy;
use super::Cluster;

impl Cluster {
    pub fn log_contents(&self) -> String {
        fs::read(&self.logfile)
            .map(|b| lossy(&b))
            .unwrap_or_default()
    }

    /// Current length of the server log, to read only what comes after.
    pub fn log_mark(&self) -> usize {
        fs::metadata(&self.logfile).map_or(0, |m| m.len() as usize)
    }

    pub fn log_since(&self, mark: usize) -> String {
        let all = fs::read(&self.logfile).unwrap_or_default();
        lossy(all.get(mark..).unwrap_or_default())
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log_contents();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// A ptrack WARNING (or LOG) line with the lines that continue it.
pub fn ptrack_lines(log: &str, level: &str) -> Vec<String> {
    let needle = format!("{level}:");
    log.lines()
        .filter(|l| l.contains(&needle) && l.contains("ptrack:"))
        .map(str::to_string)
        .collect()
}

/// ptrack's WARNINGs in a log excerpt, each with its DETAIL/HINT lines.
pub fn ptrack_warnings(log: &str) -> Vec<String> {
    let lines: Vec<&str> = log.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.contains("WARNING:") && line.contains("ptrack") {
            let mut msg = line.to_string();
            for more in lines[i + 1..]
                .iter()
                .take_while(|l| l.contains("DETAIL:") || l.contains("HINT:"))
            {
                msg.push('\n');
                msg.push_str(more);
            }
            out.push(msg);
        }
    }
    out
}

/// Asserts that the log excerpt has a ptrack WARNING containing every one of
/// `words` (case-insensitive), and returns it.
pub fn expect_warning(log: &str, words: &[&str], context: &str) -> String {
    ptrack_warnings(log)
        .into_iter()
        .find(|w| {
            let lower = w.to_lowercase();
            w.contains("ptrack:")
                && words
                    .iter()
                    .all(|word| lower.contains(&word.to_lowercase()))
        })
        .unwrap_or_else(|| {
            panic!("[{context}] no ptrack WARNING containing {words:?} in the server log:\n{log}")
        })
}
