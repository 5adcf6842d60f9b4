//! Server configurations to switch between, WAL readers' lag, and the server's CPU time.

use std::fs;
use std::time::{Duration, Instant};

use crate::common::faults::wait_for;
use crate::common::{Cluster, StopMode};
use crate::{log, MB};

pub struct ServerConfig {
    pub name: &'static str,
    pub settings: &'static [(&'static str, &'static str)],
}

impl ServerConfig {
    fn mode(&self) -> Option<&'static str> {
        self.settings
            .iter()
            .find(|(k, _)| *k == "ptrack.mode")
            .map(|(_, v)| *v)
            .filter(|_| self.ptrack_loaded())
    }

    pub fn ptrack_loaded(&self) -> bool {
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

pub const OFF: ServerConfig = ServerConfig {
    name: "off",
    settings: &[("shared_preload_libraries", "''"), ("summarize_wal", "off")],
};
pub const HOOKS_64MB: ServerConfig = ServerConfig {
    name: "hooks-64MB",
    settings: &[
        ("shared_preload_libraries", "'ptrack'"),
        ("ptrack.map_size", "64"),
        ("ptrack.mode", "hooks"),
        ("summarize_wal", "off"),
    ],
};
pub const HOOKS_1GB: ServerConfig = ServerConfig {
    name: "hooks-1GB",
    settings: &[
        ("shared_preload_libraries", "'ptrack'"),
        ("ptrack.map_size", "1024"),
        ("ptrack.mode", "hooks"),
        ("summarize_wal", "off"),
    ],
};
pub const WAL_64MB: ServerConfig = ServerConfig {
    name: "wal-64MB",
    settings: &[
        ("shared_preload_libraries", "'ptrack'"),
        ("ptrack.map_size", "64"),
        ("ptrack.mode", "wal"),
        ("summarize_wal", "off"),
    ],
};
pub const SUMMARIZE_WAL: ServerConfig = ServerConfig {
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
pub fn wait_reader(c: &Cluster, cfg: &ServerConfig) -> Option<f64> {
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
pub fn switch_to(c: &mut Cluster, cfg: &ServerConfig, reset: &str) {
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

pub fn clock_ticks_per_second() -> f64 {
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
pub fn proc_times(pid: u32) -> Option<(u32, u64, u64)> {
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
pub fn server_cpu_seconds(c: &Cluster) -> f64 {
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
