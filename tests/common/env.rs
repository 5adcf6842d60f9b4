//! The environment the tests run in: the PostgreSQL installation under test
//! (`PTRACK_PG_PREFIX`), the tracking mode (`PTRACK_TEST_MODE`), and the OS
//! user the server runs as (`postgres` when the tests run as root).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

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

/// The uid the server runs as (ours when we are not root).
pub fn server_uid() -> u32 {
    match server_owner() {
        Some((uid, _)) => uid,
        // SAFETY: getuid has no preconditions and cannot fail.
        None => unsafe { libc::getuid() },
    }
}

/// Mode (permission bits) and owner uid of a file.
pub fn mode_and_owner(path: &Path) -> Option<(u32, u32)> {
    let meta = fs::metadata(path).ok()?;
    Some((meta.permissions().mode() & 0o7777, meta.uid()))
}

pub(super) fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub(super) fn runuser() -> &'static str {
    ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("runuser")
}

/// Panics with the program's output unless it succeeded.
pub(super) fn check_output(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        lossy(&out.stdout),
        lossy(&out.stderr)
    );
}
