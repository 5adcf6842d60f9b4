//! The backup's own WAL: the segments from the start LSN's to the stop LSN's,
//! copied into its `pg_wal/` once the last one is complete, so the backup
//! restores without an archive.

use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use ptrack_core::Lsn;

use crate::copy;
use crate::error::{Error, Result};
use crate::outdir;
use crate::progress::Progress;
use crate::server::Server;
use crate::walseg;

const WAIT_LIMIT: Duration = Duration::from_secs(120);
const SWITCH_AFTER: Duration = Duration::from_secs(5);

pub struct WalRange {
    pub tli: u32,
    pub start: Lsn,
    pub stop: Lsn,
    pub segment_size: u64,
}

/// Waits until the server has flushed the WAL to the end of the stop
/// segment. `pg_backup_stop` switches segments on a primary, so this is
/// normally immediate; if not, one `pg_switch_wal()` forces it.
fn wait_for_complete_segment(server: &mut Server, range: &WalRange, last: u64) -> Result<()> {
    let needed = Lsn((last + 1) * range.segment_size);
    let started = Instant::now();
    let mut switched = false;
    loop {
        let flushed = server.flush_lsn()?;
        if flushed >= needed {
            return Ok(());
        }
        if !switched && started.elapsed() >= SWITCH_AFTER {
            server.switch_wal()?;
            switched = true;
        }
        if started.elapsed() >= WAIT_LIMIT {
            return Err(Error::Server(format!(
                "the WAL segment of the backup's stop LSN {} is still not complete after {} s (flushed to {flushed})",
                range.stop,
                WAIT_LIMIT.as_secs()
            )));
        }
        sleep(Duration::from_millis(100));
    }
}

/// Copies the range's segments (and the timeline's history file, if any)
/// from `pgdata/pg_wal` into `output/pg_wal`, creating `archive_status` (and
/// `summaries` on 17+) as `pg_basebackup` does.
pub fn fetch(
    server: &mut Server,
    pgdata: &Path,
    output: &Path,
    range: &WalRange,
    major: u32,
) -> Result<()> {
    let segments = walseg::segments_between(range.start, range.stop, range.segment_size);
    wait_for_complete_segment(server, range, *segments.end())?;
    let dest_dir = output.join("pg_wal");
    outdir::create_dir(&dest_dir.join("archive_status"))?;
    if major >= 17 {
        outdir::create_dir(&dest_dir.join("summaries"))?;
    }
    let source_dir = pgdata.join("pg_wal");
    let mut progress = Progress::new("copying WAL");
    let mut names: Vec<String> = segments
        .map(|segment| walseg::file_name(range.tli, segment, range.segment_size))
        .collect();
    if range.tli > 1 {
        names.push(format!("{:08X}.history", range.tli));
    }
    for name in names {
        let source_path = source_dir.join(&name);
        let Some(mut source) = copy::open_source(&source_path)? else {
            return Err(Error::invalid(format!(
                "WAL file {} is gone: the backup cannot be completed",
                source_path.display()
            )));
        };
        copy::copy_whole(
            &mut source,
            &source_path,
            &dest_dir.join(&name),
            &mut progress,
        )?;
        progress.file_done();
    }
    progress.finish();
    outdir::sync_dir(&dest_dir)
}
