//! `ptrack-backup restore`: reconstructs a chain (FULL, then incrementals in
//! order) into a data directory, as `pg_combinebackup` does on 17+ — the
//! only way on 15. It walks the newest backup: every file there is written
//! (whole, or rebuilt block by block per `restore_plan`), so files the newest
//! backup does not have (dropped relations) are not in the result.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use crate::cli::RestoreOptions;
use crate::copy::{self, Sink};
use crate::error::{Error, IoContext, Result};
use crate::incremental::{incremental_name, strip_incremental, IncrementalHeader};
use crate::label::{self, BackupLabel};
use crate::outdir;
use crate::progress::Progress;
use crate::restore_plan::{self, BlockSource, FilePlan, Version};

/// The largest segment a header may describe; checked against the real
/// RELSEG_SIZE by the server when it opens the files.
const MAX_SEGMENT_BLOCKS: u32 = u32::MAX / 2;

struct Chain<'a> {
    backups: &'a [PathBuf],
    block_size: u32,
}

fn read_label(dir: &Path) -> Result<(String, BackupLabel)> {
    let path = dir.join("backup_label");
    let text = fs::read_to_string(&path).at("read", &path)?;
    let parsed =
        label::parse(&text).map_err(|e| Error::invalid(format!("{}: {e}", path.display())))?;
    Ok((text, parsed))
}

fn read_header(path: &Path, block_size: u32) -> Result<IncrementalHeader> {
    let mut file = File::open(path).at("open", path)?;
    IncrementalHeader::decode(&mut file, block_size, MAX_SEGMENT_BLOCKS)
        .map_err(|e| Error::invalid(format!("{}: {e}", path.display())))
}

impl Chain<'_> {
    /// Backup `index`'s version of `dir/name` and the path it is stored at.
    fn version(&self, index: usize, dir: &str, name: &str) -> Result<(Version, PathBuf)> {
        let base = self.backups[index].join(dir);
        let whole = base.join(name);
        if let Ok(metadata) = fs::metadata(&whole) {
            return Ok((
                Version::Whole {
                    size: metadata.len(),
                },
                whole,
            ));
        }
        let incremental = base.join(incremental_name(name));
        if incremental.is_file() {
            let header = read_header(&incremental, self.block_size)?;
            return Ok((Version::Incremental(header), incremental));
        }
        Ok((Version::Missing, whole))
    }

    /// Rebuilds `dir/name` from the newest backup's incremental file.
    fn reconstruct(
        &self,
        dir: &str,
        name: &str,
        dest: &Path,
        progress: &mut Progress,
    ) -> Result<()> {
        let mut versions = Vec::with_capacity(self.backups.len());
        let mut paths = Vec::with_capacity(self.backups.len());
        for index in 0..self.backups.len() {
            let (version, path) = self.version(index, dir, name)?;
            versions.push(version);
            paths.push(path);
        }
        let plan = restore_plan::plan(&versions, self.block_size)
            .map_err(|e| Error::invalid(format!("{dir}/{name}: {e}")))?;
        match plan {
            FilePlan::Copy { backup } => {
                let mut source = File::open(&paths[backup]).at("open", &paths[backup])?;
                copy::copy_whole(&mut source, &paths[backup], dest, progress)?;
            }
            FilePlan::Blocks(blocks) => {
                let mut open: Vec<Option<File>> = (0..paths.len()).map(|_| None).collect();
                let mut sink = Sink::create(dest)?;
                let mut buffer = vec![0u8; self.block_size as usize];
                for source in blocks {
                    match source {
                        BlockSource::Zero => buffer.fill(0),
                        BlockSource::From { backup, offset } => {
                            if open[backup].is_none() {
                                open[backup] =
                                    Some(File::open(&paths[backup]).at("open", &paths[backup])?);
                            }
                            let file = open[backup].as_ref().expect("opened above");
                            copy::read_block(file, &paths[backup], offset, &mut buffer)?;
                        }
                    }
                    sink.write(&buffer)?;
                    progress.add_bytes(buffer.len() as u64);
                }
                sink.finish()?;
            }
        }
        Ok(())
    }

    /// Writes every file of the newest backup's directory `dir` into `output`.
    fn restore_dir(&self, dir: &str, output: &Path, progress: &mut Progress) -> Result<()> {
        let newest = self.backups.last().expect("a chain is never empty");
        let source_dir = newest.join(dir);
        let mut names = Vec::new();
        for entry in fs::read_dir(&source_dir).at("list", &source_dir)? {
            let entry = entry.at("list", &source_dir)?;
            let name = entry.file_name().into_string().map_err(|name| {
                Error::invalid(format!(
                    "file name {name:?} in {} is not UTF-8",
                    source_dir.display()
                ))
            })?;
            names.push((name, entry.file_type().at("stat", &entry.path())?));
        }
        names.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, file_type) in names {
            let relative = if dir.is_empty() {
                name.clone()
            } else {
                format!("{dir}/{name}")
            };
            if dir.is_empty() && (name == "backup_label" || name == "backup_manifest") {
                continue; // written below / meaningless for the result
            }
            if file_type.is_dir() {
                outdir::create_dir(&output.join(&relative))?;
                self.restore_dir(&relative, output, progress)?;
            } else if let Some(bare) = strip_incremental(&name) {
                let dest = output.join(dir).join(bare);
                self.reconstruct(dir, bare, &dest, progress)?;
                progress.file_done();
            } else if file_type.is_file() {
                let source_path = source_dir.join(&name);
                let mut source = File::open(&source_path).at("open", &source_path)?;
                copy::copy_whole(&mut source, &source_path, &output.join(&relative), progress)?;
                progress.file_done();
            } else {
                eprintln!(
                    "ptrack-backup: skipping {}: not a file or directory",
                    source_dir.join(&name).display()
                );
            }
        }
        Ok(())
    }
}

pub fn run(options: &RestoreOptions) -> Result<()> {
    let mut labels = Vec::with_capacity(options.backups.len());
    let mut newest_label = String::new();
    for dir in &options.backups {
        let (text, parsed) = read_label(dir)?;
        labels.push(parsed);
        newest_label = text;
    }
    label::check_chain(&labels).map_err(Error::invalid)?;
    outdir::create_output(&options.output)?;
    let chain = Chain {
        backups: &options.backups,
        block_size: options.block_size,
    };
    let mut progress = Progress::new("restoring");
    chain.restore_dir("", &options.output, &mut progress)?;
    progress.finish();
    copy::write_new_file(
        &options.output.join("backup_label"),
        label::without_incremental(&newest_label).as_bytes(),
    )?;
    outdir::sync_dir(&options.output)?;
    eprintln!(
        "ptrack-backup: restored {} backups into {}",
        options.backups.len(),
        options.output.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: usize = 1024;

    fn label(start: &str, from: Option<&str>) -> String {
        let mut text = format!(
            "START WAL LOCATION: {start} (file 000000010000000000000001)\nSTART TIMELINE: 1\n"
        );
        if let Some(from) = from {
            text = label::with_incremental(&text, from.parse().unwrap(), 1);
        }
        text
    }

    fn block(fill: u8) -> Vec<u8> {
        vec![fill; B]
    }

    fn incremental(t: u32, blocks: &[(u32, u8)]) -> Vec<u8> {
        let header = IncrementalHeader {
            truncation_block_length: t,
            blocks: blocks.iter().map(|&(b, _)| b).collect(),
        };
        let mut bytes = header.encode(B as u32);
        for &(_, fill) in blocks {
            bytes.extend(block(fill));
        }
        bytes
    }

    #[test]
    fn restores_a_chain_like_pg_combinebackup() {
        let root =
            std::env::temp_dir().join(format!("ptrack-backup-restore-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let (full, inc1, inc2, out) = (
            root.join("full"),
            root.join("inc1"),
            root.join("inc2"),
            root.join("out"),
        );
        for dir in [&full, &inc1, &inc2] {
            fs::create_dir_all(dir.join("base/5")).unwrap();
        }
        fs::write(full.join("backup_label"), label("0/100", None)).unwrap();
        fs::write(inc1.join("backup_label"), label("0/200", Some("0/100"))).unwrap();
        fs::write(inc2.join("backup_label"), label("0/300", Some("0/200"))).unwrap();
        // 16384: FULL 4 blocks (1,2,3,4); INC1 truncated to 2 then regrown to
        // 3 (block 2 = 7); INC2 changed block 0 (= 9).
        fs::write(
            full.join("base/5/16384"),
            [block(1), block(2), block(3), block(4)].concat(),
        )
        .unwrap();
        fs::write(
            inc1.join("base/5/INCREMENTAL.16384"),
            incremental(2, &[(2, 7)]),
        )
        .unwrap();
        fs::write(
            inc2.join("base/5/INCREMENTAL.16384"),
            incremental(3, &[(0, 9)]),
        )
        .unwrap();
        // 16390: dropped before INC2; 16395: new in INC2, whole.
        fs::write(full.join("base/5/16390"), block(5)).unwrap();
        fs::write(inc1.join("base/5/INCREMENTAL.16390"), incremental(1, &[])).unwrap();
        fs::write(inc2.join("base/5/16395"), block(6)).unwrap();
        for dir in [&full, &inc1, &inc2] {
            fs::write(dir.join("PG_VERSION"), b"17\n").unwrap();
            fs::write(dir.join("backup_manifest"), b"{}").unwrap();
        }

        let options = RestoreOptions {
            output: out.clone(),
            block_size: B as u32,
            backups: vec![full.clone(), inc1.clone(), inc2.clone()],
        };
        run(&options).unwrap();
        assert_eq!(
            fs::read(out.join("base/5/16384")).unwrap(),
            [block(9), block(2), block(7)].concat()
        );
        assert!(!out.join("base/5/16390").exists());
        assert_eq!(fs::read(out.join("base/5/16395")).unwrap(), block(6));
        assert!(!out.join("backup_manifest").exists());
        assert_eq!(
            fs::read_to_string(out.join("backup_label")).unwrap(),
            label("0/300", None)
        );

        // A chain with a gap is refused before anything is written.
        let options = RestoreOptions {
            output: root.join("out2"),
            block_size: B as u32,
            backups: vec![full, inc2],
        };
        assert!(run(&options)
            .unwrap_err()
            .to_string()
            .contains("incremental from 0/200"));
        assert!(!root.join("out2").exists());
        fs::remove_dir_all(&root).unwrap();
    }
}
