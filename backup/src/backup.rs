//! `ptrack-backup backup`: one FULL or incremental backup of a local server,
//! following pg_probackup's protocol over SQL:
//!
//! 1. a temporary physical slot with `immediately_reserve`, so the WAL from
//!    before the start stays until the tool has copied it;
//! 2. `pg_backup_start(label, fast => true)`;
//! 3. for an incremental: refuse if `ptrack_init_lsn()` is past the parent's
//!    start (ptrack's map does not reach back that far);
//! 4. list the data directory, with sizes (see `plan` for why before 5);
//! 5. for an incremental: `ptrack_get_pagemapset(parent start)`;
//! 6. copy the files (changed blocks only, for relation segments of an
//!    incremental), `global/pg_control` last;
//! 7. `pg_backup_stop(wait_for_archive => false)`: write `backup_label`
//!    (plus the incremental lines) and `tablespace_map`;
//! 8. copy the WAL from the start to the stop segment into `pg_wal/`;
//! 9. finish `backup_manifest`.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::BufWriter;
use std::path::Path;

use crate::cli::BackupOptions;
use crate::copy;
use crate::error::{Error, IoContext, Result};
use crate::files::{self, Geometry, Incremental, MANIFEST_TMP};
use crate::label;
use crate::manifest::ManifestWriter;
use crate::outdir;
use crate::parent::Parent;
use crate::server::{Facts, Server};
use crate::wal::{self, WalRange};
use crate::walk;

/// The server must be a 15+ primary (`pg_backup_start`; a standby neither
/// switches WAL segments at the stop nor reports a flush position) and its
/// data directory the one the files are read from.
fn check_server(facts: &Facts, pgdata: &Path) -> Result<()> {
    if facts.major < 15 {
        return Err(Error::invalid(format!(
            "PostgreSQL {} is not supported: 15 or later is needed",
            facts.major
        )));
    }
    if facts.in_recovery {
        return Err(Error::invalid(
            "the server is a standby: ptrack-backup backs up a primary",
        ));
    }
    let ours = fs::canonicalize(pgdata).at("resolve", pgdata)?;
    let theirs = fs::canonicalize(&facts.data_directory).ok();
    if theirs.as_deref() != Some(ours.as_path()) {
        return Err(Error::invalid(format!(
            "--pgdata {} is not the data directory of the server connected to ({}): \
             ptrack-backup reads the files of a local server",
            pgdata.display(),
            facts.data_directory
        )));
    }
    Ok(())
}

fn check_init_lsn(server: &mut Server, parent: &Parent) -> Result<()> {
    let init = server.ptrack_init_lsn()?;
    if !init.is_valid() || init > parent.start_lsn {
        return Err(Error::invalid(format!(
            "ptrack tracks changes only since {init}, after the parent backup's start {}: \
             an incremental backup from it would miss changes; create a new FULL backup",
            parent.start_lsn
        )));
    }
    Ok(())
}

pub fn run(options: &BackupOptions) -> Result<()> {
    let output = options.output.as_path();
    let mut server = Server::connect(&options.conninfo)?;
    let facts = server.facts()?;
    check_server(&facts, &options.pgdata)?;
    let parent = match &options.incremental_from {
        Some(dir) => {
            if !server.has_ptrack()? {
                return Err(Error::invalid(
                    "an incremental backup needs the ptrack extension: CREATE EXTENSION ptrack in the database connected to",
                ));
            }
            Some(Parent::open(dir, facts.system_identifier)?)
        }
        None => None,
    };
    outdir::create_output(output)?;

    server.create_temporary_slot(&format!("ptrack_backup_{}", std::process::id()))?;
    let kind = match &parent {
        Some(p) => format!("incremental from {}", p.start_lsn),
        None => "FULL".to_owned(),
    };
    let start = server.backup_start(&format!("ptrack-backup {kind}"))?;
    eprintln!("ptrack-backup: {kind} backup started at {start}");
    if let Some(parent) = &parent {
        check_init_lsn(&mut server, parent)?;
    }
    let entries = walk::list(&options.pgdata)?;
    let pagemaps = match &parent {
        Some(parent) => server.pagemapset(parent.start_lsn)?,
        None => HashMap::new(),
    };

    let manifest_tmp = output.join(MANIFEST_TMP);
    let manifest_file = File::create(&manifest_tmp).at("create", &manifest_tmp)?;
    let mut manifest = ManifestWriter::new(BufWriter::new(manifest_file), facts.system_identifier)
        .at("write", &manifest_tmp)?;
    let incremental = parent.as_ref().map(|parent| Incremental {
        parent,
        pagemaps: &pagemaps,
    });
    let geometry = Geometry {
        block_size: facts.block_size,
        segment_blocks: facts.segment_blocks,
    };
    files::copy_all(
        &options.pgdata,
        output,
        &entries,
        incremental.as_ref(),
        &geometry,
        &mut manifest,
    )?;

    let stop = server.backup_stop()?;
    let stop_label = label::parse(&stop.label)
        .map_err(|e| Error::Server(format!("pg_backup_stop's label: {e}")))?;
    let label_text = match &parent {
        Some(p) => label::with_incremental(&stop.label, p.start_lsn, p.start_tli),
        None => stop.label.clone(),
    };
    let mut small_files = vec![("backup_label", label_text)];
    if !stop.tablespace_map.is_empty() {
        small_files.push(("tablespace_map", stop.tablespace_map.clone()));
    }
    for (name, text) in small_files {
        let path = output.join(name);
        let written = copy::write_new_file(&path, text.as_bytes())?;
        let mtime = fs::metadata(&path)
            .map(|m| copy::mtime_seconds(&m))
            .unwrap_or(0);
        manifest
            .add_file(name, written.size, mtime, written.crc32c)
            .at("write", &manifest_tmp)?;
    }

    let range = WalRange {
        tli: stop_label.start_tli,
        start,
        stop: stop.lsn,
        segment_size: facts.wal_segment_size,
    };
    wal::fetch(&mut server, &options.pgdata, output, &range, facts.major)?;

    let writer = manifest
        .finish(range.tli, start, stop.lsn)
        .at("write", &manifest_tmp)?;
    let file = writer
        .into_inner()
        .map_err(|e| e.into_error())
        .at("write", &manifest_tmp)?;
    file.sync_all().at("sync", &manifest_tmp)?;
    fs::rename(&manifest_tmp, output.join("backup_manifest")).at("rename", &manifest_tmp)?;
    outdir::sync_dir(output)?;
    eprintln!(
        "ptrack-backup: {kind} backup complete in {}: WAL {start} to {}",
        output.display(),
        stop.lsn
    );
    Ok(())
}
