//! Throw-away clusters: `Cluster` and its directories, initdb, the server
//! commands, start and stop. The other parts of the harness add methods to
//! `Cluster` in their own files (configuration, SQL, data directory, logs...).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use super::config::TEST_CONF;
use super::env::{check_output, chown_to_server, lossy, pg_install, running_as_root, runuser};
use super::mapfile::live_map_path;
use super::{tracking_mode, MAP_SIZE_MB};

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
    pub(super) settings: BTreeMap<String, String>,
    pub(super) running: bool,
}

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
    /// A cluster (not running) in `dirs`: PGDATA `<base>/data`, the server log
    /// `<base>/server.log`.
    fn in_dirs(name: &str, dirs: ClusterDirs, settings: BTreeMap<String, String>) -> Cluster {
        let ClusterDirs {
            base,
            sockdir,
            port,
        } = dirs;
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

    /// initdb (with data checksums) in a fresh directory and write the test
    /// configuration. The server is not started.
    pub fn new(name: &str) -> Cluster {
        pg_install();
        let root = std::env::var_os("PTRACK_TEST_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let mut cluster = Cluster::in_dirs(name, ClusterDirs::create(&root, name), BTreeMap::new());
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
            ("port", cluster.port.to_string()),
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

    /// A new cluster directory (base, socket directory) without a data
    /// directory, configured like `template` but with its own port and socket:
    /// the target of `pg_basebackup` or of a copy.
    pub fn empty_like(template: &Cluster, name: &str) -> Cluster {
        let root = template.base.parent().expect("cluster base has a parent");
        let dirs = ClusterDirs::create(root, name);
        let mut settings = template.settings.clone();
        settings.insert("port".into(), dirs.port.to_string());
        settings.insert(
            "unix_socket_directories".into(),
            format!("'{}'", dirs.sockdir.display()),
        );
        Cluster::in_dirs(name, dirs, settings)
    }

    /// A command for one of the installation's programs, run as the server's OS
    /// user when we are root, with a clean libpq environment.
    pub fn server_cmd(&self, prog: &str) -> Command {
        self.server_command(pg_install().bindir.join(prog))
    }

    /// Like [`Cluster::server_cmd`], for any program (`bash`...).
    pub(super) fn server_command(&self, program: impl AsRef<OsStr>) -> Command {
        let install = pg_install();
        let mut cmd = if running_as_root() {
            let mut c = Command::new(runuser());
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
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
        let mut pg_ctl = self.server_cmd("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(&self.pgdata)
            .arg("-l")
            .arg(&self.logfile)
            .args(["-w", "-t", "300", "start"]);
        self.start_with("pg_ctl start", pg_ctl)
    }

    /// Runs `cmd`, a `pg_ctl start -w` (possibly wrapped), and marks the
    /// server running when it succeeds; on failure returns its output and the
    /// log tail. `what` names the command in messages.
    pub(super) fn start_with(&mut self, what: &str, mut cmd: Command) -> Result<(), String> {
        assert!(!self.running, "cluster {} is already running", self.name);
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("failed to run {what}: {e}"));
        if !out.status.success() {
            return Err(format!(
                "{what} failed for cluster {}: {}{}\n--- server log tail ---\n{}",
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
