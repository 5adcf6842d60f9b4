//! Progress of long copies on stderr: bytes, files and rate, about once a
//! second, and a final line.

use std::time::{Duration, Instant};

const INTERVAL: Duration = Duration::from_secs(1);

pub struct Progress {
    what: &'static str,
    start: Instant,
    last_report: Instant,
    bytes: u64,
    files: u64,
}

impl Progress {
    pub fn new(what: &'static str) -> Progress {
        let now = Instant::now();
        Progress {
            what,
            start: now,
            last_report: now,
            bytes: 0,
            files: 0,
        }
    }

    pub fn add_bytes(&mut self, bytes: u64) {
        self.bytes += bytes;
        if self.last_report.elapsed() >= INTERVAL {
            self.last_report = Instant::now();
            eprintln!(
                "{}",
                line(self.what, self.bytes, self.files, self.start.elapsed())
            );
        }
    }

    pub fn file_done(&mut self) {
        self.files += 1;
    }

    pub fn finish(self) {
        eprintln!(
            "{} (done)",
            line(self.what, self.bytes, self.files, self.start.elapsed())
        );
    }
}

/// `"copying: 1.5 GB, 320 files, 12.0 s, 128.0 MB/s"`.
pub fn line(what: &str, bytes: u64, files: u64, elapsed: Duration) -> String {
    let seconds = elapsed.as_secs_f64();
    let rate = if seconds > 0.0 {
        bytes as f64 / seconds
    } else {
        0.0
    };
    format!(
        "{what}: {}, {files} files, {seconds:.1} s, {}/s",
        human(bytes as f64),
        human(rate)
    )
}

fn human(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_sizes_and_rates() {
        assert_eq!(
            line("copying", 3 << 30, 12, Duration::from_secs(2)),
            "copying: 3.0 GB, 12 files, 2.0 s, 1.5 GB/s"
        );
        assert_eq!(
            line("wal", 512, 1, Duration::ZERO),
            "wal: 512 B, 1 files, 0.0 s, 0 B/s"
        );
    }
}
