//! Listing the data directory for a backup: what is copied, with each
//! file's size at listing time (the size an incremental backup's
//! `truncation_block_length` comes from, see `plan`).

use std::fs;
use std::io;
use std::path::Path;

use crate::error::{Error, IoContext, Result};
use crate::exclude::{self, Decision};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File { size: u64 },
}

/// One directory or file, `path` relative to PGDATA with `/` separators.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub kind: Kind,
}

const CONTROL_FILE: &str = "global/pg_control";

/// Every directory and file to back up, parents before children, with
/// `global/pg_control` last (as `pg_basebackup` sends it last).
pub fn list(pgdata: &Path) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    walk(pgdata, "", &mut entries)?;
    if let Some(index) = entries.iter().position(|e| e.path == CONTROL_FILE) {
        let control = entries.remove(index);
        entries.push(control);
    } else {
        return Err(Error::invalid(format!(
            "{} has no {CONTROL_FILE}: not a data directory",
            pgdata.display()
        )));
    }
    Ok(entries)
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}/{name}")
    }
}

fn walk(pgdata: &Path, relative: &str, out: &mut Vec<Entry>) -> Result<()> {
    let dir = pgdata.join(relative);
    let mut names = Vec::new();
    match fs::read_dir(&dir) {
        Ok(iter) => {
            for entry in iter {
                let entry = entry.at("list", &dir)?;
                let name = entry.file_name().into_string().map_err(|name| {
                    Error::invalid(format!(
                        "file name {name:?} in {} is not UTF-8",
                        dir.display()
                    ))
                })?;
                names.push(name);
            }
        }
        // A database dropped during the walk.
        Err(error) if error.kind() == io::ErrorKind::NotFound && !relative.is_empty() => {
            return Ok(())
        }
        Err(error) => return Err(error).at("list", &dir),
    }
    names.sort_unstable();
    let database_dir = exclude::is_database_dir(relative);
    for name in &names {
        let path = join(relative, name);
        let full = pgdata.join(&path);
        let metadata = match fs::symlink_metadata(&full) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error).at("stat", &full),
        };
        let file_type = metadata.file_type();
        if file_type.is_symlink() {
            if relative == "pg_tblspc" {
                return Err(Error::invalid(format!(
                    "tablespace {path} is a symbolic link to a directory outside the data directory: \
                     such tablespaces are not supported yet (in-place tablespaces are)"
                )));
            }
            if relative.is_empty() && name == "pg_wal" {
                out.push(Entry {
                    path,
                    kind: Kind::Dir,
                });
                continue;
            }
            eprintln!("ptrack-backup: skipping symbolic link {}", full.display());
            continue;
        }
        match exclude::decide(relative, name, file_type.is_dir()) {
            Decision::Skip => continue,
            Decision::EmptyDir => {
                out.push(Entry {
                    path,
                    kind: Kind::Dir,
                });
                continue;
            }
            Decision::Include => {}
        }
        if file_type.is_dir() {
            out.push(Entry {
                path: path.clone(),
                kind: Kind::Dir,
            });
            walk(pgdata, &path, out)?;
        } else if file_type.is_file() {
            // An unlogged relation's data forks are not backed up, only its
            // init fork (the restore resets the relation from it).
            if database_dir {
                if let Some(init) = exclude::init_fork_name(name) {
                    if names.binary_search(&init).is_ok() {
                        continue;
                    }
                }
            }
            out.push(Entry {
                path,
                kind: Kind::File {
                    size: metadata.len(),
                },
            });
        } else {
            eprintln!("ptrack-backup: skipping special file {}", full.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_what_a_backup_copies() {
        let root = std::env::temp_dir().join(format!("ptrack-backup-walk-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for dir in [
            "global",
            "base/5",
            "pg_wal/archive_status",
            "pg_replslot/slot",
            "pg_xact",
        ] {
            fs::create_dir_all(root.join(dir)).unwrap();
        }
        for (file, size) in [
            ("PG_VERSION", 3),
            ("postmaster.pid", 10),
            ("global/pg_control", 8192),
            ("global/1262", 8192),
            ("global/ptrack.map", 100),
            ("base/5/16384", 16384),
            ("base/5/16390", 8192),
            ("base/5/16390_init", 8192),
            ("base/5/t3_16400", 8192),
            ("base/5/pg_internal.init", 5),
            ("pg_wal/000000010000000000000001", 16),
            ("pg_replslot/slot/state", 1),
            ("pg_xact/0000", 4),
        ] {
            fs::write(root.join(file), vec![0u8; size]).unwrap();
        }
        let entries = list(&root).unwrap();
        let listed: Vec<(&str, Option<u64>)> = entries
            .iter()
            .map(|e| {
                (
                    e.path.as_str(),
                    match e.kind {
                        Kind::Dir => None,
                        Kind::File { size } => Some(size),
                    },
                )
            })
            .collect();
        assert_eq!(
            listed,
            vec![
                ("PG_VERSION", Some(3)),
                ("base", None),
                ("base/5", None),
                ("base/5/16384", Some(16384)),
                ("base/5/16390_init", Some(8192)),
                ("global", None),
                ("global/1262", Some(8192)),
                ("pg_replslot", None),
                ("pg_wal", None),
                ("pg_xact", None),
                ("pg_xact/0000", Some(4)),
                ("global/pg_control", Some(8192)),
            ]
        );
        fs::remove_dir_all(&root).unwrap();
    }
}
