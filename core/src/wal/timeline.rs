//! Timeline history: which timeline's segment file holds a segment of the
//! WAL a server's current timeline descends from.
//!
//! `pg_wal` can hold segments of timelines that are not ancestors of the
//! server's (a copied `pg_wal`, segments restored from an archive of another
//! branch). Reading one of them as if it were history would mark the blocks of
//! changes this server never had and, worse, skip the ones it had. As
//! PostgreSQL does (`readTimeLineHistory`, `XLogFileReadAnyTLI`), the history
//! file `<TLI>.history` of the current timeline lists its ancestors and where
//! each one ended; a segment is read from the newest timeline of that list
//! that had begun by the segment's start, and from no other.

use std::fs;
use std::io::Read;
use std::path::Path;

use crate::lsn::Lsn;

/// Larger history files than this are not PostgreSQL's: it writes one line
/// per ancestor, a few dozen bytes each.
const MOST_HISTORY_BYTES: u64 = 1 << 20;

/// One timeline of a history: where it began (0 for the first) and where it
/// ended (`None` for the current one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimelineSpan {
    pub timeline: u32,
    pub begin: Lsn,
    pub end: Option<Lsn>,
}

/// The ancestry of one timeline, oldest first, the timeline itself last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineHistory {
    spans: Vec<TimelineSpan>,
}

/// A history file that does not read as PostgreSQL writes them.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid timeline history line {line}: {reason}")]
pub struct HistoryError {
    pub line: usize,
    pub reason: &'static str,
}

impl TimelineHistory {
    /// A timeline without ancestors (timeline 1, or one whose history file
    /// is missing: then only its own segments are read).
    pub fn only(timeline: u32) -> Self {
        TimelineHistory {
            spans: vec![TimelineSpan {
                timeline,
                begin: Lsn::INVALID,
                end: None,
            }],
        }
    }

    /// Parses the history file of `timeline`: lines `parentTLI switchpoint
    /// reason`, oldest first; `#` comments and blank lines are skipped.
    pub fn parse(timeline: u32, text: &str) -> Result<Self, HistoryError> {
        let mut spans: Vec<TimelineSpan> = Vec::new();
        let mut begin = Lsn::INVALID;
        for (index, line) in text.lines().enumerate() {
            let line_no = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let error = |reason| HistoryError {
                line: line_no,
                reason,
            };
            let parent: u32 = fields
                .next()
                .and_then(|f| f.parse().ok())
                .ok_or(error("no timeline number"))?;
            let end: Lsn = fields
                .next()
                .and_then(|f| f.parse().ok())
                .ok_or(error("no switch point"))?;
            if spans.last().is_some_and(|last| parent <= last.timeline) {
                return Err(error("timeline numbers must increase"));
            }
            if parent >= timeline {
                return Err(error("an ancestor's number must be below the timeline's"));
            }
            if end < begin {
                return Err(error("switch points must not go back"));
            }
            spans.push(TimelineSpan {
                timeline: parent,
                begin,
                end: Some(end),
            });
            begin = end;
        }
        spans.push(TimelineSpan {
            timeline,
            begin,
            end: None,
        });
        Ok(TimelineHistory { spans })
    }

    /// Reads `<timeline>.history` from `pg_wal`; timeline 1 has none.
    pub fn load(pg_wal: &Path, timeline: u32) -> std::io::Result<Self> {
        if timeline <= 1 {
            return Ok(Self::only(timeline));
        }
        let path = pg_wal.join(format!("{timeline:08X}.history"));
        let mut text = String::new();
        fs::File::open(&path)?
            .take(MOST_HISTORY_BYTES)
            .read_to_string(&mut text)?;
        Self::parse(timeline, &text).map_err(std::io::Error::other)
    }

    /// The timeline whose file holds segment `segment`: the newest one that
    /// had begun by the segment's start (the segment where a timeline began
    /// is read from it: it holds the old timeline's WAL up to the switch and
    /// the new one's after).
    pub fn timeline_of_segment(&self, segment: u64, segment_size: u64) -> u32 {
        self.spans
            .iter()
            .rev()
            .find(|span| segment_size == 0 || span.begin.0 / segment_size <= segment)
            .map_or(self.current(), |span| span.timeline)
    }

    pub fn current(&self) -> u32 {
        self.spans.last().map_or(1, |span| span.timeline)
    }

    pub fn spans(&self) -> &[TimelineSpan] {
        &self.spans
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB16: u64 = 16 << 20;

    #[test]
    fn parses_what_postgresql_writes() {
        let text = "1\t0/3000158\tno recovery target specified\n\n\
                    # a comment\n\
                    2\t0/5000000\tbefore 2026-12-02 12:00:00+00\n";
        let history = TimelineHistory::parse(3, text).unwrap();
        assert_eq!(
            history.spans(),
            &[
                TimelineSpan {
                    timeline: 1,
                    begin: Lsn(0),
                    end: Some(Lsn(0x3000158))
                },
                TimelineSpan {
                    timeline: 2,
                    begin: Lsn(0x3000158),
                    end: Some(Lsn(0x5000000))
                },
                TimelineSpan {
                    timeline: 3,
                    begin: Lsn(0x5000000),
                    end: None
                },
            ]
        );
    }

    #[test]
    fn segments_come_from_ancestors_only() {
        // Timeline 3 descends from 1 directly (2 is a sibling branch).
        let history = TimelineHistory::parse(3, "1\t0/3000158\treason\n").unwrap();
        assert_eq!(history.timeline_of_segment(2, MB16), 1);
        // The switch segment is read from the new timeline.
        assert_eq!(history.timeline_of_segment(3, MB16), 3);
        assert_eq!(history.timeline_of_segment(9, MB16), 3);
        for segment in 0..20 {
            assert_ne!(history.timeline_of_segment(segment, MB16), 2);
        }
    }

    #[test]
    fn malformed_histories_are_errors() {
        for (text, timeline) in [
            ("x\t0/1\tr\n", 2),
            ("1\n", 2),
            ("1\t0/5\tr\n1\t0/6\tr\n", 3),
            ("2\t0/5\tr\n1\t0/6\tr\n", 3),
            ("1\t0/9\tr\n2\t0/5\tr\n", 3),
            ("3\t0/9\tr\n", 3),
        ] {
            assert!(
                TimelineHistory::parse(timeline, text).is_err(),
                "{text:?} for timeline {timeline}"
            );
        }
    }

    #[test]
    fn timeline_one_needs_no_file() {
        let none = Path::new("/nonexistent-ptrack-dir");
        assert_eq!(
            TimelineHistory::load(none, 1).unwrap(),
            TimelineHistory::only(1)
        );
        assert!(TimelineHistory::load(none, 2).is_err());
    }
}
