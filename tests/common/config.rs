//! Server configuration: the test settings file (read at the next start) and
//! `ALTER SYSTEM` settings applied by a reload (the hidden developer settings
//! the fault tests use, the WAL follower's pause switch).

use std::fs;
use std::time::Duration;

use super::env::chown_to_server;
use super::util::wait_for;
use super::Cluster;

/// Name of the file (inside PGDATA, included from postgresql.conf) holding the
/// test settings.
pub(super) const TEST_CONF: &str = "ptrack_test.conf";

impl Cluster {
    /// Sets a server parameter (value written verbatim, quote strings
    /// yourself). Takes effect at the next start.
    pub fn set_conf(&mut self, key: &str, value: &str) {
        self.settings.insert(key.to_string(), value.to_string());
        self.write_settings();
    }

    pub(super) fn write_settings(&self) {
        let path = self.pgdata.join(TEST_CONF);
        let body: String = self
            .settings
            .iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect();
        fs::write(&path, body).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        chown_to_server(&path);
    }

    /// Writes this cluster's test settings into its data directory (after the
    /// data directory was filled by a copy that brought the source's settings).
    pub fn rewrite_settings(&self) {
        self.write_settings();
    }

    /// `ALTER SYSTEM SET key = value` and a configuration reload, so that a
    /// PGC_SIGHUP setting reaches every process, the checkpointer included.
    pub fn set_sighup(&self, key: &str, value: &str) {
        self.psql(&format!("ALTER SYSTEM SET {key} = {value};"));
        self.reload_and_wait(key, value);
    }

    /// Pauses the WAL follower (`ptrack.debug_follower_paused`) and waits
    /// until it has really stopped reading: its position stays put while WAL
    /// is written and flushed. A fixed sleep is not enough on a loaded machine.
    pub fn pause_follower(&self) {
        self.set_sighup("ptrack.debug_follower_paused", "1");
        let position = || self.query_one("SELECT wal_tracked_through FROM ptrack_status()");
        let t0 = std::time::Instant::now();
        loop {
            let before = position();
            self.psql(
                "SELECT pg_logical_emit_message(true, 'ptrack-test', 'is the follower paused?');",
            );
            std::thread::sleep(std::time::Duration::from_millis(300));
            if position() == before {
                return;
            }
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(60),
                "[{}] the WAL follower kept reading after ptrack.debug_follower_paused = 1",
                self.name
            );
        }
    }

    /// `ALTER SYSTEM RESET key` and a reload.
    pub fn reset_sighup(&self, key: &str) {
        self.psql(&format!("ALTER SYSTEM RESET {key};"));
        self.reload_and_wait(key, "0");
    }

    fn reload_and_wait(&self, key: &str, value: &str) {
        self.psql("SELECT pg_reload_conf();");
        // The reload is asynchronous: wait until a new backend sees the value
        // (the postmaster re-read the file), then a little more for the
        // checkpointer to process its SIGHUP.
        // (pg_settings hides the developer settings; SHOW adds units: "20ms".)
        let want = value.trim_matches('\'').to_string();
        let ok = wait_for(Duration::from_secs(10), || {
            let shown = self
                .try_psql(&format!("SELECT current_setting('{key}')"))
                .unwrap_or_default();
            let digits: String = shown
                .trim()
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits == want
        });
        assert!(
            ok,
            "[{}] {key} did not become {want} after a reload",
            self.name
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}
