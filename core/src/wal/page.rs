//! WAL page headers (`XLogPageHeaderData`, `XLogLongPageHeaderData`).
//!
//! Layout, little-endian: `xlp_magic` u16 @0, `xlp_info` u16 @2, `xlp_tli`
//! u32 @4, `xlp_pageaddr` u64 @8, `xlp_rem_len` u32 @16, padding to 24; the
//! long header adds `xlp_sysid` u64 @24, `xlp_seg_size` u32 @32,
//! `xlp_xlog_blcksz` u32 @36.

use super::{WalError, WalFormat};
use crate::lsn::Lsn;

/// `SizeOfXLogShortPHD`: `MAXALIGN(sizeof(XLogPageHeaderData))`.
pub const SHORT_HEADER_SIZE: u64 = 24;
/// `SizeOfXLogLongPHD`: `MAXALIGN(sizeof(XLogLongPageHeaderData))`.
pub const LONG_HEADER_SIZE: u64 = 40;

/// The page starts with the rest of a record begun on an earlier page.
pub const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
/// The page has the long header (the first page of a segment).
pub const XLP_LONG_HEADER: u16 = 0x0002;
/// Backup blocks starting on this page are optional.
pub const XLP_BKP_REMOVABLE: u16 = 0x0004;
/// The record that continued onto this page was lost in a crash; the page
/// starts afresh with an `XLOG_OVERWRITE_CONTRECORD` record.
pub const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
/// `XLP_ALL_FLAGS`.
pub const XLP_ALL_FLAGS: u16 = 0x000F;

/// The identification fields of the first page of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LongHeader {
    pub system_identifier: u64,
    pub segment_size: u32,
    pub page_size: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageHeader {
    pub magic: u16,
    pub info: u16,
    pub timeline: u32,
    pub page_address: Lsn,
    /// Bytes of a record begun on an earlier page still to come, this page's
    /// share included (0 without `XLP_FIRST_IS_CONTRECORD`).
    pub remaining_length: u32,
    pub long: Option<LongHeader>,
}

pub(crate) fn u16_at(bytes: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes([bytes[offset], bytes[offset + 1]])
}

pub(crate) fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"))
}

pub(crate) fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().expect("8 bytes"))
}

impl PageHeader {
    pub fn is_continuation(&self) -> bool {
        self.info & XLP_FIRST_IS_CONTRECORD != 0
    }

    pub fn overwrites_continuation(&self) -> bool {
        self.info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0
    }

    pub fn size(&self) -> u64 {
        if self.long.is_some() {
            LONG_HEADER_SIZE
        } else {
            SHORT_HEADER_SIZE
        }
    }

    /// Parses and checks the header of the page that should start at `page`,
    /// as `XLogReaderValidatePageHeader` does, except that it also requires
    /// the long header to be on a segment's first page *only* (the server
    /// never writes it elsewhere, and the reader relies on that to know where
    /// records continue before it reads the page).
    ///
    /// `bytes` must hold at least the long header's 40 bytes.
    pub fn parse(bytes: &[u8], page: Lsn, format: &WalFormat) -> Result<PageHeader, WalError> {
        let invalid = |reason: String| WalError::InvalidPageHeader { page, reason };
        if (bytes.len() as u64) < LONG_HEADER_SIZE {
            return Err(invalid(format!("only {} bytes", bytes.len())));
        }
        let magic = u16_at(bytes, 0);
        if magic != format.page_magic {
            return Err(invalid(format!(
                "magic number {magic:04X}, expected {:04X}",
                format.page_magic
            )));
        }
        let info = u16_at(bytes, 2);
        if info & !XLP_ALL_FLAGS != 0 {
            return Err(invalid(format!("unknown info bits {info:04X}")));
        }
        let segment_first_page = format.segment_start(page) == page;
        let long = if info & XLP_LONG_HEADER != 0 {
            if !segment_first_page {
                return Err(invalid(
                    "long header on a page that does not start a segment".into(),
                ));
            }
            let long = LongHeader {
                system_identifier: u64_at(bytes, 24),
                segment_size: u32_at(bytes, 32),
                page_size: u32_at(bytes, 36),
            };
            if u64::from(long.segment_size) != format.segment_size {
                return Err(invalid(format!(
                    "segment size {} in the header, expected {}",
                    long.segment_size, format.segment_size
                )));
            }
            if long.page_size != format.page_size {
                return Err(invalid(format!(
                    "XLOG_BLCKSZ {} in the header, expected {}",
                    long.page_size, format.page_size
                )));
            }
            Some(long)
        } else {
            if segment_first_page {
                return Err(invalid(
                    "the first page of a segment has no long header".into(),
                ));
            }
            None
        };
        let page_address = Lsn(u64_at(bytes, 8));
        if page_address != page {
            return Err(WalError::UnexpectedPageAddress {
                page,
                found: page_address,
            });
        }
        Ok(PageHeader {
            magic,
            info,
            timeline: u32_at(bytes, 4),
            page_address,
            remaining_length: u32_at(bytes, 16),
            long,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn format() -> WalFormat {
        WalFormat::for_major(17, 1 << 20).unwrap()
    }

    /// A header written field by field, independently of `parse`.
    fn header(page: u64, info: u16, long: Option<(u64, u32, u32)>) -> Vec<u8> {
        let mut bytes = vec![0u8; 8192];
        bytes[0..2].copy_from_slice(&0xD116u16.to_le_bytes());
        bytes[2..4].copy_from_slice(&info.to_le_bytes());
        bytes[4..8].copy_from_slice(&3u32.to_le_bytes());
        bytes[8..16].copy_from_slice(&page.to_le_bytes());
        bytes[16..20].copy_from_slice(&77u32.to_le_bytes());
        if let Some((sysid, seg, blck)) = long {
            bytes[24..32].copy_from_slice(&sysid.to_le_bytes());
            bytes[32..36].copy_from_slice(&seg.to_le_bytes());
            bytes[36..40].copy_from_slice(&blck.to_le_bytes());
        }
        bytes
    }

    #[test]
    fn parses_short_and_long_headers() {
        let short = header(0x10_2000, XLP_FIRST_IS_CONTRECORD, None);
        let parsed = PageHeader::parse(&short, Lsn(0x10_2000), &format()).unwrap();
        assert_eq!(parsed.timeline, 3);
        assert_eq!(parsed.remaining_length, 77);
        assert!(parsed.is_continuation());
        assert_eq!(parsed.size(), 24);

        let long = header(0x10_0000, XLP_LONG_HEADER, Some((42, 1 << 20, 8192)));
        let parsed = PageHeader::parse(&long, Lsn(0x10_0000), &format()).unwrap();
        assert_eq!(parsed.size(), 40);
        assert_eq!(parsed.long.unwrap().system_identifier, 42);
        assert!(!parsed.is_continuation());
    }

    #[test]
    fn rejects_what_postgres_rejects() {
        let f = format();
        let wrong_magic = {
            let mut bytes = header(0x2000, 0, None);
            bytes[0] ^= 1;
            bytes
        };
        let cases = [
            ("magic", wrong_magic, 0x2000),
            ("info bits", header(0x2000, 0x10, None), 0x2000),
            ("no long header", header(0x10_0000, 0, None), 0x10_0000),
            (
                "segment size",
                header(0x10_0000, XLP_LONG_HEADER, Some((1, 2 << 20, 8192))),
                0x10_0000,
            ),
            (
                "page size",
                header(0x10_0000, XLP_LONG_HEADER, Some((1, 1 << 20, 4096))),
                0x10_0000,
            ),
            (
                "long header mid-segment",
                header(0x2000, XLP_LONG_HEADER, Some((1, 1 << 20, 8192))),
                0x2000,
            ),
        ];
        for (what, bytes, page) in cases {
            assert!(
                matches!(
                    PageHeader::parse(&bytes, Lsn(page), &f),
                    Err(WalError::InvalidPageHeader { .. })
                ),
                "{what}"
            );
        }
        assert!(matches!(
            PageHeader::parse(&header(0x4000, 0, None), Lsn(0x2000), &f),
            Err(WalError::UnexpectedPageAddress {
                page: Lsn(0x2000),
                found: Lsn(0x4000)
            })
        ));
        assert!(PageHeader::parse(&[0u8; 39], Lsn(0x2000), &f).is_err());
    }
}
