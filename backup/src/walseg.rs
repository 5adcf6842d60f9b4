//! WAL segment arithmetic: which segment files a backup needs.

use ptrack_core::Lsn;

/// `XLByteToSeg`: the segment holding `lsn`.
pub fn segment_of(lsn: Lsn, segment_size: u64) -> u64 {
    lsn.0 / segment_size
}

/// `XLByteToPrevSeg`: the segment holding the byte just before `lsn`, i.e.
/// the last segment WAL ending at `lsn` touches.
pub fn segment_before(lsn: Lsn, segment_size: u64) -> u64 {
    lsn.0.saturating_sub(1) / segment_size
}

/// `XLogFileName`: `TTTTTTTTXXXXXXXXYYYYYYYY`.
pub fn file_name(tli: u32, segment: u64, segment_size: u64) -> String {
    let per_id = 0x1_0000_0000 / segment_size;
    format!("{tli:08X}{:08X}{:08X}", segment / per_id, segment % per_id)
}

/// The segments from the one holding `start` to the last one WAL up to
/// `stop` touches, as `pg_basebackup -X fetch` includes them.
pub fn segments_between(start: Lsn, stop: Lsn, segment_size: u64) -> std::ops::RangeInclusive<u64> {
    segment_of(start, segment_size)
        ..=segment_before(stop, segment_size).max(segment_of(start, segment_size))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB16: u64 = 16 * 1024 * 1024;

    #[test]
    fn names_like_postgresql() {
        assert_eq!(file_name(1, 2, MB16), "000000010000000000000002");
        assert_eq!(file_name(1, 0x100, MB16), "000000010000000100000000");
        assert_eq!(file_name(0x1A, 0x1FF, MB16), "0000001A00000001000000FF");
        // 1 GB segments: four per 4 GB "log id".
        assert_eq!(file_name(2, 5, 1 << 30), "000000020000000100000001");
    }

    #[test]
    fn ranges() {
        let start = Lsn(2 * MB16 + 0x28);
        assert_eq!(segments_between(start, Lsn(2 * MB16 + 0x100), MB16), 2..=2);
        // A stop exactly at a segment boundary does not need the next segment.
        assert_eq!(segments_between(start, Lsn(4 * MB16), MB16), 2..=3);
        assert_eq!(segments_between(start, Lsn(4 * MB16 + 1), MB16), 2..=4);
    }
}
