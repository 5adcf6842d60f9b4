//! The data directory seen from outside the server: pg_controldata, cold
//! copies (snapshots) of PGDATA, tablespace directories.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::env::{check_output, chown_to_server, lossy};
use super::{lsn, Cluster, Lsn};

impl Cluster {
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

    pub(super) fn controldata_field(&self, key: &str) -> String {
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
