//! Command-line parsing.

use std::path::PathBuf;

pub const USAGE: &str = "\
usage:
  ptrack-backup backup --pgdata DIR --dbname CONNINFO --output DIR [--incremental-from PARENT_DIR]
      a FULL backup of the local server whose data directory is DIR, or an
      incremental one from the backup in PARENT_DIR (needs ptrack)
  ptrack-backup restore --output DIR [--block-size BYTES] BACKUP...
      reconstructs a chain (the FULL first, then each incremental in order)
      into DIR; on PostgreSQL 17+ pg_combinebackup does the same";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupOptions {
    pub pgdata: PathBuf,
    pub conninfo: String,
    pub output: PathBuf,
    pub incremental_from: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreOptions {
    pub output: PathBuf,
    pub block_size: u32,
    /// Oldest first.
    pub backups: Vec<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Backup(BackupOptions),
    Restore(RestoreOptions),
    Help,
}

/// Named options (name, value) and positional arguments.
type Split = (Vec<(String, String)>, Vec<String>);

/// Splits `--name value` and `--name=value` options from positional arguments.
fn options(args: &[String], known: &[&str]) -> Result<Split, String> {
    let mut named = Vec::new();
    let mut positional = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let Some(option) = arg.strip_prefix("--") else {
            positional.push(arg.clone());
            continue;
        };
        let (name, value) = match option.split_once('=') {
            Some((name, value)) => (name.to_owned(), value.to_owned()),
            None => {
                let value = iter
                    .next()
                    .ok_or_else(|| format!("--{option} needs a value"))?;
                (option.to_owned(), value.clone())
            }
        };
        if !known.contains(&name.as_str()) {
            return Err(format!("unknown option --{name}"));
        }
        if named.iter().any(|(n, _)| *n == name) {
            return Err(format!("--{name} given twice"));
        }
        named.push((name, value));
    }
    Ok((named, positional))
}

fn take(named: &mut Vec<(String, String)>, name: &str) -> Option<String> {
    let index = named.iter().position(|(n, _)| n == name)?;
    Some(named.remove(index).1)
}

fn required(named: &mut Vec<(String, String)>, name: &str) -> Result<String, String> {
    take(named, name).ok_or_else(|| format!("--{name} is required"))
}

pub fn parse(args: &[String]) -> Result<Command, String> {
    let Some((command, rest)) = args.split_first() else {
        return Err("no command given".into());
    };
    match command.as_str() {
        "backup" => {
            let (mut named, positional) =
                options(rest, &["pgdata", "dbname", "output", "incremental-from"])?;
            if let Some(extra) = positional.first() {
                return Err(format!("unexpected argument {extra:?}"));
            }
            Ok(Command::Backup(BackupOptions {
                pgdata: required(&mut named, "pgdata")?.into(),
                conninfo: required(&mut named, "dbname")?,
                output: required(&mut named, "output")?.into(),
                incremental_from: take(&mut named, "incremental-from").map(PathBuf::from),
            }))
        }
        "restore" => {
            let (mut named, positional) = options(rest, &["output", "block-size"])?;
            if positional.is_empty() {
                return Err("restore needs the backups of the chain, the FULL first".into());
            }
            let block_size = match take(&mut named, "block-size") {
                None => 8192,
                Some(text) => match text.parse::<u32>() {
                    Ok(size) if size.is_power_of_two() && (1024..=32768).contains(&size) => size,
                    _ => return Err(format!("invalid --block-size {text:?}")),
                },
            };
            Ok(Command::Restore(RestoreOptions {
                output: required(&mut named, "output")?.into(),
                block_size,
                backups: positional.into_iter().map(PathBuf::from).collect(),
            }))
        }
        "help" | "--help" | "-h" => Ok(Command::Help),
        other => Err(format!("unknown command {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_backup() {
        assert_eq!(
            parse(&args("backup --pgdata /d --dbname=host=/tmp --output /o")),
            Ok(Command::Backup(BackupOptions {
                pgdata: "/d".into(),
                conninfo: "host=/tmp".into(),
                output: "/o".into(),
                incremental_from: None,
            }))
        );
        let Ok(Command::Backup(options)) = parse(&args(
            "backup --pgdata /d --dbname x --output /o --incremental-from /p",
        )) else {
            panic!("not parsed");
        };
        assert_eq!(options.incremental_from, Some("/p".into()));
    }

    #[test]
    fn parses_restore() {
        assert_eq!(
            parse(&args("restore --output /o /full /inc1 /inc2")),
            Ok(Command::Restore(RestoreOptions {
                output: "/o".into(),
                block_size: 8192,
                backups: vec!["/full".into(), "/inc1".into(), "/inc2".into()],
            }))
        );
        let Ok(Command::Restore(options)) =
            parse(&args("restore --block-size 16384 --output /o /f"))
        else {
            panic!("not parsed");
        };
        assert_eq!(options.block_size, 16384);
    }

    #[test]
    fn rejects_bad_arguments() {
        assert!(parse(&[]).is_err());
        assert!(parse(&args("frobnicate")).is_err());
        assert!(parse(&args("backup --pgdata /d --output /o"))
            .unwrap_err()
            .contains("--dbname"));
        assert!(parse(&args("backup --pgdata /d --dbname x --output /o extra")).is_err());
        assert!(parse(&args(
            "backup --pgdata /d --pgdata /e --dbname x --output /o"
        ))
        .is_err());
        assert!(parse(&args("backup --bogus 1")).is_err());
        assert!(parse(&args("backup --pgdata")).is_err());
        assert!(parse(&args("restore --output /o")).is_err());
        assert!(parse(&args("restore --output /o --block-size 1000 /f")).is_err());
        assert_eq!(parse(&args("--help")), Ok(Command::Help));
    }
}
