//! Where WAL pages come from.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{WalError, WalFormat};
use crate::lsn::Lsn;
use crate::wal::timeline::TimelineHistory;

/// Where WAL pages come from.
pub trait WalSource {
    /// Fills `buf` (len == page_size) with the page starting at `page_start`
    /// (a multiple of page_size).
    fn read_page(&mut self, page_start: Lsn, buf: &mut [u8]) -> Result<(), WalError>;
}

impl<S: WalSource + ?Sized> WalSource for &mut S {
    fn read_page(&mut self, page_start: Lsn, buf: &mut [u8]) -> Result<(), WalError> {
        (**self).read_page(page_start, buf)
    }
}

/// `XLogSegmentsPerXLogId`: how many segments the middle eight hex digits of
/// a file name count before the first eight roll over. (Clamped so that a
/// nonsensical segment size yields nonsense names rather than a panic.)
fn segments_per_xlog_id(segment_size: u64) -> u64 {
    (0x1_0000_0000 / segment_size.max(1)).max(1)
}

/// `XLogFileName`: `TTTTTTTTXXXXXXXXYYYYYYYY`, the timeline, then the segment
/// number split at [`segments_per_xlog_id`].
pub fn segment_file_name(timeline: u32, segment: u64, segment_size: u64) -> String {
    let per_id = segments_per_xlog_id(segment_size);
    format!(
        "{timeline:08X}{:08X}{:08X}",
        segment / per_id,
        segment % per_id
    )
}

/// The timeline and segment number of a segment file name (24 upper-case hex
/// digits, as `IsXLogFileName`), or None for any other name.
pub fn parse_segment_file_name(name: &str, segment_size: u64) -> Option<(u32, u64)> {
    let is_upper_hex = |c: u8| c.is_ascii_digit() || (b'A'..=b'F').contains(&c);
    if name.len() != 24 || !name.bytes().all(is_upper_hex) {
        return None;
    }
    let part = |range: std::ops::Range<usize>| u32::from_str_radix(&name[range], 16).ok();
    let timeline = part(0..8)?;
    let (high, low) = (u64::from(part(8..16)?), u64::from(part(16..24)?));
    let per_id = segments_per_xlog_id(segment_size);
    if low >= per_id {
        return None;
    }
    Some((timeline, high * per_id + low))
}

struct OpenSegment {
    segment: u64,
    path: PathBuf,
    file: File,
}

/// Reads the segment files of a `pg_wal` directory.
///
/// Each segment is read from the timeline the current timeline's history
/// assigns it (see [`TimelineHistory`]): the newest ancestor that had begun
/// by the segment's start. A segment file of any other timeline — a sibling
/// branch, a copied or restored `pg_wal` — is never read, and a segment whose
/// file on that timeline is absent is missing.
///
/// The current file stays open between reads; the file is looked up again
/// when the segment or the timeline changes.
pub struct SegmentDirSource {
    pg_wal: PathBuf,
    format: WalFormat,
    history: TimelineHistory,
    open: Option<OpenSegment>,
}

impl SegmentDirSource {
    /// Reads the WAL of timeline `timeline` and its ancestors.
    pub fn new(pg_wal: PathBuf, format: WalFormat, timeline: u32) -> Self {
        let history = load_history(&pg_wal, timeline);
        SegmentDirSource {
            pg_wal,
            format,
            history,
            open: None,
        }
    }

    /// The server moved to timeline `tli` (a promotion, or a standby
    /// following one): its history file says where the WAL comes from now.
    pub fn set_max_timeline(&mut self, tli: u32) {
        if tli != self.history.current() {
            self.history = load_history(&self.pg_wal, tli);
            self.open = None;
        }
    }

    pub fn max_timeline(&self) -> u32 {
        self.history.current()
    }

    /// The file pages are being read from, if one is open.
    pub fn current_file(&self) -> Option<&Path> {
        self.open.as_ref().map(|open| open.path.as_path())
    }

    /// The name of the file holding `segment` on the timeline its history
    /// assigns it.
    fn find_file(&self, segment: u64) -> Result<Option<String>, WalError> {
        let timeline = self
            .history
            .timeline_of_segment(segment, self.format.segment_size);
        let name = segment_file_name(timeline, segment, self.format.segment_size);
        match fs::symlink_metadata(self.pg_wal.join(&name)) {
            Ok(_) => Ok(Some(name)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(WalError::Io {
                path: self.pg_wal.join(&name),
                source,
            }),
        }
    }

    fn open_segment(&mut self, segment: u64) -> Result<&OpenSegment, WalError> {
        if self
            .open
            .as_ref()
            .is_some_and(|open| open.segment == segment)
        {
            return Ok(self.open.as_ref().expect("checked above"));
        }
        self.open = None;
        let missing = WalError::SegmentMissing {
            segment_start: Lsn(segment.saturating_mul(self.format.segment_size)),
        };
        let Some(name) = self.find_file(segment)? else {
            return Err(missing);
        };
        let path = self.pg_wal.join(name);
        let file = match File::open(&path) {
            Ok(file) => file,
            // Removed by the server between the listing and the open.
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Err(missing),
            Err(source) => return Err(WalError::Io { path, source }),
        };
        Ok(self.open.insert(OpenSegment {
            segment,
            path,
            file,
        }))
    }
}

impl WalSource for SegmentDirSource {
    fn read_page(&mut self, page_start: Lsn, buf: &mut [u8]) -> Result<(), WalError> {
        if !self.format.is_usable() {
            return Err(WalError::InvalidPageHeader {
                page: page_start,
                reason: format!("unusable WAL format {:?}", self.format),
            });
        }
        let segment = self.format.segment_number(page_start);
        let offset = page_start.0 % self.format.segment_size;
        let open = self.open_segment(segment)?;
        match open.file.read_exact_at(buf, offset) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => {
                Err(WalError::ShortSegment {
                    path: open.path.clone(),
                    page: page_start,
                })
            }
            Err(source) => Err(WalError::Io {
                path: open.path.clone(),
                source,
            }),
        }
    }
}

/// The history of `timeline`; without a readable history file, the
/// timeline alone (its ancestors' segments are then missing: safe, the
/// follower starts again where the WAL is readable).
fn load_history(pg_wal: &Path, timeline: u32) -> TimelineHistory {
    TimelineHistory::load(pg_wal, timeline).unwrap_or_else(|_| TimelineHistory::only(timeline))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_follow_xlog_file_name() {
        let mb16 = 16 << 20;
        // 256 segments of 16 MB per 4 GB "xlog id".
        assert_eq!(segment_file_name(1, 1, mb16), "000000010000000000000001");
        assert_eq!(
            segment_file_name(2, 0x1FF, mb16),
            "0000000200000001000000FF"
        );
        assert_eq!(
            segment_file_name(0xA, 0x100, 1 << 30),
            "0000000A0000004000000000"
        );
        assert_eq!(
            parse_segment_file_name("0000000200000001000000FF", mb16),
            Some((2, 0x1FF))
        );
        for bad in [
            "0000000200000001000000ff",
            "000000020000000100000100", // 0x100 segments of 16 MB is the next id
            "0000000200000001000000FF.partial",
            "00000002.history",
        ] {
            assert_eq!(parse_segment_file_name(bad, mb16), None, "{bad}");
        }
    }

    struct TempDir(PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn reads_each_segment_from_the_timeline_its_history_names() {
        let dir =
            TempDir(std::env::temp_dir().join(format!("ptrack-wal-source-{}", std::process::id())));
        let _ = fs::remove_dir_all(&dir.0);
        fs::create_dir_all(&dir.0).unwrap();
        let format = WalFormat::for_major(17, 1 << 20).unwrap();
        let page = |fill: u8| vec![fill; 8192];
        // Segment 3 on timelines 1, 2 and 4; segment 4 on timeline 1 only.
        for (timeline, segment, fill) in [(1, 3, 0x11), (2, 3, 0x22), (4, 3, 0x44), (1, 4, 0x14)] {
            let name = segment_file_name(timeline, segment, 1 << 20);
            fs::write(dir.0.join(name), [page(fill), page(fill + 1)].concat()).unwrap();
        }
        // Timeline 3 branched off 2 in segment 3; 4 branched off 1 in segment 3
        // (2 and 3 are a sibling branch of 4).
        fs::write(dir.0.join("00000002.history"), "1\t0/300000\tr\n").unwrap();
        fs::write(
            dir.0.join("00000003.history"),
            "1\t0/300000\tr\n2\t0/300100\tr\n",
        )
        .unwrap();
        fs::write(dir.0.join("00000004.history"), "1\t0/300000\tr\n").unwrap();
        fs::write(dir.0.join("000000020000000000000003.partial"), page(0xEE)).unwrap();
        let mut source = SegmentDirSource::new(dir.0.clone(), format, 2);
        let mut buf = vec![0u8; 8192];
        let segment3 = 3 << 20;
        source.read_page(Lsn(segment3 + 8192), &mut buf).unwrap();
        assert_eq!(buf[0], 0x23, "timeline 2's file, its second page");
        // Timeline 2 began in segment 3: segment 4 would be timeline 2's too.
        assert!(matches!(
            source.read_page(Lsn(4 << 20), &mut buf),
            Err(WalError::SegmentMissing { .. })
        ));
        // Timeline 3 has no file of its own for segment 3: the sibling's
        // (timeline 4's) or the parent's must not stand in for it.
        source.set_max_timeline(3);
        assert!(matches!(
            source.read_page(Lsn(segment3), &mut buf),
            Err(WalError::SegmentMissing { .. })
        ));
        source.set_max_timeline(4);
        source.read_page(Lsn(segment3), &mut buf).unwrap();
        assert_eq!(buf[0], 0x44);
        assert!(source
            .current_file()
            .unwrap()
            .ends_with("000000040000000000000003"));
        // Segment 2 of timeline 4 comes from timeline 1: its file is absent.
        source.read_page(Lsn(2 << 20), &mut buf).unwrap_err();
        source.set_max_timeline(1);
        source.read_page(Lsn(segment3), &mut buf).unwrap();
        assert_eq!(buf[0], 0x11);
        assert!(matches!(
            source.read_page(Lsn(5 << 20), &mut buf),
            Err(WalError::SegmentMissing {
                segment_start: Lsn(0x50_0000)
            })
        ));
        assert!(matches!(
            source.read_page(Lsn(segment3 + 2 * 8192), &mut buf),
            Err(WalError::ShortSegment { .. })
        ));
        // The open file is dropped when its segment goes away; the next
        // segment change looks it up again.
        source.read_page(Lsn(4 << 20), &mut buf).unwrap();
        fs::remove_file(dir.0.join(segment_file_name(1, 3, 1 << 20))).unwrap();
        assert!(matches!(
            source.read_page(Lsn(segment3), &mut buf),
            Err(WalError::SegmentMissing { .. })
        ));
    }
}
