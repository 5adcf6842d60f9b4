//! Test harness shared by the integration tests: throw-away PostgreSQL clusters
//! with ptrack preloaded, psql/pgbench/pg_controldata wrappers, cold snapshots,
//! LSN helpers and a decoded form of `ptrack_get_pagemapset()`.
//!
//! Every test needs `PTRACK_PG_PREFIX`: the install prefix of a PostgreSQL built
//! with the project's core patch, with the extension installed into it.

// Each test binary uses a different subset of the harness.
#![allow(dead_code)]

pub mod backup;
pub mod checker;
pub mod faults;
pub mod replica;
pub mod workload;

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// Size of a PostgreSQL block.
pub const BLCKSZ: usize = 8192;
/// Blocks per relation segment file (1 GB segments).
pub const RELSEG_BLOCKS: u64 = 131_072;
/// `ptrack.map_size` the tests configure, in MB.
pub const MAP_SIZE_MB: u64 = 16;

// ---------------------------------------------------------------------------
// LSNs
// ---------------------------------------------------------------------------

/// A WAL position, printed and parsed the way PostgreSQL does (`16/B374D848`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl FromStr for Lsn {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (hi, lo) = s
            .split_once('/')
            .ok_or_else(|| format!("not an LSN (no '/'): {s:?}"))?;
        let hi = u32::from_str_radix(hi, 16).map_err(|e| format!("bad LSN {s:?}: {e}"))?;
        let lo = u32::from_str_radix(lo, 16).map_err(|e| format!("bad LSN {s:?}: {e}"))?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// `s` as a JSON string literal, for the result files of the soak and the
/// benchmarks.
pub fn json_string(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Parses an LSN, panicking with context on malformed input.
pub fn lsn(s: &str) -> Lsn {
    s.parse().unwrap_or_else(|e| panic!("{e}"))
}

// ---------------------------------------------------------------------------
// Environment: where PostgreSQL lives, who runs it
// ---------------------------------------------------------------------------

/// The PostgreSQL installation under test.
#[derive(Debug)]
pub struct PgInstall {
    pub prefix: PathBuf,
    pub bindir: PathBuf,
    pub pkglibdir: PathBuf,
    pub version: String,
}

/// Resolves and validates `PTRACK_PG_PREFIX` once per process. Panics (so the
/// test fails, never silently passes) when it is missing or unusable.
pub fn pg_install() -> &'static PgInstall {
    static INSTALL: OnceLock<PgInstall> = OnceLock::new();
    INSTALL.get_or_init(|| {
        let prefix = std::env::var_os("PTRACK_PG_PREFIX").unwrap_or_else(|| {
            panic!(
                "PTRACK_PG_PREFIX is not set. The integration tests need the install prefix of \
                 a PostgreSQL 17 built with the ptrack core patch and with the extension \
                 installed, e.g.\n  PREFIX=$(scripts/build-postgres.sh 17 | tail -n1)\n  \
                 scripts/install-extension.sh \"$PREFIX\"\n  PTRACK_PG_PREFIX=\"$PREFIX\" cargo test"
            )
        });
        let prefix = PathBuf::from(prefix);
        let bindir = prefix.join("bin");
        for prog in ["initdb", "pg_ctl", "postgres", "psql", "pgbench", "pg_controldata", "pg_config"] {
            assert!(
                bindir.join(prog).is_file(),
                "PTRACK_PG_PREFIX={}: {} is missing",
                prefix.display(),
                bindir.join(prog).display()
            );
        }
        let pg_config = |arg: &str| -> String {
            let out = Command::new(bindir.join("pg_config"))
                .arg(arg)
                .output()
                .expect("failed to run pg_config");
            assert!(out.status.success(), "pg_config {arg} failed: {}", lossy(&out.stderr));
            lossy(&out.stdout).trim().to_string()
        };
        let pkglibdir = PathBuf::from(pg_config("--pkglibdir"));
        let version = pg_config("--version");
        let so = pkglibdir.join("ptrack.so");
        assert!(
            so.is_file(),
            "{} does not exist: install the extension first (scripts/install-extension.sh {})",
            so.display(),
            prefix.display()
        );
        ensure_postgres_user();
        PgInstall {
            prefix,
            bindir,
            pkglibdir,
            version,
        }
    })
}

/// The tracking mode under test, from `PTRACK_TEST_MODE`: `hooks` (the
/// default, the patched server's hooks) or `wal` (the WAL follower; what an
/// unpatched server gets). Clusters are configured with `ptrack.mode` set to it.
pub fn tracking_mode() -> &'static str {
    static MODE: OnceLock<&'static str> = OnceLock::new();
    MODE.get_or_init(|| match std::env::var("PTRACK_TEST_MODE").as_deref() {
        Err(_) | Ok("") | Ok("hooks") => "hooks",
        Ok("wal") => "wal",
        Ok(other) => panic!("PTRACK_TEST_MODE={other}: expected hooks or wal"),
    })
}

/// The map file's name in `global/` in the mode under test: hook mode uses C
/// ptrack's name; WAL mode one that unpatched tools take for a temporary file.
pub fn map_file_name() -> &'static str {
    match tracking_mode() {
        "wal" => "pgsql_tmp_ptrack.map",
        _ => "ptrack.map",
    }
}

/// True when the tests run as root, so server-side programs must be started as
/// the `postgres` OS user (PostgreSQL refuses to run as root).
pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn ensure_postgres_user() {
    if !running_as_root() {
        return;
    }
    let exists = Command::new("id")
        .args(["-u", "postgres"])
        .output()
        .expect("failed to run id")
        .status
        .success();
    if !exists {
        let out = Command::new("useradd")
            .args([
                "--system",
                "--user-group",
                "--no-create-home",
                "--shell",
                "/bin/sh",
            ])
            .arg("postgres")
            .output()
            .expect("failed to run useradd");
        assert!(
            out.status.success(),
            "the tests run as root and there is no 'postgres' OS user; useradd failed: {}",
            lossy(&out.stderr)
        );
    }
}

/// uid and gid of the OS user that runs the server.
fn server_owner() -> Option<(u32, u32)> {
    static IDS: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    *IDS.get_or_init(|| {
        if !running_as_root() {
            return None;
        }
        let id = |flag: &str| -> u32 {
            let out = Command::new("id")
                .args([flag, "postgres"])
                .output()
                .expect("failed to run id");
            assert!(out.status.success(), "id {flag} postgres failed");
            lossy(&out.stdout)
                .trim()
                .parse()
                .expect("id printed a non-number")
        };
        Some((id("-u"), id("-g")))
    })
}

/// Makes `path` belong to the server's OS user (no-op when not root).
pub fn chown_to_server(path: &Path) {
    if let Some((uid, gid)) = server_owner() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn runuser() -> &'static str {
    ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("runuser")
}

// ---------------------------------------------------------------------------
// Clusters
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    Fast,
    Immediate,
}

impl StopMode {
    fn as_str(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

static CLUSTER_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A throw-away cluster in its own temporary directory:
/// `<base>/data` (PGDATA), `<base>/sock` (unix socket), `<base>/server.log`.
pub struct Cluster {
    pub name: String,
    pub base: PathBuf,
    pub pgdata: PathBuf,
    pub sockdir: PathBuf,
    pub logfile: PathBuf,
    pub port: u16,
    settings: BTreeMap<String, String>,
    running: bool,
}

/// Name of the file (inside PGDATA, included from postgresql.conf) holding the
/// test settings.
const TEST_CONF: &str = "ptrack_test.conf";

/// A cluster's own directory under the test root, its private socket
/// directory, and its port.
pub struct ClusterDirs {
    pub base: PathBuf,
    pub sockdir: PathBuf,
    pub port: u16,
}

impl ClusterDirs {
    /// Creates `<root>/ptrack-test-<pid>-<n>-<name>` (emptied if it exists)
    /// and its socket directory, owned by the server's OS user.
    pub fn create(root: &Path, name: &str) -> ClusterDirs {
        let id = CLUSTER_COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let base = root.join(format!("ptrack-test-{pid}-{id}-{name}"));
        if base.exists() {
            fs::remove_dir_all(&base)
                .unwrap_or_else(|e| panic!("removing stale {}: {e}", base.display()));
        }
        fs::create_dir_all(&base).unwrap_or_else(|e| panic!("mkdir {}: {e}", base.display()));
        fs::set_permissions(&base, fs::Permissions::from_mode(0o755))
            .expect("chmod cluster base dir");
        chown_to_server(&base);
        let sockdir = base.join("sock");
        fs::create_dir(&sockdir).expect("mkdir socket dir");
        fs::set_permissions(&sockdir, fs::Permissions::from_mode(0o700)).expect("chmod sockdir");
        chown_to_server(&sockdir);
        // listen_addresses = '' and a private socket directory: the port only
        // names the socket, but keep it unique anyway (also for SysV keys).
        let port = 20_000 + ((pid % 2_000) * 16 + id % 16) as u16;
        ClusterDirs {
            base,
            sockdir,
            port,
        }
    }
}

impl Cluster {
    /// initdb (with data checksums) in a fresh directory and write the test
    /// configuration. The server is not started.
    pub fn new(name: &str) -> Cluster {
        pg_install();
        let root = std::env::var_os("PTRACK_TEST_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let ClusterDirs {
            base,
            sockdir,
            port,
        } = ClusterDirs::create(&root, name);

        let mut cluster = Cluster {
            name: name.to_string(),
            pgdata: base.join("data"),
            logfile: base.join("server.log"),
            sockdir,
            base,
            port,
            settings: BTreeMap::new(),
            running: false,
        };
        let out = cluster
            .server_cmd("initdb")
            .arg("-D")
            .arg(&cluster.pgdata)
            .args([
                "-k",
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "-N",
            ])
            .output()
            .expect("failed to run initdb");
        check_output("initdb", &out);

        let mut conf = fs::OpenOptions::new()
            .append(true)
            .open(cluster.pgdata.join("postgresql.conf"))
            .expect("open postgresql.conf");
        writeln!(conf, "\ninclude '{TEST_CONF}'").expect("append to postgresql.conf");

        let sock = cluster.sockdir.display().to_string();
        for (k, v) in [
            ("shared_preload_libraries", "'ptrack'".to_string()),
            ("ptrack.map_size", MAP_SIZE_MB.to_string()),
            ("wal_level", "replica".to_string()),
            ("full_page_writes", "on".to_string()),
            ("fsync", "on".to_string()),
            ("listen_addresses", "''".to_string()),
            ("unix_socket_directories", format!("'{sock}'")),
            ("port", port.to_string()),
            ("max_wal_size", "'256MB'".to_string()),
            ("checkpoint_timeout", "'30s'".to_string()),
            ("logging_collector", "off".to_string()),
            ("ptrack.mode", tracking_mode().to_string()),
        ] {
            cluster.settings.insert(k.to_string(), v);
        }
        cluster.write_settings();
        cluster
    }

    /// Sets a server parameter (value written verbatim, quote strings
    /// yourself). Takes effect at the next start.
    pub fn set_conf(&mut self, key: &str, value: &str) {
        self.settings.insert(key.to_string(), value.to_string());
        self.write_settings();
    }

    fn write_settings(&self) {
        let path = self.pgdata.join(TEST_CONF);
        let body: String = self
            .settings
            .iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect();
        fs::write(&path, body).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        chown_to_server(&path);
    }

    /// A command for one of the installation's programs, run as the server's OS
    /// user when we are root, with a clean libpq environment.
    pub fn server_cmd(&self, prog: &str) -> Command {
        let install = pg_install();
        let path = install.bindir.join(prog);
        let mut cmd = if running_as_root() {
            let mut c = Command::new(runuser());
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        for var in [
            "PGDATA",
            "PGHOST",
            "PGHOSTADDR",
            "PGPORT",
            "PGUSER",
            "PGDATABASE",
            "PGPASSWORD",
            "PGSERVICE",
            "PGSERVICEFILE",
            "PGOPTIONS",
            "PGSSLMODE",
            "PGTZ",
            "PGCLIENTENCODING",
            "PSQLRC",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("LC_ALL", "C")
            .env("LANG", "C")
            .env("LD_LIBRARY_PATH", install.prefix.join("lib"))
            .current_dir(&self.base);
        cmd
    }

    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&mut self) {
        if let Err(e) = self.try_start() {
            panic!("{e}");
        }
    }

    /// Starts the server; on failure returns pg_ctl's output and the log tail.
    pub fn try_start(&mut self) -> Result<(), String> {
        assert!(!self.running, "cluster {} is already running", self.name);
        let out = self
            .server_cmd("pg_ctl")
            .arg("-D")
            .arg(&self.pgdata)
            .arg("-l")
            .arg(&self.logfile)
            .args(["-w", "-t", "300", "start"])
            .stdin(Stdio::null())
            .output()
            .expect("failed to run pg_ctl start");
        if !out.status.success() {
            return Err(format!(
                "pg_ctl start failed for cluster {}: {}{}\n--- server log tail ---\n{}",
                self.name,
                lossy(&out.stdout),
                lossy(&out.stderr),
                self.log_tail(60)
            ));
        }
        self.running = true;
        Ok(())
    }

    /// Stops the server (`fast` writes a shutdown checkpoint, `immediate`
    /// simulates a crash).
    pub fn stop(&mut self, mode: StopMode) {
        if let Err(e) = self.try_stop(mode) {
            panic!("{e}");
        }
    }

    fn try_stop(&mut self, mode: StopMode) -> Result<(), String> {
        assert!(self.running, "cluster {} is not running", self.name);
        let out = self
            .server_cmd("pg_ctl")
            .arg("-D")
            .arg(&self.pgdata)
            .args(["-m", mode.as_str(), "-w", "-t", "300", "stop"])
            .stdin(Stdio::null())
            .output()
            .expect("failed to run pg_ctl stop");
        if !out.status.success() {
            return Err(format!(
                "pg_ctl stop -m {} failed for cluster {}: {}{}",
                mode.as_str(),
                self.name,
                lossy(&out.stdout),
                lossy(&out.stderr)
            ));
        }
        self.running = false;
        Ok(())
    }

    /// Clean (fast) stop followed by a start.
    pub fn restart(&mut self) {
        self.stop(StopMode::Fast);
        self.start();
    }

    // --- SQL ---------------------------------------------------------------

    /// Runs SQL (possibly several statements, each in its own implicit
    /// transaction) in database `db` as `user`. Output is unaligned, tuples
    /// only, fields separated by `|`. Err carries psql's stderr.
    pub fn try_psql_as(&self, db: &str, user: &str, sql: &str) -> Result<String, String> {
        assert!(self.running, "cluster {} is not running", self.name);
        let mut child = self
            .server_cmd("psql")
            .args(["-X", "-A", "-t", "-q", "-F", "|", "-v", "ON_ERROR_STOP=1"])
            .arg("-h")
            .arg(&self.sockdir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                user,
                "-d",
                db,
                "-f",
                "-",
            ])
            .env("PGOPTIONS", "-c statement_timeout=600s")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("failed to spawn psql");
        {
            let mut stdin = child.stdin.take().expect("psql stdin");
            stdin.write_all(sql.as_bytes()).expect("write SQL to psql");
            stdin.write_all(b"\n").expect("write SQL to psql");
        }
        let out = child.wait_with_output().expect("failed to wait for psql");
        if out.status.success() {
            Ok(lossy(&out.stdout))
        } else {
            Err(format!(
                "psql exited with {}: {}",
                out.status,
                lossy(&out.stderr).trim()
            ))
        }
    }

    pub fn try_psql_db(&self, db: &str, sql: &str) -> Result<String, String> {
        self.try_psql_as(db, "postgres", sql)
    }

    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        self.try_psql_db("postgres", sql)
    }

    pub fn psql_db(&self, db: &str, sql: &str) -> String {
        self.try_psql_db(db, sql)
            .unwrap_or_else(|e| panic!("[{}] SQL failed in db {db}:\n{sql}\n{e}", self.name))
    }

    pub fn psql(&self, sql: &str) -> String {
        self.psql_db("postgres", sql)
    }

    pub fn query_rows_db(&self, db: &str, sql: &str) -> Vec<Vec<String>> {
        split_rows(&self.psql_db(db, sql))
    }

    pub fn query_rows(&self, sql: &str) -> Vec<Vec<String>> {
        self.query_rows_db("postgres", sql)
    }

    /// A query expected to produce exactly one value.
    pub fn query_one(&self, sql: &str) -> String {
        let rows = self.query_rows(sql);
        assert!(
            rows.len() == 1 && rows[0].len() == 1,
            "[{}] expected one value from {sql:?}, got {rows:?}",
            self.name
        );
        rows[0][0].clone()
    }

    /// Runs pgbench against database `db` (extra args first).
    pub fn pgbench(&self, db: &str, args: &[&str]) -> String {
        assert!(self.running, "cluster {} is not running", self.name);
        let out = self
            .server_cmd("pgbench")
            .arg("-h")
            .arg(&self.sockdir)
            .args(["-p", &self.port.to_string(), "-U", "postgres"])
            .args(args)
            .arg(db)
            .stdin(Stdio::null())
            .output()
            .expect("failed to run pgbench");
        check_output(&format!("pgbench {}", args.join(" ")), &out);
        lossy(&out.stdout)
    }

    // --- ptrack helpers -----------------------------------------------------

    pub fn wal_insert_lsn(&self) -> Lsn {
        lsn(&self.query_one("SELECT pg_current_wal_insert_lsn()"))
    }

    pub fn init_lsn(&self) -> Lsn {
        lsn(&self.query_one("SELECT ptrack_init_lsn()"))
    }

    /// `ptrack_get_pagemapset(start)`, decoded and checked for internal
    /// consistency (unique paths, pagecount = number of set bits).
    pub fn pagemapset(&self, start: Lsn) -> PageMapSet {
        self.pagemapset_db("postgres", start)
    }

    pub fn pagemapset_db(&self, db: &str, start: Lsn) -> PageMapSet {
        let out = self.psql_db(
            db,
            &format!("SELECT path, pagecount, pagemap FROM ptrack_get_pagemapset('{start}')"),
        );
        PageMapSet::parse(&out)
    }

    /// Path of ptrack's map file.
    /// The map file of the mode under test ([`map_file_name`]).
    pub fn map_path(&self) -> PathBuf {
        self.pgdata.join("global").join(map_file_name())
    }

    // --- files ---------------------------------------------------------------

    /// `pg_controldata` output as a key -> value map.
    pub fn controldata(&self) -> BTreeMap<String, String> {
        let out = self
            .server_cmd("pg_controldata")
            .arg("-D")
            .arg(&self.pgdata)
            .stdin(Stdio::null())
            .output()
            .expect("failed to run pg_controldata");
        check_output("pg_controldata", &out);
        lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect()
    }

    fn controldata_field(&self, key: &str) -> String {
        self.controldata()
            .remove(key)
            .unwrap_or_else(|| panic!("pg_controldata printed no {key:?}"))
    }

    /// REDO LSN of the latest checkpoint recorded in pg_control.
    pub fn controldata_redo_lsn(&self) -> Lsn {
        lsn(&self.controldata_field("Latest checkpoint's REDO location"))
    }

    pub fn system_identifier(&self) -> u64 {
        self.controldata_field("Database system identifier")
            .parse()
            .expect("system identifier is not a u64")
    }

    /// Copies PGDATA to `dest` while the server is stopped, following the
    /// pg_tblspc symlinks so that tablespace contents are copied in place.
    /// pg_wal's contents are left out: nothing compares them and they are big.
    pub fn snapshot(&self, dest: &Path) {
        assert!(
            !self.running,
            "snapshot of cluster {} taken while it runs",
            self.name
        );
        if dest.exists() {
            fs::remove_dir_all(dest).unwrap_or_else(|e| panic!("rm {}: {e}", dest.display()));
        }
        copy_tree(&self.pgdata, dest, &|rel: &Path| rel == Path::new("pg_wal"));
    }

    /// Creates a directory for a tablespace, outside PGDATA, owned by the
    /// server's OS user.
    pub fn create_tablespace_dir(&self, name: &str) -> PathBuf {
        let dir = self.base.join(format!("tblspc_{name}"));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).expect("chmod tblspc dir");
        chown_to_server(&dir);
        dir
    }

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

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running {
            if let Err(e) = self.try_stop(StopMode::Immediate) {
                eprintln!("[{}] {e}", self.name);
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "--- [{}] server log tail ({}) ---\n{}\n--- end of log ---",
                self.name,
                self.logfile.display(),
                self.log_tail(40)
            );
        }
        if std::env::var_os("PTRACK_KEEP_TEST_DIRS").is_some() {
            eprintln!("[{}] keeping {}", self.name, self.base.display());
            return;
        }
        // An immediate stop leaves the live map in tmpfs for the next start;
        // this data directory will have none.
        if let Some(live) = live_map_path(&self.pgdata) {
            let _ = fs::remove_file(live);
        }
        if let Err(e) = fs::remove_dir_all(&self.base) {
            eprintln!(
                "[{}] could not remove {}: {e}",
                self.name,
                self.base.display()
            );
        }
    }
}

/// The server's live map file for a data directory, named as the extension
/// names it: `/dev/shm/ptrack.<system identifier>.<dev>.<inode>.map`.
pub fn live_map_path(pgdata: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let control = fs::read(pgdata.join("global/pg_control")).ok()?;
    let system_identifier = u64::from_le_bytes(control.get(0..8)?.try_into().ok()?);
    let dir = fs::metadata(pgdata).ok()?;
    Some(PathBuf::from(format!(
        "/dev/shm/ptrack.{system_identifier}.{}.{}.map",
        dir.dev(),
        dir.ino()
    )))
}

fn check_output(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        lossy(&out.stdout),
        lossy(&out.stderr)
    );
}

/// Splits psql's unaligned output into rows of fields.
pub fn split_rows(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('|').map(str::to_string).collect())
        .collect()
}

/// Recursive copy that follows symlinks; `skip` gets paths relative to `src`.
fn copy_tree(src: &Path, dest: &Path, skip: &dyn Fn(&Path) -> bool) {
    fn walk(root: &Path, dir: &Path, dest_root: &Path, skip: &dyn Fn(&Path) -> bool) {
        let rel = dir.strip_prefix(root).expect("walk stays under root");
        let target = dest_root.join(rel);
        fs::create_dir_all(&target).unwrap_or_else(|e| panic!("mkdir {}: {e}", target.display()));
        let entries =
            fs::read_dir(dir).unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()));
        for entry in entries {
            let entry = entry.unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()));
            let path = entry.path();
            let rel = path.strip_prefix(root).expect("entry under root");
            if skip(rel) {
                continue;
            }
            // fs::metadata follows symlinks (pg_tblspc/<oid> -> tablespace dir).
            let meta = match fs::metadata(&path) {
                Ok(m) => m,
                // A file can vanish only if something runs; treat as fatal.
                Err(e) => panic!("stat {}: {e}", path.display()),
            };
            if meta.is_dir() {
                walk(root, &path, dest_root, skip);
            } else if meta.is_file() {
                let to = dest_root.join(rel);
                fs::copy(&path, &to)
                    .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", path.display(), to.display()));
            }
        }
    }
    walk(src, src, dest, skip);
}

// ---------------------------------------------------------------------------
// Page maps
// ---------------------------------------------------------------------------

/// One row of `ptrack_get_pagemapset()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageMap {
    pub pagecount: u64,
    pub bitmap: Vec<u8>,
}

impl PageMap {
    pub fn is_set(&self, block: u64) -> bool {
        let byte = (block / 8) as usize;
        byte < self.bitmap.len() && self.bitmap[byte] & (1 << (block % 8)) != 0
    }

    pub fn set_blocks(&self) -> Vec<u64> {
        (0..self.bitmap.len() as u64 * 8)
            .filter(|&b| self.is_set(b))
            .collect()
    }

    pub fn popcount(&self) -> u64 {
        self.bitmap.iter().map(|b| u64::from(b.count_ones())).sum()
    }
}

/// The decoded result of `ptrack_get_pagemapset()`, keyed by path.
#[derive(Clone, Debug, Default)]
pub struct PageMapSet {
    pub maps: BTreeMap<String, PageMap>,
}

impl PageMapSet {
    /// Parses `path|pagecount|\x<hex>` lines, asserting the row invariants.
    pub fn parse(psql_out: &str) -> PageMapSet {
        let mut maps = BTreeMap::new();
        for row in split_rows(psql_out) {
            assert_eq!(row.len(), 3, "bad pagemapset row {row:?}");
            let path = row[0].clone();
            let pagecount: u64 = row[1]
                .parse()
                .unwrap_or_else(|e| panic!("bad pagecount in {row:?}: {e}"));
            let bitmap = parse_bytea(&row[2]);
            let map = PageMap { pagecount, bitmap };
            assert_eq!(
                map.popcount(),
                pagecount,
                "pagecount of {path} does not match the number of bits set in its pagemap"
            );
            assert!(pagecount > 0, "row for {path} reports no page");
            assert!(
                maps.insert(path.clone(), map).is_none(),
                "pagemapset returned {path} twice"
            );
        }
        PageMapSet { maps }
    }

    pub fn get(&self, path: &str) -> Option<&PageMap> {
        self.maps.get(path)
    }

    pub fn is_set(&self, path: &str, block: u64) -> bool {
        self.maps.get(path).is_some_and(|m| m.is_set(block))
    }

    pub fn total_pages(&self) -> u64 {
        self.maps.values().map(|m| m.pagecount).sum()
    }

    pub fn len(&self) -> usize {
        self.maps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.maps.is_empty()
    }
}

/// Decodes psql's hex bytea output (`\x0a1b...`).
pub fn parse_bytea(s: &str) -> Vec<u8> {
    let hex = s
        .strip_prefix("\\x")
        .unwrap_or_else(|| panic!("bytea not in hex format: {s:?}"));
    hex.as_bytes()
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .filter(|p| p.len() == 2)
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .unwrap_or_else(|| panic!("bad bytea hex {s:?}"))
        })
        .collect()
}

/// Path of segment `seg` of a relation whose first segment is `path`.
pub fn segment_path(path: &str, seg: u64) -> String {
    if seg == 0 {
        path.to_string()
    } else {
        format!("{path}.{seg}")
    }
}
