//! The backup-chain test's tools: the `ptrack-backup` binary (built on first
//! use unless `PTRACK_BACKUP_BIN` names one), PostgreSQL's `pg_verifybackup`
//! and `pg_combinebackup`, and content digests to compare clusters by.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use super::{chown_to_server, pg_install, Cluster};

/// The major version of the server under test: 15, 17, 18.
pub fn server_major() -> u32 {
    let version = &pg_install().version; // "PostgreSQL 17.11"
    version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot read a major version from {version:?}"))
}

/// `ptrack-backup`: `PTRACK_BACKUP_BIN`, or built once (release) into a
/// target directory of its own, so the build never waits for the lock of the
/// `cargo test` that runs this test.
pub fn ptrack_backup_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("PTRACK_BACKUP_BIN") {
            return PathBuf::from(bin);
        }
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"));
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace.join("target"))
            .join("ptrack-backup-tool");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "-p", "ptrack-backup", "--target-dir"])
            .arg(&target)
            .current_dir(workspace)
            .env_remove("PGRX_PG_CONFIG_PATH")
            .status()
            .expect("failed to run cargo build -p ptrack-backup");
        assert!(status.success(), "cargo build -p ptrack-backup failed");
        target.join("release/ptrack-backup")
    })
}

/// Runs `cmd`, panicking with its output if it fails; returns its stderr
/// (where the tools report).
pub fn run(what: &str, cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("failed to run {what}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

/// Like [`run`], but returns the failure's stderr instead of panicking.
pub fn try_run(what: &str, cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("failed to run {what}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        Ok(stderr)
    } else {
        Err(stderr)
    }
}

/// A client program of the installation, run as the current user.
pub fn pg_tool(prog: &str) -> Command {
    let install = pg_install();
    let mut cmd = Command::new(install.bindir.join(prog));
    cmd.env("LD_LIBRARY_PATH", install.prefix.join("lib"))
        .env("LC_ALL", "C");
    cmd
}

/// The `ptrack-backup backup` command for `cluster` into `output`.
pub fn backup_cmd(cluster: &Cluster, output: &Path, parent: Option<&Path>) -> Command {
    let mut cmd = Command::new(ptrack_backup_bin());
    cmd.arg("backup")
        .arg("--pgdata")
        .arg(&cluster.pgdata)
        .arg("--dbname")
        .arg(cluster.conninfo())
        .arg("--output")
        .arg(output);
    if let Some(parent) = parent {
        cmd.arg("--incremental-from").arg(parent);
    }
    cmd
}

/// Takes a backup; returns the tool's report.
pub fn take_backup(cluster: &Cluster, output: &Path, parent: Option<&Path>) -> String {
    run(
        "ptrack-backup backup",
        &mut backup_cmd(cluster, output, parent),
    )
}

/// `ptrack-backup restore --output output backups...`.
pub fn restore(output: &Path, backups: &[&Path]) -> String {
    let mut cmd = Command::new(ptrack_backup_bin());
    cmd.arg("restore").arg("--output").arg(output).args(backups);
    run("ptrack-backup restore", &mut cmd)
}

pub fn verifybackup(dir: &Path) -> String {
    run(
        &format!("pg_verifybackup {}", dir.display()),
        pg_tool("pg_verifybackup").arg(dir),
    )
}

pub fn combinebackup(output: &Path, backups: &[&Path]) -> String {
    run(
        "pg_combinebackup",
        pg_tool("pg_combinebackup")
            .arg("-o")
            .arg(output)
            .args(backups),
    )
}

/// Gives a directory tree to the server's OS user.
pub fn chown_tree(root: &Path) {
    chown_to_server(root);
    for entry in fs::read_dir(root).unwrap_or_else(|e| panic!("readdir {}: {e}", root.display())) {
        let path = entry.expect("readdir entry").path();
        let meta = fs::symlink_metadata(&path).expect("stat");
        if meta.is_dir() {
            chown_tree(&path);
        } else {
            chown_to_server(&path);
        }
    }
}

/// Every user table of `db` (schema public): name → row count and md5 of
/// its rows in text form, sorted.
pub fn table_digests(cluster: &Cluster, db: &str) -> BTreeMap<String, String> {
    let tables = cluster.query_rows_db(
        db,
        "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace \
         AND relkind = 'r' ORDER BY relname",
    );
    tables
        .into_iter()
        .map(|row| {
            let table = &row[0];
            let digest = cluster.psql_db(
                db,
                &format!(
                    "SELECT count(*) || ' ' || coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '-') FROM {table} t"
                ),
            );
            (table.clone(), digest.trim().to_owned())
        })
        .collect()
}

/// [`table_digests`] of every database but the templates.
pub type ClusterDigests = BTreeMap<String, BTreeMap<String, String>>;

/// The databases a client can connect to, but template0 and template1.
pub fn user_databases(cluster: &Cluster) -> Vec<String> {
    cluster
        .query_rows(
            "SELECT datname FROM pg_database WHERE datallowconn \
             AND datname NOT IN ('template0', 'template1') ORDER BY 1",
        )
        .into_iter()
        .map(|row| row[0].clone())
        .collect()
}

pub fn cluster_digests(cluster: &Cluster) -> ClusterDigests {
    user_databases(cluster)
        .into_iter()
        .map(|db| {
            let digests = table_digests(cluster, &db);
            (db, digests)
        })
        .collect()
}

/// [`user_relation_files`] of every database but the templates.
pub fn cluster_relation_files(cluster: &Cluster) -> Vec<String> {
    user_databases(cluster)
        .iter()
        .flat_map(|db| user_relation_files(cluster, db, &cluster.pgdata))
        .collect()
}

/// `pg_amcheck` of every database (amcheck installed where missing), heap
/// and B-tree indexes with `--heapallindexed`; panics on any corruption.
pub fn amcheck(cluster: &Cluster) -> String {
    cluster.tool(
        "pg_amcheck",
        &[
            "-h",
            &cluster.sockdir.display().to_string(),
            "-p",
            &cluster.port.to_string(),
            "-U",
            "postgres",
            "--all",
            "--install-missing",
            "--heapallindexed",
        ],
    )
}

/// The files of `db`'s permanent public relations (tables, indexes, TOAST),
/// relative to PGDATA, every fork and segment present under `pgdata`.
pub fn user_relation_files(cluster: &Cluster, db: &str, pgdata: &Path) -> Vec<String> {
    let bases = cluster.query_rows_db(
        db,
        "SELECT pg_relation_filepath(c.oid) FROM pg_class c \
         WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'i', 'm') \
         AND c.relpersistence = 'p' \
         UNION SELECT pg_relation_filepath(c.reltoastrelid) FROM pg_class c \
         WHERE c.relnamespace = 'public'::regnamespace AND c.reltoastrelid <> 0 \
         AND c.relpersistence = 'p' ORDER BY 1",
    );
    let mut files = Vec::new();
    for row in bases {
        let base = &row[0];
        let (dir, node) = base
            .rsplit_once('/')
            .expect("a relation path has a directory");
        let mut names: Vec<String> = fs::read_dir(pgdata.join(dir))
            .expect("list a database directory")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|name| {
                name == node
                    || name
                        .strip_prefix(node)
                        .is_some_and(|rest| rest.starts_with('_') || rest.starts_with('.'))
            })
            .collect();
        names.sort();
        files.extend(names.into_iter().map(|name| format!("{dir}/{name}")));
    }
    files
}

/// The first difference between two files, block by block, if any.
pub fn first_difference(a: &Path, b: &Path) -> Option<String> {
    let read = |p: &Path| fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    match (read(a), read(b)) {
        (Ok(x), Ok(y)) => first_block_difference(&x, &y)
            .map(|what| format!("{} and {}: {what}", a.display(), b.display())),
        (Err(e), _) | (_, Err(e)) => Some(e),
    }
}

/// The first difference between two files' contents, block by block.
pub fn first_block_difference(x: &[u8], y: &[u8]) -> Option<String> {
    if x.len() != y.len() {
        return Some(format!("{} bytes against {}", x.len(), y.len()));
    }
    x.chunks(super::BLCKSZ)
        .zip(y.chunks(super::BLCKSZ))
        .position(|(p, q)| p != q)
        .map(|block| format!("differ at block {block}"))
}
