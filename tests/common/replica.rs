//! Servers made from a ptrack cluster with PostgreSQL's own tools — streaming
//! standbys and copies taken by `pg_basebackup` or by hand — and the helpers the
//! standby and tools tests share: waiting for replay, restartpoints, promotion,
//! reading the map file's header, ptrack's WARNINGs, a reference table.

use std::fs;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use super::{check_output, lossy, lsn, Cluster, ClusterDirs, Lsn, PageMapSet, BLCKSZ};

/// How long to wait for a standby to replay up to a position.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(300);

/// The fields of a `global/ptrack.map` header the tests look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapHeader {
    pub system_identifier: u64,
    pub init_lsn: Lsn,
    pub checkpoint_redo: Lsn,
    pub data_checksum_version: u32,
}

/// Reads the header of the map file of the mode under test in
/// `<pgdata>/global`, `None` when there is no such file.
pub fn map_header(pgdata: &Path) -> Option<MapHeader> {
    map_header_of(&pgdata.join("global").join(super::map_file_name()))
}

/// Reads the header of the map file `path`, `None` when there is no such
/// file. Panics on a file that does not start with the map's magic.
pub fn map_header_of(path: &Path) -> Option<MapHeader> {
    let bytes = fs::read(path).ok()?;
    assert!(
        bytes.len() >= 64 && &bytes[0..8] == b"PTRACKMP",
        "{} is not a ptrack map ({} bytes)",
        path.display(),
        bytes.len()
    );
    let u64_at = |off: usize| u64::from_le_bytes(bytes[off..off + 8].try_into().expect("8 bytes"));
    Some(MapHeader {
        system_identifier: u64_at(16),
        init_lsn: Lsn(u64_at(32)),
        checkpoint_redo: Lsn(u64_at(40)),
        data_checksum_version: u32::from_le_bytes(bytes[48..52].try_into().expect("4 bytes")),
    })
}

/// Names of ptrack's map files in `<pgdata>/global`, of either mode
/// (`ptrack.map*`, `pgsql_tmp_ptrack.map*`).
pub fn map_files(pgdata: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(pgdata.join("global"))
        .unwrap_or_else(|e| panic!("readdir {}/global: {e}", pgdata.display()))
        .map(|e| {
            e.expect("readdir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.starts_with("ptrack") || n.starts_with("pgsql_tmp_ptrack"))
        .collect();
    names.sort();
    names
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

/// Creates the reference table `known` (frozen, never written again) and
/// returns its file path and block count.
pub fn create_known_table(c: &Cluster) -> (String, u64) {
    c.psql(
        "CREATE EXTENSION IF NOT EXISTS ptrack;
         CREATE TABLE known (id int, pad text) WITH (autovacuum_enabled = off);
         INSERT INTO known SELECT g, repeat('k', 300) FROM generate_series(1, 2000) g;
         VACUUM (FREEZE, ANALYZE) known;
         CHECKPOINT;",
    );
    let path = c.query_one("SELECT pg_relation_filepath('known')");
    let bytes: u64 = c
        .query_one("SELECT pg_relation_size('known')")
        .parse()
        .expect("relation size");
    (path, bytes / BLCKSZ as u64)
}

/// Asserts that `path` is reported with exactly its blocks `0..blocks`.
pub fn assert_reports_all(set: &PageMapSet, path: &str, blocks: u64, why: &str) {
    assert!(blocks > 0, "{why}: {path} has no block");
    let got = set.get(path).map(|m| m.set_blocks()).unwrap_or_default();
    assert_eq!(
        got,
        (0..blocks).collect::<Vec<_>>(),
        "{why}: {path} must be reported with all of its {blocks} blocks"
    );
}

/// What `base_backup` makes of the copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupKind {
    /// `-R` and a replication slot on the source: a streaming standby.
    Standby,
    /// No recovery configuration: starts as a new, independent server.
    Clone,
}

impl Cluster {
    /// A new cluster directory (base, socket directory) without a data
    /// directory, configured like `template` but with its own port and socket:
    /// the target of `pg_basebackup` or of a copy.
    pub fn empty_like(template: &Cluster, name: &str) -> Cluster {
        let root = template.base.parent().expect("cluster base has a parent");
        let ClusterDirs {
            base,
            sockdir,
            port,
        } = ClusterDirs::create(root, name);
        let mut settings = template.settings.clone();
        settings.insert("port".into(), port.to_string());
        settings.insert(
            "unix_socket_directories".into(),
            format!("'{}'", sockdir.display()),
        );
        Cluster {
            name: name.to_string(),
            pgdata: base.join("data"),
            logfile: base.join("server.log"),
            sockdir,
            base,
            port,
            settings,
            running: false,
        }
    }

    /// Writes this cluster's test settings into its data directory (after the
    /// data directory was filled by a copy that brought the source's settings).
    pub fn rewrite_settings(&self) {
        self.write_settings();
    }

    /// Runs one of the installation's programs as the server's OS user and
    /// returns its output, whatever its exit status.
    pub fn run_tool(&self, prog: &str, args: &[&str]) -> Output {
        self.server_cmd(prog)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("failed to run {prog}: {e}"))
    }

    /// Runs a program as the server's OS user, panicking when it fails; returns
    /// its stdout followed by its stderr.
    pub fn tool(&self, prog: &str, args: &[&str]) -> String {
        let out = self.run_tool(prog, args);
        check_output(&format!("{prog} {}", args.join(" ")), &out);
        format!("{}{}", lossy(&out.stdout), lossy(&out.stderr))
    }

    /// A libpq connection string for this server.
    pub fn conninfo(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.sockdir.display(),
            self.port
        )
    }

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
