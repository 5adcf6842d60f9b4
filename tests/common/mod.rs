//! Test harness shared by the integration tests (and included by the programs
//! in examples/): throw-away PostgreSQL clusters with ptrack preloaded, the
//! programs that drive them, cold copies and the checker that compares them,
//! fault injection, and a decoded form of `ptrack_get_pagemapset()`.
//!
//! Every test needs `PTRACK_PG_PREFIX`: the install prefix of a PostgreSQL built
//! with the project's core patch, with the extension installed into it.
//!
//! One file a concern; the `Cluster` methods live with their concern:
//! - `env`: the installation, the tracking mode, the server's OS user;
//! - `cluster`: `Cluster` itself, initdb, server commands, start and stop;
//! - `config`: the settings file and `ALTER SYSTEM` settings with a reload;
//! - `client`: psql, pgbench, background clients;
//! - `datadir`: pg_controldata, cold copies of PGDATA, tablespace directories;
//! - `log`: the server log and ptrack's messages in it;
//! - `lsn`, `pagemap`, `mapfile`: LSNs, `ptrack_get_pagemapset()`, map files;
//! - `workload`: what the cold-copy tests run between their snapshots;
//! - `checker`: the cold-copy comparison (`checker::cold`: packaged with the
//!   snapshots; `checker::relfile`: relation file names);
//! - `faults`: crashes, killed backends, file-size limits;
//! - `heap_page`: hint bits in heap pages;
//! - `replica`: standbys and `pg_basebackup` copies;
//! - `backup`: the `ptrack-backup` tool and PostgreSQL's backup tools;
//! - `probackup_rule`: a chain of those backups restored by pg_probackup's rule;
//! - `util`: polling, a seeded RNG, JSON strings, and what the examples'
//!   command lines share (option values, the date, panic messages).

// Each test binary uses a different subset of the harness.
#![allow(dead_code)]

pub mod backup;
pub mod checker;
pub mod client;
pub mod cluster;
pub mod config;
pub mod datadir;
pub mod env;
pub mod faults;
pub mod heap_page;
pub mod log;
pub mod lsn;
pub mod mapfile;
pub mod pagemap;
pub mod probackup_rule;
pub mod replica;
pub mod util;
pub mod workload;

// The names the tests and examples/ take from `common` itself.
#[allow(unused_imports)]
pub use self::{
    client::split_rows,
    cluster::{Cluster, ClusterDirs, StopMode},
    env::{chown_to_server, pg_install, running_as_root, tracking_mode, PgInstall},
    lsn::{lsn, Lsn},
    mapfile::{live_map_path, map_file_name},
    pagemap::{parse_bytea, segment_path, PageMap, PageMapSet},
    util::json_string,
};

/// Size of a PostgreSQL block.
pub const BLCKSZ: usize = 8192;
/// Blocks per relation segment file (1 GB segments).
pub const RELSEG_BLOCKS: u64 = 131_072;
/// `ptrack.map_size` the tests configure, in MB.
pub const MAP_SIZE_MB: u64 = 16;
