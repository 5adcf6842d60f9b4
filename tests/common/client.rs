//! The client side: SQL through psql (`psql`, `query_rows`, `query_one`...),
//! pgbench, clients left running in the background, connection strings.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::env::{check_output, lossy};
use super::{Cluster, BLCKSZ};

impl Cluster {
    /// A client program with the connection options for this server's
    /// socket, connecting as `user`.
    fn client_cmd(&self, prog: &str, user: &str) -> Command {
        let mut cmd = self.server_cmd(prog);
        cmd.arg("-h")
            .arg(&self.sockdir)
            .args(["-p", &self.port.to_string(), "-U", user]);
        cmd
    }

    fn pgbench_cmd(&self, db: &str, args: &[&str]) -> Command {
        let mut cmd = self.client_cmd("pgbench", "postgres");
        cmd.args(args).arg(db);
        cmd
    }

    /// Runs SQL (possibly several statements, each in its own implicit
    /// transaction) in database `db` as `user`. Output is unaligned, tuples
    /// only, fields separated by `|`. Err carries psql's stderr.
    pub fn try_psql_as(&self, db: &str, user: &str, sql: &str) -> Result<String, String> {
        assert!(self.running, "cluster {} is not running", self.name);
        let mut child = self
            .client_cmd("psql", user)
            .args(["-X", "-A", "-t", "-q", "-F", "|", "-v", "ON_ERROR_STOP=1"])
            .args(["-d", db, "-f", "-"])
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
            .pgbench_cmd(db, args)
            .stdin(Stdio::null())
            .output()
            .expect("failed to run pgbench");
        check_output(&format!("pgbench {}", args.join(" ")), &out);
        lossy(&out.stdout)
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

    /// A libpq connection string for this server.
    pub fn conninfo(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.sockdir.display(),
            self.port
        )
    }

    /// `psql -c SQL` in the background (database postgres).
    pub fn spawn_psql(&self, sql: &str) -> Background {
        self.spawn_psql_db("postgres", sql)
    }

    pub fn spawn_psql_db(&self, db: &str, sql: &str) -> Background {
        let mut psql = self.client_cmd("psql", "postgres");
        psql.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql]);
        self.spawn(format!("psql -c {sql:?}"), psql)
    }

    /// pgbench in the background.
    pub fn spawn_pgbench(&self, db: &str, args: &[&str]) -> Background {
        let pgbench = self.pgbench_cmd(db, args);
        self.spawn(format!("pgbench {}", args.join(" ")), pgbench)
    }

    fn spawn(&self, what: String, mut cmd: Command) -> Background {
        assert!(self.running, "cluster {} is not running", self.name);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("failed to spawn {what}: {e}"));
        Background { what, child }
    }

    /// One `psql -c 'SELECT 1'` (SQL in the arguments: `try_psql` writes it to
    /// psql's stdin, which fails with EPIPE when psql exits at once because the
    /// server is still down).
    pub fn accepts_connections(&self) -> bool {
        self.client_cmd("psql", "postgres")
            .args(["-X", "-q", "-d", "postgres", "-c", "SELECT 1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

/// Splits psql's unaligned output into rows of fields.
pub fn split_rows(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('|').map(str::to_string).collect())
        .collect()
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
