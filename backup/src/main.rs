//! `ptrack-backup`: FULL and incremental backups of a local PostgreSQL
//! server with ptrack, in PostgreSQL's own incremental format (so stock
//! `pg_combinebackup` and `pg_verifybackup` of 17+ accept them), and a
//! `restore` of such chains for servers without `pg_combinebackup` (15).
//!
//! The binary is a thin shell: parsing in `cli`, the backup in `backup`, the
//! restore in `restore`; the formats and rules in small modules with unit
//! tests that need no server.

mod backup;
mod cli;
mod copy;
mod error;
mod exclude;
mod files;
mod incremental;
mod label;
mod manifest;
mod outdir;
mod pagemap;
mod parent;
mod plan;
mod progress;
mod restore;
mod restore_plan;
mod server;
mod wal;
mod walk;
mod walseg;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match cli::parse(&args) {
        Ok(command) => command,
        Err(message) => {
            eprintln!("ptrack-backup: {message}\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    let result = match command {
        cli::Command::Help => {
            println!("{}", cli::USAGE);
            Ok(())
        }
        cli::Command::Backup(options) => backup::run(&options),
        cli::Command::Restore(options) => restore::run(&options),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ptrack-backup: error: {error}");
            ExitCode::FAILURE
        }
    }
}
