//! Servers made from a ptrack cluster with PostgreSQL's own tools: streaming
//! standbys and copies taken by `pg_basebackup`, waiting for replay,
//! restartpoints, promotion.

use std::time::{Duration, Instant};

use super::{lsn, Cluster, Lsn};

/// How long to wait for a standby to replay up to a position.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(300);

/// What `base_backup` makes of the copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupKind {
    /// `-R` and a replication slot on the source: a streaming standby.
    Standby,
    /// No recovery configuration: starts as a new, independent server.
    Clone,
}

impl Cluster {
    pub fn is_in_recovery(&self) -> bool {
        self.query_one("SELECT pg_is_in_recovery()") == "t"
    }

    /// The end of the last WAL record replayed (a standby).
    pub fn replay_lsn(&self) -> Lsn {
        lsn(&self.query_one("SELECT pg_last_wal_replay_lsn()"))
    }

    /// WAL flushed on a primary: every record up to it can be streamed.
    pub fn wal_flush_lsn(&self) -> Lsn {
        lsn(&self.query_one("SELECT pg_current_wal_flush_lsn()"))
    }

    /// Waits until this standby has replayed WAL up to `target`.
    pub fn wait_for_replay(&self, target: Lsn) {
        let t0 = Instant::now();
        loop {
            // A standby that was just restarted may refuse connections for a
            // moment; keep trying until the deadline.
            let replayed = self
                .try_psql("SELECT pg_last_wal_replay_lsn()")
                .ok()
                .and_then(|s| s.trim().parse::<Lsn>().ok());
            if replayed.is_some_and(|r| r >= target) {
                return;
            }
            assert!(
                t0.elapsed() < REPLAY_TIMEOUT,
                "[{}] standby did not replay up to {target} within {REPLAY_TIMEOUT:?} \
                 (replayed {replayed:?})\n--- log tail ---\n{}",
                self.name,
                self.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Promotes this standby and waits until it accepts writes.
    pub fn promote(&self) {
        self.tool(
            "pg_ctl",
            &[
                "-D",
                &self.pgdata.display().to_string(),
                "-w",
                "-t",
                "300",
                "promote",
            ],
        );
        let t0 = Instant::now();
        while self.is_in_recovery() {
            assert!(
                t0.elapsed() < REPLAY_TIMEOUT,
                "[{}] promotion did not end",
                self.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `pg_basebackup -X stream -c fast` of `source` into a new cluster directory
/// (tablespaces mapped into it), configured like the source but with its own
/// port and socket. Not started.
pub fn base_backup(source: &Cluster, name: &str, kind: BackupKind) -> Cluster {
    let copy = Cluster::empty_like(source, name);
    let mut args: Vec<String> = vec![
        "-D".into(),
        copy.pgdata.display().to_string(),
        "-h".into(),
        source.sockdir.display().to_string(),
        "-p".into(),
        source.port.to_string(),
        "-U".into(),
        "postgres".into(),
        "-X".into(),
        "stream".into(),
        "-c".into(),
        "fast".into(),
        "--no-sync".into(),
    ];
    if kind == BackupKind::Standby {
        let slot: String = name
            .chars()
            .map(|ch| {
                if ch.is_ascii_alphanumeric() {
                    ch.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        args.extend([
            "-R".into(),
            "-C".into(),
            "-S".into(),
            format!("slot_{slot}"),
        ]);
    }
    for row in source.query_rows(
        "SELECT spcname, pg_tablespace_location(oid) FROM pg_tablespace
         WHERE pg_tablespace_location(oid) <> ''",
    ) {
        let target = copy.base.join(format!("tblspc_{}", row[0]));
        args.push(format!(
            "--tablespace-mapping={}={}",
            row[1],
            target.display()
        ));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    copy.tool("pg_basebackup", &args);
    copy.write_settings();
    copy
}

/// Waits until `standby` has replayed everything `primary` has flushed so far;
/// returns that position.
pub fn catch_up(primary: &Cluster, standby: &Cluster) -> Lsn {
    let target = primary.wal_flush_lsn();
    standby.wait_for_replay(target);
    target
}

/// `CHECKPOINT` on the primary, replay of its record, `CHECKPOINT` on the
/// standby: a restartpoint at (at least) that checkpoint. Returns the
/// standby's REDO LSN in pg_control afterwards.
pub fn restartpoint(primary: &Cluster, standby: &Cluster) -> Lsn {
    primary.psql("CHECKPOINT;");
    let redo = primary.controldata_redo_lsn();
    catch_up(primary, standby);
    standby.psql("CHECKPOINT;");
    let standby_redo = standby.controldata_redo_lsn();
    assert!(
        standby_redo >= redo,
        "[{}] CHECKPOINT on the standby did not perform a restartpoint at the primary's \
         checkpoint: REDO {standby_redo} in pg_control, primary's checkpoint REDO {redo}",
        standby.name
    );
    standby_redo
}
