//! Writing backup files: streamed through a fixed buffer, CRC-32C computed
//! on the way for the manifest, each file synced before it counts.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ptrack_core::wal::crc32c::Crc32c;

use crate::error::{IoContext, Result};
use crate::incremental::IncrementalHeader;
use crate::progress::Progress;

const BUFFER: usize = 256 * 1024;

/// What was written: for the manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    pub size: u64,
    pub crc32c: u32,
}

/// A new backup file being written.
pub struct Sink {
    file: File,
    path: PathBuf,
    crc: Crc32c,
    size: u64,
}

impl Sink {
    /// Creates `path`, which must not exist, mode 0600 as PostgreSQL's files.
    pub fn create(path: &Path) -> Result<Sink> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .at("create", path)?;
        Ok(Sink {
            file,
            path: path.to_owned(),
            crc: Crc32c::new(),
            size: 0,
        })
    }

    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.file.write_all(bytes).at("write", &self.path)?;
        self.crc.update(bytes);
        self.size += bytes.len() as u64;
        Ok(())
    }

    pub fn finish(self) -> Result<Written> {
        self.file.sync_all().at("sync", &self.path)?;
        Ok(Written {
            size: self.size,
            crc32c: self.crc.finish(),
        })
    }
}

/// Opens a source file; `None` if it is gone (dropped since it was listed).
pub fn open_source(path: &Path) -> Result<Option<File>> {
    match File::open(path) {
        Ok(file) => Ok(Some(file)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).at("open", path),
    }
}

/// Copies `source` (opened from `source_path`) to the new file `dest`: as many
/// bytes as it had when opened, fewer if it shrinks meanwhile (a concurrent
/// truncation, which the backup's WAL replays).
pub fn copy_whole(
    source: &mut File,
    source_path: &Path,
    dest: &Path,
    progress: &mut Progress,
) -> Result<Written> {
    let length = source.metadata().at("stat", source_path)?.len();
    let mut sink = Sink::create(dest)?;
    let mut buffer = vec![0u8; BUFFER];
    let mut reader = source.take(length);
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error).at("read", source_path),
        };
        sink.write(&buffer[..n])?;
        progress.add_bytes(n as u64);
    }
    sink.finish()
}

/// Reads block `block` of `source` into `buffer`; bytes past the end of the
/// file (truncated meanwhile) are zeros, as `pg_basebackup` pads them.
pub fn read_block(source: &File, source_path: &Path, offset: u64, buffer: &mut [u8]) -> Result<()> {
    let mut done = 0;
    while done < buffer.len() {
        match source.read_at(&mut buffer[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error).at("read", source_path),
        }
    }
    buffer[done..].fill(0);
    Ok(())
}

/// Writes the incremental file `dest`: `header`, then its blocks read from
/// `source`.
pub fn write_incremental(
    source: &File,
    source_path: &Path,
    dest: &Path,
    header: &IncrementalHeader,
    block_size: u32,
    progress: &mut Progress,
) -> Result<Written> {
    let mut sink = Sink::create(dest)?;
    sink.write(&header.encode(block_size))?;
    let mut buffer = vec![0u8; block_size as usize];
    for &block in &header.blocks {
        read_block(
            source,
            source_path,
            u64::from(block) * u64::from(block_size),
            &mut buffer,
        )?;
        sink.write(&buffer)?;
        progress.add_bytes(u64::from(block_size));
    }
    sink.finish()
}

/// Writes a small file the tool made itself (`backup_label`, …).
pub fn write_new_file(dest: &Path, bytes: &[u8]) -> Result<Written> {
    let mut sink = Sink::create(dest)?;
    sink.write(bytes)?;
    sink.finish()
}

/// Seconds since the epoch of a file's modification time (0 if unknown).
pub fn mtime_seconds(metadata: &std::fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    metadata.mtime()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ptrack_core::wal::crc32c::crc32c;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ptrack-backup-copy-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn whole_and_incremental_copies() {
        let dir = temp_dir("files");
        let source_path = dir.join("16384");
        let mut data = Vec::new();
        for block in 0..4u8 {
            data.extend(std::iter::repeat_n(block + 1, 8192));
        }
        std::fs::write(&source_path, &data).unwrap();
        let mut progress = Progress::new("test");

        let mut source = File::open(&source_path).unwrap();
        let written =
            copy_whole(&mut source, &source_path, &dir.join("copy"), &mut progress).unwrap();
        assert_eq!(
            written,
            Written {
                size: data.len() as u64,
                crc32c: crc32c(&data)
            }
        );
        assert_eq!(std::fs::read(dir.join("copy")).unwrap(), data);

        // Block 5 is past the end: zeros.
        let header = IncrementalHeader {
            truncation_block_length: 4,
            blocks: vec![1, 3, 5],
        };
        let dest = dir.join("INCREMENTAL.16384");
        let written =
            write_incremental(&source, &source_path, &dest, &header, 8192, &mut progress).unwrap();
        let bytes = std::fs::read(&dest).unwrap();
        assert_eq!(written.size, bytes.len() as u64);
        assert_eq!(written.crc32c, crc32c(&bytes));
        assert_eq!(bytes.len() as u64, header.file_len(8192));
        assert_eq!(&bytes[8192..16384], &data[8192..16384]);
        assert_eq!(&bytes[16384..24576], &data[3 * 8192..]);
        assert!(bytes[24576..].iter().all(|&b| b == 0));

        // An existing destination is never overwritten.
        assert!(write_new_file(&dest, b"x").is_err());
        assert!(open_source(&dir.join("gone")).unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
