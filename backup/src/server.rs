//! The SQL the tool runs, on one connection (a non-exclusive backup and a
//! temporary slot live as long as their session).

use std::collections::HashMap;

use postgres::{Client, NoTls};
use ptrack_core::Lsn;

use crate::error::{Error, Result};

pub struct Server {
    client: Client,
}

/// What the tool needs to know about the server.
#[derive(Clone, Debug)]
pub struct Facts {
    /// `server_version_num`'s major part: 15, 17, 18.
    pub major: u32,
    pub block_size: u32,
    /// RELSEG_SIZE, in blocks.
    pub segment_blocks: u32,
    pub wal_segment_size: u64,
    pub data_directory: String,
    pub system_identifier: u64,
    pub in_recovery: bool,
}

/// What `pg_backup_stop` returns.
pub struct Stop {
    pub lsn: Lsn,
    pub label: String,
    pub tablespace_map: String,
}

fn lsn(text: &str) -> Result<Lsn> {
    text.parse()
        .map_err(|_| Error::Server(format!("unexpected LSN {text:?}")))
}

impl Server {
    pub fn connect(conninfo: &str) -> Result<Server> {
        Ok(Server {
            client: Client::connect(conninfo, NoTls)?,
        })
    }

    pub fn facts(&mut self) -> Result<Facts> {
        let row = self.client.query_one(
            "SELECT current_setting('server_version_num')::int,
                    current_setting('block_size')::int,
                    (SELECT setting::int FROM pg_settings WHERE name = 'segment_size'),
                    (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'),
                    current_setting('data_directory'),
                    (SELECT system_identifier FROM pg_control_system()),
                    pg_is_in_recovery()",
            &[],
        )?;
        let version: i32 = row.get(0);
        let positive = |value: i64, what: &str| {
            u64::try_from(value)
                .ok()
                .filter(|&v| v > 0)
                .ok_or_else(|| Error::Server(format!("unexpected {what} {value}")))
        };
        Ok(Facts {
            major: (version / 10000) as u32,
            block_size: positive(row.get::<_, i32>(1).into(), "block_size")? as u32,
            segment_blocks: positive(row.get::<_, i32>(2).into(), "segment_size")? as u32,
            wal_segment_size: positive(row.get(3), "wal_segment_size")?,
            data_directory: row.get(4),
            system_identifier: row.get::<_, i64>(5) as u64,
            in_recovery: row.get(6),
        })
    }

    /// Whether the ptrack extension is created in the connected database.
    pub fn has_ptrack(&mut self) -> Result<bool> {
        Ok(!self
            .client
            .query("SELECT 1 FROM pg_extension WHERE extname = 'ptrack'", &[])?
            .is_empty())
    }

    /// A temporary physical slot reserving WAL from now on: the segments from
    /// the backup's start stay until the tool has copied them. It goes away
    /// with the session.
    pub fn create_temporary_slot(&mut self, name: &str) -> Result<()> {
        self.client.execute(
            "SELECT pg_create_physical_replication_slot($1, immediately_reserve => true, temporary => true)",
            &[&name],
        )?;
        Ok(())
    }

    /// `pg_backup_start(label, fast => true)`: an immediate checkpoint.
    pub fn backup_start(&mut self, label: &str) -> Result<Lsn> {
        let row = self
            .client
            .query_one("SELECT pg_backup_start($1, fast => true)::text", &[&label])?;
        lsn(row.get(0))
    }

    pub fn ptrack_init_lsn(&mut self) -> Result<Lsn> {
        let row = self
            .client
            .query_one("SELECT ptrack_init_lsn()::text", &[])?;
        lsn(row.get(0))
    }

    /// `ptrack_get_pagemapset(since)`: path relative to PGDATA → pagemap.
    pub fn pagemapset(&mut self, since: Lsn) -> Result<HashMap<String, Vec<u8>>> {
        let rows = self.client.query(
            "SELECT path, pagemap FROM ptrack_get_pagemapset($1::text::pg_lsn)",
            &[&since.to_string()],
        )?;
        Ok(rows
            .into_iter()
            .map(|row| (row.get::<_, String>(0), row.get::<_, Vec<u8>>(1)))
            .collect())
    }

    /// `pg_backup_stop(wait_for_archive => false)`. On a primary it ends the
    /// current WAL segment.
    pub fn backup_stop(&mut self) -> Result<Stop> {
        let row = self.client.query_one(
            "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(wait_for_archive => false)",
            &[],
        )?;
        Ok(Stop {
            lsn: lsn(row.get(0))?,
            label: row.get(1),
            tablespace_map: row.get::<_, Option<String>>(2).unwrap_or_default(),
        })
    }

    pub fn flush_lsn(&mut self) -> Result<Lsn> {
        let row = self
            .client
            .query_one("SELECT pg_current_wal_flush_lsn()::text", &[])?;
        lsn(row.get(0))
    }

    pub fn switch_wal(&mut self) -> Result<()> {
        self.client.execute("SELECT pg_switch_wal()", &[])?;
        Ok(())
    }
}
