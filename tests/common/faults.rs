//! Helpers for the fault-injection and hint-bit tests and the soak program:
//! a seeded RNG, background clients that outlive an immediate stop, the
//! hidden developer settings, starting the server under a file-size limit,
//! a cluster without data checksums, and masking hint bits out of heap pages.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::{check_output, lossy, server_owner, Cluster, BLCKSZ};

// ---------------------------------------------------------------------------
// A small seeded RNG (SplitMix64): reproducible runs without a dependency.
// ---------------------------------------------------------------------------

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi);
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.range(0, items.len() as u64 - 1) as usize]
    }
}

/// The seed in environment variable `var` if set, else one from the clock.
pub fn seed_from_env(var: &str) -> u64 {
    match std::env::var(var) {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{var}={s:?} is not a u64: {e}")),
        Err(_) => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock before 1970");
            t.as_secs() ^ u64::from(t.subsec_nanos()) ^ (u64::from(std::process::id()) << 32)
        }
    }
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if t0.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A client running in the background (psql or pgbench). It is expected to
/// lose its connection when the server is stopped under it.
pub struct Background {
    pub what: String,
    child: Child,
}

impl Background {
    /// Waits for the client to exit (up to `timeout`, then kills it, by its
    /// own handle). Returns true when it exited successfully.
    pub fn finish(mut self, timeout: Duration) -> bool {
        let t0 = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if t0.elapsed() < timeout => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return false;
                }
            }
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
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

// ---------------------------------------------------------------------------
// Cluster extensions
// ---------------------------------------------------------------------------

impl Cluster {
    /// Like [`Cluster::new`], but the cluster has no data checksums (they
    /// are turned off with `pg_checksums --disable` right after initdb, which
    /// leaves the cluster as `initdb` without `-k` would).
    pub fn new_without_checksums(name: &str) -> Cluster {
        let c = Cluster::new(name);
        let out = c
            .server_cmd("pg_checksums")
            .args(["--disable", "-D"])
            .arg(&c.pgdata)
            .stdin(Stdio::null())
            .output()
            .expect("failed to run pg_checksums");
        check_output("pg_checksums --disable", &out);
        assert_eq!(
            c.controldata_field("Data page checksum version"),
            "0",
            "checksums still on after pg_checksums --disable"
        );
        c
    }

    /// True when the cluster has data checksums.
    pub fn has_checksums(&self) -> bool {
        self.controldata_field("Data page checksum version") != "0"
    }

    /// `psql -c SQL` in the background (database postgres).
    pub fn spawn_psql(&self, sql: &str) -> Background {
        self.spawn_psql_db("postgres", sql)
    }

    pub fn spawn_psql_db(&self, db: &str, sql: &str) -> Background {
        assert!(self.running, "cluster {} is not running", self.name);
        let child = self
            .server_cmd("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
            .arg("-h")
            .arg(&self.sockdir)
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", db])
            .args(["-c", sql])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("failed to spawn psql");
        Background {
            what: format!("psql -c {sql:?}"),
            child,
        }
    }

    /// pgbench in the background.
    pub fn spawn_pgbench(&self, db: &str, args: &[&str]) -> Background {
        assert!(self.running, "cluster {} is not running", self.name);
        let child = self
            .server_cmd("pgbench")
            .arg("-h")
            .arg(&self.sockdir)
            .args(["-p", &self.port.to_string(), "-U", "postgres"])
            .args(args)
            .arg(db)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("failed to spawn pgbench");
        Background {
            what: format!("pgbench {}", args.join(" ")),
            child,
        }
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

    /// `global/ptrack.map.tmp`.
    pub fn temp_map_path(&self) -> PathBuf {
        self.pgdata.join("global").join("ptrack.map.tmp")
    }

    /// Starts the server with `ulimit -f kb` (in 1024-byte units) in force for
    /// the postmaster and everything it forks. PostgreSQL ignores SIGXFSZ, so
    /// a write past the limit fails with EFBIG.
    pub fn try_start_with_file_size_limit(&mut self, kb: u64) -> Result<(), String> {
        assert!(!self.running, "cluster {} is already running", self.name);
        let pg_ctl = super::pg_install().bindir.join("pg_ctl");
        let script = format!("ulimit -f {kb} && exec \"$0\" -D \"$1\" -l \"$2\" -w -t 300 start");
        let mut cmd = if super::running_as_root() {
            let mut c = std::process::Command::new(super::runuser());
            c.args(["-u", "postgres", "--"]);
            c
        } else {
            std::process::Command::new("env")
        };
        let install = super::pg_install();
        let out = cmd
            .args(["bash", "-c", &script])
            .arg(&pg_ctl)
            .arg(&self.pgdata)
            .arg(&self.logfile)
            .env("LC_ALL", "C")
            .env("LANG", "C")
            .env("LD_LIBRARY_PATH", install.prefix.join("lib"))
            .env_remove("PGDATA")
            .env_remove("PGPORT")
            .env_remove("PGHOST")
            .current_dir(&self.base)
            .stdin(Stdio::null())
            .output()
            .expect("failed to run bash -c 'ulimit -f ...; pg_ctl start'");
        if !out.status.success() {
            return Err(format!(
                "pg_ctl start under ulimit -f {kb} failed for cluster {}: {}{}\n--- log tail ---\n{}",
                self.name,
                lossy(&out.stdout),
                lossy(&out.stderr),
                self.log_tail(40)
            ));
        }
        self.running = true;
        Ok(())
    }

    /// The live map file in tmpfs (`/dev/shm/ptrack.*.map`), if it exists.
    pub fn live_map_file(&self) -> Option<PathBuf> {
        super::live_map_path(&self.pgdata).filter(|p| p.exists())
    }

    /// An operating-system crash as ptrack sees it: the server processes die
    /// (immediate stop) and tmpfs, which held the live map, is empty at the
    /// next boot. Page writes that reached the disk stay (the worst case for
    /// change tracking). Returns whether there was a live map to lose.
    pub fn simulate_os_crash(&mut self) -> bool {
        self.stop(StopMode::Immediate);
        match super::live_map_path(&self.pgdata) {
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

    /// One `psql -c 'SELECT 1'` (SQL in the arguments: `try_psql` writes it to
    /// psql's stdin, which fails with EPIPE when psql exits at once because the
    /// server is still down).
    pub fn accepts_connections(&self) -> bool {
        self.server_cmd("psql")
            .args(["-X", "-q", "-h"])
            .arg(&self.sockdir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-c", "SELECT 1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
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

    /// Block count of a relation's main fork and its path relative to PGDATA.
    pub fn relation_file(&self, db: &str, rel: &str) -> (String, u64) {
        let rows = self.query_rows_db(
            db,
            &format!("SELECT pg_relation_filepath('{rel}'), pg_relation_size('{rel}') / {BLCKSZ}"),
        );
        assert_eq!(rows.len(), 1, "relation_file({rel}): {rows:?}");
        (rows[0][0].clone(), rows[0][1].parse().expect("block count"))
    }
}

/// Mode (permission bits) and owner uid of a file.
pub fn mode_and_owner(path: &Path) -> Option<(u32, u32)> {
    let meta = fs::metadata(path).ok()?;
    Some((meta.permissions().mode() & 0o7777, meta.uid()))
}

/// The uid the server runs as (ours when we are not root).
pub fn server_uid() -> u32 {
    match server_owner() {
        Some((uid, _)) => uid,
        // SAFETY: getuid has no preconditions and cannot fail.
        None => unsafe { libc::getuid() },
    }
}

// ---------------------------------------------------------------------------
// Hint bits
// ---------------------------------------------------------------------------

/// `HEAP_XMIN_COMMITTED | HEAP_XMIN_INVALID | HEAP_XMAX_COMMITTED |
/// HEAP_XMAX_INVALID`: the tuple hint bits of `t_infomask`.
pub const HEAP_HINT_BITS: u16 = 0x0100 | 0x0200 | 0x0400 | 0x0800;
const SIZE_OF_PAGE_HEADER: usize = 24;
const SIZE_OF_HEAP_TUPLE_HEADER: usize = 23;
const T_INFOMASK_OFFSET: usize = 20;
const LP_NORMAL: u32 = 1;

/// A heap page with everything a hint-bit-only write may change zeroed: the
/// header's `pd_checksum`, `pd_flags` and `pd_prune_xid`, and the hint bits
/// of every normal tuple's `t_infomask` (found through the page's own line
/// pointers). Malformed line pointers are left alone.
pub fn mask_heap_hint_bits(page: &[u8]) -> Vec<u8> {
    assert_eq!(page.len(), BLCKSZ, "not a whole page");
    let mut p = page.to_vec();
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let pd_lower = usize::from(u16_at(&p, 12));
    p[8..12].fill(0); // pd_checksum, pd_flags
    p[20..24].fill(0); // pd_prune_xid
    if !(SIZE_OF_PAGE_HEADER..=BLCKSZ).contains(&pd_lower) {
        return p;
    }
    let mut lp = SIZE_OF_PAGE_HEADER;
    while lp + 4 <= pd_lower {
        let word = u32::from_le_bytes(p[lp..lp + 4].try_into().expect("4 bytes"));
        let off = (word & 0x7FFF) as usize;
        let flags = (word >> 15) & 0x3;
        let len = (word >> 17) as usize;
        if flags == LP_NORMAL && len >= SIZE_OF_HEAP_TUPLE_HEADER && off + len <= BLCKSZ {
            let at = off + T_INFOMASK_OFFSET;
            let infomask = u16_at(&p, at) & !HEAP_HINT_BITS;
            p[at..at + 2].copy_from_slice(&infomask.to_le_bytes());
        }
        lp += 4;
    }
    p
}

/// True when two versions of a heap page differ only in hint bits.
pub fn differs_only_in_hint_bits(old: &[u8], new: &[u8]) -> bool {
    old.len() == BLCKSZ
        && new.len() == BLCKSZ
        && old != new
        && mask_heap_hint_bits(old) == mask_heap_hint_bits(new)
}

/// Block `block` of file `path` (relative to the snapshot root), if whole.
pub fn read_block(root: &Path, path: &str, block: u64) -> Option<Vec<u8>> {
    let bytes = fs::read(root.join(path)).ok()?;
    let start = block as usize * BLCKSZ;
    bytes.get(start..start + BLCKSZ).map(<[u8]>::to_vec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page_with_tuple(infomask: u16) -> Vec<u8> {
        let mut p = vec![0u8; BLCKSZ];
        let off = BLCKSZ - 64;
        p[12..14].copy_from_slice(&28u16.to_le_bytes()); // pd_lower: one line pointer
        p[14..16].copy_from_slice(&(off as u16).to_le_bytes());
        p[16..18].copy_from_slice(&(BLCKSZ as u16).to_le_bytes());
        let lp = (off as u32) | (LP_NORMAL << 15) | (40 << 17);
        p[24..28].copy_from_slice(&lp.to_le_bytes());
        p[off + 20..off + 22].copy_from_slice(&infomask.to_le_bytes());
        p[off + 30] = 0xAB; // tuple data
        p
    }

    #[test]
    fn hint_bits_are_masked_and_nothing_else() {
        let a = page_with_tuple(0x0002);
        let mut b = page_with_tuple(0x0002 | 0x0100 | 0x0800);
        b[10] = 0x04; // PD_ALL_VISIBLE
        b[8] = 0x55; // checksum
        assert!(differs_only_in_hint_bits(&a, &b));
        let mut c = b.clone();
        c[BLCKSZ - 64 + 30] = 0xAC;
        assert!(!differs_only_in_hint_bits(&a, &c));
        let d = page_with_tuple(0x0002 | 0x0010); // HEAP_XMAX_LOCK_ONLY: not a hint
        assert!(!differs_only_in_hint_bits(&a, &d));
        let mut rng = Rng::new(7);
        assert!((0..100).all(|_| rng.range(3, 5) >= 3));
    }
}

// ---------------------------------------------------------------------------
// The cold-copy check, packaged for tests that take A and B themselves
// ---------------------------------------------------------------------------

use super::checker::{self, Report};
use super::{Lsn, StopMode};

/// The relation behind a relation file path, as far as the catalogs know it.
#[derive(Clone, Debug)]
pub struct RelInfo {
    pub datname: String,
    /// `regclass` text, empty when no relation has this file (an orphan).
    pub relation: String,
    /// `pg_class.relkind`, empty when unknown.
    pub relkind: String,
    /// `pg_am.amname` of the relation, empty for none.
    pub amname: String,
}

impl RelInfo {
    /// A heap (table, TOAST table or materialized view) main or init fork.
    pub fn is_heap(&self) -> bool {
        matches!(self.relkind.as_str(), "r" | "t" | "m") && self.amname == "heap"
    }
}

/// Looks up the relation a path of `ptrack_get_pagemapset()`'s form names.
pub fn relation_of(c: &Cluster, path: &str) -> RelInfo {
    let parts: Vec<&str> = path.split('/').collect();
    let file = parts.last().copied().unwrap_or_default();
    let node = checker::parse_relation_file_name(file).map_or(0, |r| r.relfilenode);
    let (spc, db) = match parts.as_slice() {
        ["base", db, _] => ("0".to_string(), Some(db.to_string())),
        ["pg_tblspc", spc, _, db, _] => (spc.to_string(), Some(db.to_string())),
        ["global", _] => ("1664".to_string(), None),
        _ => ("0".to_string(), None),
    };
    let datname = match &db {
        Some(oid) => c
            .try_psql(&format!(
                "SELECT datname FROM pg_database WHERE oid = {oid}"
            ))
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        None => "postgres".to_string(),
    };
    let mut info = RelInfo {
        datname: datname.clone(),
        relation: String::new(),
        relkind: String::new(),
        amname: String::new(),
    };
    if datname.is_empty() {
        return info;
    }
    let sql = format!(
        "SELECT r::text, c.relkind, coalesce(a.amname, '')
           FROM (SELECT pg_filenode_relation({spc}, {node}) AS r) f
           JOIN pg_class c ON c.oid = f.r
           LEFT JOIN pg_am a ON a.oid = c.relam"
    );
    if let Ok(out) = c.try_psql_db(&datname, &sql) {
        if let Some(row) = super::split_rows(&out).into_iter().next() {
            if row.len() == 3 {
                info.relation = row[0].clone();
                info.relkind = row[1].clone();
                info.amname = row[2].clone();
            }
        }
    }
    info
}

/// One line per file with missed blocks (at most `limit`), naming the relation.
pub fn describe_false_negatives(c: &Cluster, report: &Report, limit: usize) -> Vec<String> {
    report
        .files
        .iter()
        .filter(|f| !f.false_negatives.is_empty())
        .take(limit)
        .map(|f| {
            let rel = relation_of(c, &f.path);
            let whys: std::collections::BTreeSet<&str> =
                f.false_negatives.iter().map(|(_, why)| *why).collect();
            format!(
                "{}: {} of {} blocks missed ({:?}), first blocks {:?}, db {:?}, relation {:?} relkind {:?}",
                f.path,
                f.false_negatives.len(),
                f.blocks,
                whys,
                f.false_negatives.iter().take(8).map(|(b, _)| *b).collect::<Vec<_>>(),
                rel.datname,
                if rel.relation.is_empty() { "<none: orphan file>" } else { &rel.relation },
                rel.relkind
            )
        })
        .collect()
}

/// A cold copy A and the REDO LSN L of the checkpoint it was taken at.
pub struct SnapshotA {
    pub dir: PathBuf,
    pub lsn: Lsn,
}

/// Stops the server (fast) if it runs and takes snapshot A into `dir`.
pub fn take_snapshot_a(c: &mut Cluster, dir: &Path) -> SnapshotA {
    if c.is_running() {
        c.stop(StopMode::Fast);
    }
    c.snapshot(dir);
    SnapshotA {
        dir: dir.to_path_buf(),
        lsn: c.controldata_redo_lsn(),
    }
}

/// The result of [`cold_check`].
pub struct ColdCheck {
    pub report: Report,
    pub init: Lsn,
    /// REDO LSN of the clean stop snapshot B was taken at (L of a next A).
    pub b_lsn: Lsn,
}

/// Stops the server (fast), takes snapshot B into `snap_b`, starts the server
/// and compares A with B against `ptrack_get_pagemapset(L)`. Prints the
/// summary and the false negatives, asserts nothing. Leaves the server running.
pub fn cold_check(c: &mut Cluster, a: &SnapshotA, snap_b: &Path, label: &str) -> ColdCheck {
    if c.is_running() {
        c.stop(StopMode::Fast);
    }
    c.snapshot(snap_b);
    let b_lsn = c.controldata_redo_lsn();
    c.start();
    let init = c.init_lsn();
    let pagemap = c.pagemapset(a.lsn);
    let report = checker::compare(&a.dir, snap_b, &pagemap);
    eprintln!("{}", report.summary(label));
    if report.totals().false_negatives > 0 {
        eprintln!("[{label}] files with missed blocks:");
        for line in describe_false_negatives(c, &report, 30) {
            eprintln!("  {line}");
        }
    }
    ColdCheck {
        report,
        init,
        b_lsn,
    }
}
