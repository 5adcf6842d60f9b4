//! Output directories: new or empty, mode 0700 as a data directory needs.

use std::fs::{self, DirBuilder, File};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use crate::error::{Error, IoContext, Result};

/// Creates `path` (and missing parents), or accepts it if it is an empty
/// directory: a backup never mixes with other files.
pub fn create_output(path: &Path) -> Result<()> {
    match fs::read_dir(path) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::invalid(format!(
                    "output directory {} exists and is not empty",
                    path.display()
                )));
            }
            Ok(())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .at("create directory", path),
        Err(error) => Err(error).at("open directory", path),
    }
}

/// Creates one directory, mode 0700.
pub fn create_dir(path: &Path) -> Result<()> {
    DirBuilder::new()
        .mode(0o700)
        .create(path)
        .at("create directory", path)
}

/// Makes a directory's entries durable.
pub fn sync_dir(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|dir| dir.sync_all())
        .at("sync directory", path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_or_empty_only() {
        let root =
            std::env::temp_dir().join(format!("ptrack-backup-outdir-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let out = root.join("a/b");
        create_output(&out).unwrap();
        create_output(&out).unwrap();
        fs::write(out.join("x"), b"x").unwrap();
        assert!(create_output(&out)
            .unwrap_err()
            .to_string()
            .contains("not empty"));
        create_dir(&out.join("d")).unwrap();
        assert!(create_dir(&out.join("d")).is_err());
        sync_dir(&out).unwrap();
        fs::remove_dir_all(&root).unwrap();
    }
}
