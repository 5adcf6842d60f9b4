//! Copying the listed data-directory files into a backup: whole, or for
//! relation segments of an incremental backup as `INCREMENTAL.` files.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use ptrack_core::relfile::parse_relation_file_name;

use crate::copy::{self, Written};
use crate::error::{IoContext, Result};
use crate::exclude::is_database_dir;
use crate::incremental::{incremental_name, IncrementalHeader};
use crate::manifest::ManifestWriter;
use crate::outdir;
use crate::pagemap;
use crate::parent::Parent;
use crate::plan::{self, Method, SegmentFacts};
use crate::progress::Progress;
use crate::walk::{Entry, Kind};

/// The manifest while the backup is being written; renamed at the end.
pub const MANIFEST_TMP: &str = "backup_manifest.tmp";

/// What an incremental backup copies against.
pub struct Incremental<'a> {
    pub parent: &'a Parent,
    /// `ptrack_get_pagemapset(parent start)`: path → pagemap.
    pub pagemaps: &'a HashMap<String, Vec<u8>>,
}

pub struct Geometry {
    pub block_size: u32,
    pub segment_blocks: u32,
}

/// Splits `base/5/16384.1` into `("base/5", "16384.1")`.
fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

/// Copies every entry into `output`, adding each file to the manifest.
pub fn copy_all<W: Write>(
    pgdata: &Path,
    output: &Path,
    entries: &[Entry],
    incremental: Option<&Incremental<'_>>,
    geometry: &Geometry,
    manifest: &mut ManifestWriter<W>,
) -> Result<()> {
    let mut progress = Progress::new("copying data files");
    for entry in entries {
        let dest = output.join(&entry.path);
        let Kind::File { size } = entry.kind else {
            outdir::create_dir(&dest)?;
            continue;
        };
        let source_path = pgdata.join(&entry.path);
        let Some(mut source) = copy::open_source(&source_path)? else {
            continue; // dropped since the listing: the WAL replays the drop
        };
        let metadata = source.metadata().at("stat", &source_path)?;
        let (dir, name) = split(&entry.path);
        let method = match (incremental, parse_relation_file_name(name)) {
            (Some(inc), Some(relation)) if is_database_dir(dir) => {
                let changed = inc
                    .pagemaps
                    .get(&entry.path)
                    .map(|map| pagemap::blocks(map))
                    .unwrap_or_default();
                plan::choose(
                    &SegmentFacts {
                        fork: relation.fork,
                        in_parent: inc.parent.has_file(dir, name),
                        size_before_query: size,
                        size_now: metadata.len(),
                        changed: &changed,
                    },
                    geometry.block_size,
                    geometry.segment_blocks,
                )
            }
            _ => Method::Whole,
        };
        let (manifest_path, written): (String, Written) = match method {
            Method::Whole => (
                entry.path.clone(),
                copy::copy_whole(&mut source, &source_path, &dest, &mut progress)?,
            ),
            Method::Incremental {
                truncation_block_length,
                blocks,
            } => {
                let header = IncrementalHeader {
                    truncation_block_length,
                    blocks,
                };
                let name = incremental_name(name);
                let path = if dir.is_empty() {
                    name
                } else {
                    format!("{dir}/{name}")
                };
                let written = copy::write_incremental(
                    &source,
                    &source_path,
                    &output.join(&path),
                    &header,
                    geometry.block_size,
                    &mut progress,
                )?;
                (path, written)
            }
        };
        progress.file_done();
        manifest
            .add_file(
                &manifest_path,
                written.size,
                copy::mtime_seconds(&metadata),
                written.crc32c,
            )
            .at("write", &output.join(MANIFEST_TMP))?;
    }
    progress.finish();
    Ok(())
}
