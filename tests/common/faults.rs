//! Fault injection: an operating-system crash (immediate stop and an empty
//! tmpfs), a backend killed with SIGKILL, a server started under a file-size
//! limit. The hidden developer settings that slow a map flush down are set
//! with [`Cluster::set_sighup`] (see `config.rs`).

use std::fs;
use std::time::Duration;

use super::mapfile::live_map_path;
use super::{pg_install, Cluster, StopMode};

// What the soak and the benchmark (examples/) import from here; they live
// where their names say.
#[allow(unused_imports)]
pub use super::checker::cold::{
    cold_check, describe_false_negatives, take_snapshot_a, ColdCheck, SnapshotA,
};
#[allow(unused_imports)]
pub use super::client::Background;
#[allow(unused_imports)]
pub use super::util::{seed_from_env, wait_for, Rng};

impl Cluster {
    /// Starts the server with `ulimit -f kb` (in 1024-byte units) in force for
    /// the postmaster and everything it forks. PostgreSQL ignores SIGXFSZ, so
    /// a write past the limit fails with EFBIG.
    pub fn try_start_with_file_size_limit(&mut self, kb: u64) -> Result<(), String> {
        let script = format!("ulimit -f {kb} && exec \"$0\" -D \"$1\" -l \"$2\" -w -t 300 start");
        let mut bash = self.server_command("bash");
        bash.args(["-c", &script])
            .arg(pg_install().bindir.join("pg_ctl"))
            .arg(&self.pgdata)
            .arg(&self.logfile);
        self.start_with(&format!("pg_ctl start under ulimit -f {kb}"), bash)
    }

    /// An operating-system crash as ptrack sees it: the server processes die
    /// (immediate stop) and tmpfs, which held the live map, is empty at the
    /// next boot. Page writes that reached the disk stay (the worst case for
    /// change tracking). Returns whether there was a live map to lose.
    pub fn simulate_os_crash(&mut self) -> bool {
        self.stop(StopMode::Immediate);
        match live_map_path(&self.pgdata) {
            Some(live) if live.exists() => {
                fs::remove_file(&live).unwrap_or_else(|e| panic!("rm {}: {e}", live.display()));
                true
            }
            _ => false,
        }
    }

    /// Kills one client backend of this cluster with SIGKILL (by the pid
    /// `pg_stat_activity` gives), which makes the postmaster end every server
    /// process, re-create shared memory and run crash recovery. Prefers a
    /// backend of `application_name`. Returns the pid, None if there was none.
    pub fn kill_a_backend(&self, application_name: &str) -> Option<i32> {
        let pid: i32 = self
            .try_psql(&format!(
                "SELECT pid FROM pg_stat_activity
                  WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
                  ORDER BY application_name = '{application_name}' DESC, random() LIMIT 1"
            ))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        // SAFETY: kill(2) on a pid of this cluster's own server processes.
        let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
        (rc == 0).then_some(pid)
    }

    /// Waits until the server accepts connections again (after a crash of one
    /// of its processes, the postmaster restarts the others by itself).
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        // A few ms after the kill the old backends may still answer.
        std::thread::sleep(Duration::from_millis(200));
        wait_for(timeout, || self.accepts_connections())
    }

    /// The postmaster's pid, from postmaster.pid.
    pub fn postmaster_pid(&self) -> Option<u32> {
        fs::read_to_string(self.pgdata.join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }
}
