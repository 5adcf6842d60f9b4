//! `backup_label`: what the tool reads from it and the lines it adds.
//!
//! The server's `pg_backup_stop` returns the label text; an incremental backup
//! appends, as PostgreSQL 17's `build_backup_content` writes them,
//!
//! ```text
//! INCREMENTAL FROM LSN: 0/5000028
//! INCREMENTAL FROM TLI: 1
//! ```
//!
//! naming the parent backup's start. `pg_combinebackup` checks the chain with
//! them, and a 17+ server refuses to start on an incremental backup that was
//! not combined. A 15 server ignores lines after `START TIMELINE`, so this
//! tool writes them on 15 too, for its own `restore`.

use ptrack_core::Lsn;

const START_WAL: &str = "START WAL LOCATION: ";
const START_TLI: &str = "START TIMELINE: ";
const FROM_LSN: &str = "INCREMENTAL FROM LSN: ";
const FROM_TLI: &str = "INCREMENTAL FROM TLI: ";

/// The fields of a `backup_label` the tool uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupLabel {
    pub start_lsn: Lsn,
    pub start_tli: u32,
    /// The parent's start LSN and timeline, for an incremental backup.
    pub incremental_from: Option<(Lsn, u32)>,
}

fn parse_tli(text: &str, what: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(tli) if tli > 0 => Ok(tli),
        _ => Err(format!("invalid {what} {text:?}")),
    }
}

fn parse_lsn(text: &str, what: &str) -> Result<Lsn, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("invalid {what} {text:?}"))
}

/// Parses a `backup_label`, as `pg_combinebackup`'s `parse_backup_label`.
pub fn parse(text: &str) -> Result<BackupLabel, String> {
    let mut start_lsn = None;
    let mut start_tli = None;
    let mut from_lsn = None;
    let mut from_tli = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(START_WAL) {
            // "0/2000028 (file 000000010000000000000002)"
            let lsn = rest.split(' ').next().unwrap_or("");
            start_lsn = Some(parse_lsn(lsn, "START WAL LOCATION")?);
        } else if let Some(rest) = line.strip_prefix(START_TLI) {
            start_tli = Some(parse_tli(rest, "START TIMELINE")?);
        } else if let Some(rest) = line.strip_prefix(FROM_LSN) {
            from_lsn = Some(parse_lsn(rest, "INCREMENTAL FROM LSN")?);
        } else if let Some(rest) = line.strip_prefix(FROM_TLI) {
            from_tli = Some(parse_tli(rest, "INCREMENTAL FROM TLI")?);
        }
    }
    let incremental_from = match (from_lsn, from_tli) {
        (Some(lsn), Some(tli)) => Some((lsn, tli)),
        (None, None) => None,
        _ => return Err("INCREMENTAL FROM LSN and INCREMENTAL FROM TLI go together".into()),
    };
    Ok(BackupLabel {
        start_lsn: start_lsn.ok_or("no START WAL LOCATION")?,
        start_tli: start_tli.ok_or("no START TIMELINE")?,
        incremental_from,
    })
}

/// The label with the incremental lines appended.
pub fn with_incremental(label: &str, parent_lsn: Lsn, parent_tli: u32) -> String {
    let mut out = label.to_owned();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&format!("{FROM_LSN}{parent_lsn}\n{FROM_TLI}{parent_tli}\n"));
    out
}

/// The label of a reconstructed (no longer incremental) backup: the
/// incremental lines removed, as `pg_combinebackup` writes it.
pub fn without_incremental(label: &str) -> String {
    label
        .split_inclusive('\n')
        .filter(|line| !line.starts_with(FROM_LSN) && !line.starts_with(FROM_TLI))
        .collect()
}

/// Checks that labels (oldest first) form a chain: a full backup, then
/// incrementals each from the one before.
pub fn check_chain(labels: &[BackupLabel]) -> Result<(), String> {
    let Some(first) = labels.first() else {
        return Err("no backups given".into());
    };
    if first.incremental_from.is_some() {
        return Err("the first backup is incremental: the chain must start with a FULL".into());
    }
    for (index, pair) in labels.windows(2).enumerate() {
        let (parent, child) = (pair[0], pair[1]);
        let position = index + 2;
        match child.incremental_from {
            None => {
                return Err(format!(
                    "backup {position} is a FULL backup: only the first may be"
                ))
            }
            Some((lsn, tli)) if lsn != parent.start_lsn || tli != parent.start_tli => {
                return Err(format!(
                    "backup {position} is incremental from {lsn} on timeline {tli}, but backup {} starts at {} on timeline {}",
                    position - 1,
                    parent.start_lsn,
                    parent.start_tli
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LABEL: &str = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
CHECKPOINT LOCATION: 0/2000080\n\
BACKUP METHOD: streamed\n\
BACKUP FROM: primary\n\
START TIME: 2025-01-01 00:00:00 UTC\n\
LABEL: ptrack-backup\n\
START TIMELINE: 1\n";

    #[test]
    fn parses_a_full_label() {
        let label = parse(LABEL).unwrap();
        assert_eq!(label.start_lsn, Lsn(0x200_0028));
        assert_eq!(label.start_tli, 1);
        assert_eq!(label.incremental_from, None);
    }

    #[test]
    fn incremental_lines_round_trip() {
        let text = with_incremental(LABEL, Lsn(0x1_0000_0028), 3);
        assert!(text.ends_with("INCREMENTAL FROM LSN: 1/28\nINCREMENTAL FROM TLI: 3\n"));
        let label = parse(&text).unwrap();
        assert_eq!(label.incremental_from, Some((Lsn(0x1_0000_0028), 3)));
        assert_eq!(without_incremental(&text), LABEL);
        // A label without a final newline still gets separate lines.
        let text = with_incremental(LABEL.trim_end(), Lsn(1), 1);
        assert!(text.contains("START TIMELINE: 1\nINCREMENTAL FROM LSN: 0/1\n"));
    }

    #[test]
    fn rejects_incomplete_labels() {
        assert!(parse("START TIMELINE: 1\n").is_err());
        assert!(parse("START WAL LOCATION: 0/1 (file x)\n").is_err());
        assert!(parse("START WAL LOCATION: zz (file x)\nSTART TIMELINE: 1\n").is_err());
        assert!(parse("START WAL LOCATION: 0/1 (file x)\nSTART TIMELINE: 0\n").is_err());
        let half = format!("{LABEL}INCREMENTAL FROM LSN: 0/1\n");
        assert!(parse(&half).is_err());
    }

    #[test]
    fn chain_checks() {
        let full = BackupLabel {
            start_lsn: Lsn(100),
            start_tli: 1,
            incremental_from: None,
        };
        let inc1 = BackupLabel {
            start_lsn: Lsn(200),
            start_tli: 1,
            incremental_from: Some((Lsn(100), 1)),
        };
        let inc2 = BackupLabel {
            start_lsn: Lsn(300),
            start_tli: 1,
            incremental_from: Some((Lsn(200), 1)),
        };
        assert!(check_chain(&[full, inc1, inc2]).is_ok());
        assert!(check_chain(&[full]).is_ok());
        assert!(check_chain(&[]).is_err());
        assert!(check_chain(&[inc1, inc2]).is_err());
        assert!(check_chain(&[full, inc2])
            .unwrap_err()
            .contains("incremental from 0/C8"));
        assert!(check_chain(&[full, full]).is_err());
    }
}
