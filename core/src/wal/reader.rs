//! Reading records one after another, as `XLogReadRecord` does.
//!
//! The reader never interprets WAL at or beyond the `limit` its caller passes
//! (the server's flush or replay position): past it a segment may still hold
//! a recycled file's stale pages, or bytes a receiving standby has not
//! written yet. It reads a page only when the page's whole header lies below
//! the limit, uses the page's bytes only up to the limit, and reads a page
//! read while the limit was inside it again once the limit has moved on.

use super::page::{u32_at, PageHeader};
use super::record::{self, DecodedRecord, RecordHeader, MAX_RECORD_SIZE, RECORD_HEADER_SIZE};
use super::{effects, max_align, rmgr, WalError, WalFormat, WalSource, MAXIMUM_ALIGNOF};
use crate::lsn::Lsn;

/// Where the next record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cursor {
    /// A record starts here; at a page start, right after the page header
    /// (where a record that ended at the page's end leaves the reader, as
    /// PostgreSQL's `EndRecPtr`).
    Record(Lsn),
    /// Not known yet: the first record starts after whatever continuation of
    /// an earlier record this page begins with.
    AfterContinuation(Lsn),
}

/// The page in `WalReader::page`.
#[derive(Clone, Copy, Debug)]
struct LoadedPage {
    start: Lsn,
    header: PageHeader,
    /// Bytes from here on were at or past the limit when the page was read.
    valid_until: Lsn,
}

/// Decodes the records of a WAL stream one after another.
pub struct WalReader<S: WalSource> {
    source: S,
    format: WalFormat,
    cursor: Cursor,
    /// Records starting before this are decoded, to find where records start,
    /// but not returned (`find_first_record_from`).
    skip_before: Lsn,
    /// The start of the last record decoded, which the next record's
    /// `xl_prev` must name. None right after positioning, where PostgreSQL
    /// only checks that `xl_prev` lies before the record (`randAccess`).
    previous_record: Option<Lsn>,
    page: Vec<u8>,
    loaded: Option<LoadedPage>,
    /// The segment whose first page (the long header) has been checked.
    checked_segment: Option<u64>,
    /// The last page read and its timeline: timelines never go backwards.
    latest_page: Option<(Lsn, u32)>,
    system_identifier: Option<u64>,
    /// The record being assembled.
    record: Vec<u8>,
    last_abandoned_record: Option<Lsn>,
}

impl<S: WalSource> WalReader<S> {
    fn new(source: S, format: WalFormat, cursor: Cursor, skip_before: Lsn) -> Self {
        let page_len = if format.is_usable() {
            format.page_size as usize
        } else {
            0
        };
        WalReader {
            source,
            format,
            cursor,
            skip_before,
            previous_record: None,
            page: vec![0; page_len],
            loaded: None,
            checked_segment: None,
            latest_page: None,
            system_identifier: None,
            record: Vec::new(),
            last_abandoned_record: None,
        }
    }

    /// A reader whose first record starts at `record_start` (or, when that is
    /// a page boundary, right after that page's header, as where a record
    /// that ended at the page's end leaves off).
    pub fn at_record(source: S, format: WalFormat, record_start: Lsn) -> Self {
        Self::new(source, format, Cursor::Record(record_start), record_start)
    }

    /// A reader whose first record is the first one starting at or after
    /// `lsn`, which may be any position (`XLogFindNextRecord`): it goes to
    /// `lsn`'s page, skips the continuation of a record begun on an earlier
    /// page, and reads forward. It gets as far as WAL below `limit` allows; the
    /// rest of the search happens in [`Self::next_record`] as the limit moves.
    pub fn find_first_record_from(
        source: S,
        format: WalFormat,
        lsn: Lsn,
        limit: Lsn,
    ) -> Result<Self, WalError> {
        if !format.is_usable() {
            return Err(unusable(format, lsn));
        }
        let page = format.page_start(lsn);
        let mut reader = Self::new(source, format, Cursor::AfterContinuation(page), lsn);
        reader.skip_to_search_point(limit)?;
        Ok(reader)
    }

    /// Decodes the next record if it ends at or before `limit`; Ok(None) if
    /// it does not (the position stays put, so a later call with a higher
    /// limit retries it).
    ///
    /// After an error the position stays put as well: the same call fails
    /// the same way until the WAL or the source changes.
    pub fn next_record(&mut self, limit: Lsn) -> Result<Option<DecodedRecord>, WalError> {
        if !self.format.is_usable() {
            return Err(unusable(self.format, self.skip_before));
        }
        self.skip_to_search_point(limit)?;
        let Cursor::Record(at) = self.cursor else {
            return Ok(None);
        };
        if self.real_start(at) < self.skip_before {
            return Ok(None);
        }
        self.read_and_advance(at, limit)
    }

    /// Start of the next record to read: the resume point, for
    /// [`Self::at_record`]. When that record follows one that ended at a page
    /// end, this is the page boundary (PostgreSQL's `EndRecPtr`).
    ///
    /// While `find_first_record_from` is still searching (the WAL below its
    /// limits did not reach a record starting at or after its LSN), this is
    /// the LSN it searches from, which need not be a record start: resume
    /// from it with `find_first_record_from`, not `at_record`.
    pub fn next_record_start(&self) -> Lsn {
        match self.cursor {
            Cursor::Record(at) if !self.is_searching() => at,
            _ => self.skip_before,
        }
    }

    /// Whether the reader still has to find the first record at or after
    /// the LSN `find_first_record_from` was given.
    pub fn is_searching(&self) -> bool {
        match self.cursor {
            Cursor::AfterContinuation(_) => true,
            Cursor::Record(at) => self.real_start(at) < self.skip_before,
        }
    }

    /// The start of the last record abandoned because the page it continued
    /// on says it was overwritten (`XLP_FIRST_IS_OVERWRITE_CONTRECORD`: the
    /// server crashed before writing the rest, and after recovery wrote new
    /// WAL there).
    pub fn last_abandoned_record(&self) -> Option<Lsn> {
        self.last_abandoned_record
    }

    pub fn format(&self) -> &WalFormat {
        &self.format
    }

    /// The source, to change what it reads from next (a new maximum
    /// timeline). The reader keeps the last page it read, but only trusts
    /// the bytes below the limit it was read with, which a timeline switch
    /// does not change (the new timeline shares all WAL before the switch
    /// point). Anything else that changes WAL the reader already read calls
    /// for a new reader.
    pub fn source_mut(&mut self) -> &mut S {
        &mut self.source
    }

    pub fn into_source(self) -> S {
        self.source
    }

    /// Where the record the cursor points at really starts.
    fn real_start(&self, at: Lsn) -> Lsn {
        let page = self.format.page_start(at);
        if at == page {
            Lsn(at.0.saturating_add(self.format.page_header_size(page)))
        } else {
            at
        }
    }

    /// Resolves a search position and decodes (and drops) records that start
    /// before the search LSN, as far as WAL below `limit` goes.
    fn skip_to_search_point(&mut self, limit: Lsn) -> Result<(), WalError> {
        loop {
            let at = match self.cursor {
                Cursor::Record(at) => at,
                Cursor::AfterContinuation(page) => match self.skip_continuation(page, limit)? {
                    Some(at) => {
                        self.cursor = Cursor::Record(at);
                        at
                    }
                    None => return Ok(()),
                },
            };
            if self.real_start(at) >= self.skip_before {
                return Ok(());
            }
            if self.read_and_advance(at, limit)?.is_none() {
                return Ok(());
            }
        }
    }

    fn read_and_advance(&mut self, at: Lsn, limit: Lsn) -> Result<Option<DecodedRecord>, WalError> {
        let Some(record) = self.read_record(at, limit)? else {
            return Ok(None);
        };
        self.cursor = Cursor::Record(record.end);
        self.previous_record = Some(record.start);
        Ok(Some(record))
    }

    /// Where the first record starts on or after `page`, past the
    /// continuation data the pages from there may begin with; None when that
    /// needs a page header at or past `limit` (the cursor then remembers how
    /// far the search got).
    fn skip_continuation(&mut self, mut page: Lsn, limit: Lsn) -> Result<Option<Lsn>, WalError> {
        let page_bytes = self.format.page_bytes();
        loop {
            let header_size = self.format.page_header_size(page);
            if page.0.saturating_add(header_size) > limit.0 {
                self.cursor = Cursor::AfterContinuation(page);
                return Ok(None);
            }
            let header = self.load_page(page, limit)?;
            if !header.is_continuation() {
                return Ok(Some(Lsn(page.0 + header_size)));
            }
            let continuation = max_align(u64::from(header.remaining_length));
            if continuation < page_bytes - header_size {
                return Ok(Some(Lsn(page.0 + header_size + continuation)));
            }
            page = Lsn(page.0.saturating_add(page_bytes));
        }
    }

    /// Reads and decodes the record at `at` if all of it lies below `limit`
    /// (`XLogDecodeNextRecord`).
    fn read_record(&mut self, at: Lsn, limit: Lsn) -> Result<Option<DecodedRecord>, WalError> {
        let page_bytes = self.format.page_bytes();
        let mut at = at;
        'restart: loop {
            let first_page = self.format.page_start(at);
            let header_size = self.format.page_header_size(first_page);
            let offset = at.0 - first_page.0;
            let start = self.real_start(at);
            if offset != 0 && offset < header_size {
                return Err(invalid(at, "the record position is inside a page header"));
            }
            if start.0 % MAXIMUM_ALIGNOF != 0 {
                return Err(invalid(at, "the record position is not a multiple of 8"));
            }
            if start.0.saturating_add(RECORD_HEADER_SIZE) > limit.0 {
                return Ok(None);
            }
            let header = self.load_page(first_page, limit)?;
            if offset == 0 && header.is_continuation() {
                return Err(invalid(
                    start,
                    "a record should start here, but the page begins with the rest of another",
                ));
            }
            let in_page = (start.0 - first_page.0) as usize;
            let on_page = page_bytes - in_page as u64;
            // Records are 8-aligned, so their first 8 bytes share a page.
            let total_len = u32_at(&self.page, in_page);
            if u64::from(total_len) < RECORD_HEADER_SIZE {
                return Err(invalid(start, format!("record length {total_len}")));
            }
            let mut header_checked = false;
            if on_page >= RECORD_HEADER_SIZE {
                let header_end = in_page + RECORD_HEADER_SIZE as usize;
                self.check_record_header(&self.page[in_page..header_end], start)?;
                header_checked = true;
            }
            if total_len > MAX_RECORD_SIZE {
                return Err(invalid(start, format!("record length {total_len}")));
            }
            let total_len = u64::from(total_len);
            let first_piece = total_len.min(on_page);
            if start.0 + first_piece > limit.0 {
                return Ok(None);
            }
            self.record.clear();
            self.record
                .extend_from_slice(&self.page[in_page..in_page + first_piece as usize]);
            let mut end = Lsn(start.0.saturating_add(max_align(total_len)));
            let mut page = first_page;
            while (self.record.len() as u64) < total_len {
                page = Lsn(page.0.saturating_add(page_bytes));
                let header_size = self.format.page_header_size(page);
                if page.0.saturating_add(header_size) > limit.0 {
                    return Ok(None);
                }
                let header = self.load_page(page, limit)?;
                if header.overwrites_continuation() {
                    // The rest of this record was lost in a crash; after
                    // recovery the server wrote new WAL from this page on.
                    self.last_abandoned_record = Some(start);
                    at = page;
                    continue 'restart;
                }
                if !header.is_continuation() {
                    return Err(invalid(
                        start,
                        format!(
                            "the record continues on page {page}, which has no continuation flag"
                        ),
                    ));
                }
                let missing = total_len - self.record.len() as u64;
                if header.remaining_length == 0 || u64::from(header.remaining_length) != missing {
                    return Err(invalid(
                        start,
                        format!(
                            "page {page} continues it with {} bytes, {missing} expected",
                            header.remaining_length
                        ),
                    ));
                }
                let piece = missing.min(page_bytes - header_size);
                if page.0 + header_size + piece > limit.0 {
                    return Ok(None);
                }
                let piece_start = header_size as usize;
                self.record
                    .extend_from_slice(&self.page[piece_start..piece_start + piece as usize]);
                if !header_checked && self.record.len() as u64 >= RECORD_HEADER_SIZE {
                    let record_header = &self.record[..RECORD_HEADER_SIZE as usize];
                    self.check_record_header(record_header, start)?;
                    header_checked = true;
                }
                end = Lsn(page.0 + header_size + max_align(missing));
            }
            return self.finish_record(start, end).map(Some);
        }
    }

    /// Checks the CRC of the assembled record and decodes it.
    fn finish_record(&self, start: Lsn, end: Lsn) -> Result<DecodedRecord, WalError> {
        let header = RecordHeader::parse(&self.record);
        let computed = record::record_crc(&self.record);
        if computed != header.crc {
            return Err(WalError::BadCrc {
                at: start,
                stored: header.crc,
                computed,
            });
        }
        let mut decoded =
            record::decode(&self.record, start, end).map_err(|reason| invalid(start, reason))?;
        if decoded.is_switch() {
            // The rest of the segment is unused: the next record starts the
            // next segment, and PostgreSQL reports that as the switch's end.
            let segment = self.format.segment_size;
            decoded.end = Lsn(end.0.div_ceil(segment).saturating_mul(segment));
        }
        effects::check_payload(&decoded).map_err(|reason| invalid(start, reason))?;
        Ok(decoded)
    }

    /// `ValidXLogRecordHeader`, but for the length (checked by the caller).
    fn check_record_header(&self, bytes: &[u8], start: Lsn) -> Result<(), WalError> {
        let header = RecordHeader::parse(bytes);
        if !rmgr::is_valid(header.rmgr) {
            return Err(invalid(
                start,
                format!("invalid resource manager ID {}", header.rmgr),
            ));
        }
        let prev_ok = match self.previous_record {
            Some(previous) => header.prev == previous,
            None => header.prev < start,
        };
        if !prev_ok {
            return Err(invalid(
                start,
                format!(
                    "record with incorrect prev-link {} (previous record {:?})",
                    header.prev, self.previous_record
                ),
            ));
        }
        Ok(())
    }

    /// Makes `page` the page in `self.page`, reading it unless it is there
    /// already with every byte below `limit`. The caller has checked that its
    /// header lies below `limit`.
    fn load_page(&mut self, page: Lsn, limit: Lsn) -> Result<PageHeader, WalError> {
        let page_end = Lsn(page.0.saturating_add(self.format.page_bytes()));
        let wanted_until = page_end.min(limit);
        if let Some(loaded) = self.loaded {
            if loaded.start == page && loaded.valid_until >= wanted_until {
                return Ok(loaded.header);
            }
        }
        // As ReadPageInternal: on entering a segment anywhere but its start,
        // check its first page, whose long header identifies the file.
        let segment = self.format.segment_number(page);
        let segment_start = self.format.segment_start(page);
        if self.checked_segment != Some(segment) && page != segment_start {
            self.read_page(segment_start, limit)?;
        }
        let header = self.read_page(page, limit)?;
        self.checked_segment = Some(segment);
        self.loaded = Some(LoadedPage {
            start: page,
            header,
            valid_until: wanted_until,
        });
        Ok(header)
    }

    fn read_page(&mut self, page: Lsn, limit: Lsn) -> Result<PageHeader, WalError> {
        self.loaded = None;
        debug_assert!(page.0.saturating_add(self.format.page_header_size(page)) <= limit.0);
        self.source.read_page(page, &mut self.page)?;
        let header = PageHeader::parse(&self.page, page, &self.format)?;
        if let Some((latest_page, latest_timeline)) = self.latest_page {
            if page > latest_page && header.timeline < latest_timeline {
                return Err(WalError::InvalidPageHeader {
                    page,
                    reason: format!(
                        "timeline {} after timeline {latest_timeline}",
                        header.timeline
                    ),
                });
            }
        }
        self.latest_page = Some((page, header.timeline));
        if let Some(long) = header.long {
            match self.system_identifier {
                Some(known) if known != long.system_identifier => {
                    return Err(WalError::InvalidPageHeader {
                        page,
                        reason: format!(
                            "system identifier {} after {known}: WAL of another cluster",
                            long.system_identifier
                        ),
                    })
                }
                _ => self.system_identifier = Some(long.system_identifier),
            }
        }
        Ok(header)
    }
}

fn invalid(at: Lsn, reason: impl Into<String>) -> WalError {
    WalError::InvalidRecord {
        at,
        reason: reason.into(),
    }
}

fn unusable(format: WalFormat, at: Lsn) -> WalError {
    invalid(at, format!("unusable WAL format {format:?}"))
}
