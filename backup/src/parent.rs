//! The parent of an incremental backup: a backup directory this tool (or
//! `pg_basebackup`) wrote.

use std::fs;
use std::path::{Path, PathBuf};

use ptrack_core::Lsn;

use crate::error::{Error, IoContext, Result};
use crate::incremental::incremental_name;
use crate::label;

pub struct Parent {
    pub dir: PathBuf,
    pub start_lsn: Lsn,
    pub start_tli: u32,
}

impl Parent {
    /// Reads the parent's `backup_label` and checks that its manifest is of
    /// the same cluster.
    pub fn open(dir: &Path, system_identifier: u64) -> Result<Parent> {
        let label_path = dir.join("backup_label");
        let text =
            fs::read_to_string(&label_path).at("read the parent's backup label", &label_path)?;
        let parsed = label::parse(&text)
            .map_err(|e| Error::invalid(format!("{}: {e}", label_path.display())))?;
        let manifest_path = dir.join("backup_manifest");
        let manifest =
            fs::read_to_string(&manifest_path).at("read the parent's manifest", &manifest_path)?;
        match manifest_system_identifier(&manifest) {
            Some(id) if id == system_identifier => {}
            Some(id) => {
                return Err(Error::invalid(format!(
                    "the parent backup {} is of another cluster (system identifier {id}, the server's is {system_identifier})",
                    dir.display()
                )))
            }
            None => {
                return Err(Error::invalid(format!(
                    "{} has no System-Identifier",
                    manifest_path.display()
                )))
            }
        }
        Ok(Parent {
            dir: dir.to_owned(),
            start_lsn: parsed.start_lsn,
            start_tli: parsed.start_tli,
        })
    }

    /// Whether the parent holds the file `dir/name` (relative to the data
    /// directory), whole or as an incremental file.
    pub fn has_file(&self, dir: &str, name: &str) -> bool {
        let base = self.dir.join(dir);
        base.join(name).is_file() || base.join(incremental_name(name)).is_file()
    }
}

/// The `"System-Identifier": N` of a manifest.
pub fn manifest_system_identifier(manifest: &str) -> Option<u64> {
    let key = "\"System-Identifier\":";
    let rest = &manifest[manifest.find(key)? + key.len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_system_identifier() {
        let manifest = "{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\"System-Identifier\": 7412345678901234567,\n\"Files\": [";
        assert_eq!(
            manifest_system_identifier(manifest),
            Some(7_412_345_678_901_234_567)
        );
        assert_eq!(manifest_system_identifier("{ \"Files\": [] }"), None);
    }
}
