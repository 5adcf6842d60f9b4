//! Reading records one after another, as `XLogReadRecord` does.
//!
//! The reader never interprets WAL at or beyond the `limit` its caller passes
//! (the server's flush or replay position): past it a segment may still hold
//! a recycled file's stale pages, or bytes a receiving standby has not
//! written yet. It reads a page only when the page's whole header lies below
//! the limit, uses the page's bytes only up to the limit, and reads a page
//! read while the limit was inside it again once the limit has moved on.
//!
//! Memory stays bounded whatever the records' length (up to 1 GB each, and
//! any role can write one with `pg_logical_emit_message`): a record is
//! checked against its CRC as its pieces are read, and only its headers and
//! the start of its main data are kept ([`super::record`]). A record the
//! limit cuts is taken up where it was cut when the limit has moved on, so a
//! huge record being written is read once, not again at every call.

use super::page::{u32_at, PageHeader};
use super::record::{Assembly, DecodedRecord, RecordHeader, MAX_RECORD_SIZE, RECORD_HEADER_SIZE};
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

/// How far the record the limit cut was read: `read_record` goes on from
/// there, with the bytes so far in `WalReader::assembly`.
#[derive(Clone, Copy, Debug)]
struct Progress {
    /// The cursor position the record was read for.
    at: Lsn,
    start: Lsn,
    total_len: u64,
    /// The last page whose piece of the record was read.
    page: Lsn,
    /// `EndRecPtr` if the record ended with that piece.
    end: Lsn,
    header_checked: bool,
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
    assembly: Assembly,
    /// Set while the record being assembled waits for the limit to move.
    partial: Option<Progress>,
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
            assembly: Assembly::new(),
            partial: None,
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
            // Bytes below a limit never change: a record cut by an earlier
            // limit goes on where it stopped. Any error starts it afresh.
            let mut progress = match self.partial.take() {
                Some(progress) if progress.at == at => progress,
                _ => match self.begin_record(at, limit)? {
                    Some(progress) => progress,
                    None => return Ok(None),
                },
            };
            let start = progress.start;
            while self.assembly.received() < progress.total_len {
                let page = Lsn(progress.page.0.saturating_add(page_bytes));
                let header_size = self.format.page_header_size(page);
                if page.0.saturating_add(header_size) > limit.0 {
                    self.partial = Some(progress);
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
                let missing = progress.total_len - self.assembly.received();
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
                    self.partial = Some(progress);
                    return Ok(None);
                }
                let piece_start = header_size as usize;
                self.assembly
                    .push(&self.page[piece_start..piece_start + piece as usize]);
                if !progress.header_checked {
                    if let Some(record_header) = self.assembly.header() {
                        self.check_record_header(record_header, start)?;
                        progress.header_checked = true;
                    }
                }
                progress.page = page;
                progress.end = Lsn(page.0 + header_size + max_align(missing));
            }
            return self.finish_record(start, progress.end).map(Some);
        }
    }

    /// Checks the start of the record at `at` and takes its piece on the
    /// first page; None if that needs WAL at or past `limit`.
    fn begin_record(&mut self, at: Lsn, limit: Lsn) -> Result<Option<Progress>, WalError> {
        let page_bytes = self.format.page_bytes();
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
        let first_piece = u64::from(total_len).min(on_page);
        if start.0 + first_piece > limit.0 {
            return Ok(None);
        }
        self.assembly.begin(total_len);
        self.assembly
            .push(&self.page[in_page..in_page + first_piece as usize]);
        Ok(Some(Progress {
            at,
            start,
            total_len: u64::from(total_len),
            page: first_page,
            end: Lsn(start.0.saturating_add(max_align(u64::from(total_len)))),
            header_checked,
        }))
    }

    /// Checks the CRC of the assembled record and decodes it.
    fn finish_record(&mut self, start: Lsn, end: Lsn) -> Result<DecodedRecord, WalError> {
        let mut decoded = self.assembly.finish(start, end)?;
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

/// Memory and work on records of any length: any role can write a record of
/// up to 1 GB (`pg_logical_emit_message` is PUBLIC), and the reader runs in a
/// background worker whose allocation failure would abort the server.
#[cfg(test)]
mod huge_records {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    use super::super::crc32c::Crc32c;
    use super::super::record::MAX_KEPT_MAIN_DATA;
    use super::super::testing::{format, BlockSpec, RecordSpec, PAGE, SEGMENT, SYSTEM_ID};
    use super::*;
    use crate::block::Fork;

    /// Counts the bytes each thread has allocated, and their peak, so that a
    /// test measures its own reader and not the tests running beside it.
    struct Counting;

    thread_local! {
        static LIVE: Cell<isize> = const { Cell::new(0) };
        static PEAK: Cell<isize> = const { Cell::new(0) };
    }

    fn count(delta: isize) {
        let _ = LIVE.try_with(|live| {
            let now = live.get() + delta;
            live.set(now);
            let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
        });
    }

    // SAFETY: every call goes to the system allocator unchanged; the
    // counters live in const-initialized thread locals, which never allocate.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: forwarded as is.
            let pointer = unsafe { System.alloc(layout) };
            if !pointer.is_null() {
                count(layout.size() as isize);
            }
            pointer
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            // SAFETY: forwarded as is.
            let pointer = unsafe { System.alloc_zeroed(layout) };
            if !pointer.is_null() {
                count(layout.size() as isize);
            }
            pointer
        }

        unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
            // SAFETY: forwarded as is.
            unsafe { System.dealloc(pointer, layout) };
            count(-(layout.size() as isize));
        }

        unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // SAFETY: forwarded as is.
            let moved = unsafe { System.realloc(pointer, layout, new_size) };
            if !moved.is_null() {
                count(new_size as isize - layout.size() as isize);
            }
            moved
        }
    }

    #[global_allocator]
    static ALLOCATOR: Counting = Counting;

    /// Runs `work` and returns its result and the peak of the bytes this
    /// thread had allocated meanwhile beyond what it held before.
    fn peak_allocation<T>(work: impl FnOnce() -> T) -> (T, usize) {
        let before = LIVE.with(Cell::get);
        PEAK.with(|peak| peak.set(before));
        let result = work();
        (result, (PEAK.with(Cell::get) - before).max(0) as usize)
    }

    /// A record whose main data is `len` bytes of `fill`, after a prefix (the
    /// fixed header with its CRC, then the fragment headers).
    struct Huge {
        prefix: Vec<u8>,
        fill: u8,
        len: u64,
    }

    enum Piece {
        Bytes(Vec<u8>),
        Huge(Huge),
    }

    impl Piece {
        fn len(&self) -> u64 {
            match self {
                Piece::Bytes(bytes) => bytes.len() as u64,
                Piece::Huge(huge) => huge.prefix.len() as u64 + huge.len,
            }
        }

        /// Copies the record's bytes from `offset` on into `out`.
        fn copy(&self, offset: u64, out: &mut [u8]) {
            match self {
                Piece::Bytes(bytes) => out.copy_from_slice(&bytes[offset as usize..][..out.len()]),
                Piece::Huge(huge) => {
                    let prefix = huge.prefix.len() as u64;
                    let in_prefix = prefix.saturating_sub(offset).min(out.len() as u64) as usize;
                    if in_prefix > 0 {
                        out[..in_prefix]
                            .copy_from_slice(&huge.prefix[offset as usize..][..in_prefix]);
                    }
                    out[in_prefix..].fill(huge.fill);
                }
            }
        }
    }

    /// WAL from the start of a segment on, holding `records` one after
    /// another, generated page by page as the reader asks: a record of
    /// hundreds of MB without the test holding it.
    struct Generated {
        base: Lsn,
        records: Vec<Piece>,
        /// Where each record starts and ends, counted in record bytes (page
        /// headers left out) from the first.
        spans: Vec<(u64, u64)>,
        reads: u64,
    }

    const FIRST_ROOM: u64 = PAGE - 40;
    const ROOM: u64 = PAGE - 24;
    const SEGMENT_ROOM: u64 = FIRST_ROOM + (SEGMENT / PAGE - 1) * ROOM;

    impl Generated {
        fn new(base: Lsn, records: Vec<Piece>) -> Self {
            let mut spans = Vec::new();
            let mut at = 0u64;
            for record in &records {
                spans.push((at, at + record.len()));
                at = max_align(at + record.len());
            }
            Generated {
                base,
                records,
                spans,
                reads: 0,
            }
        }

        /// The record-byte position where the page at `page` starts to hold
        /// record bytes.
        fn room_start(&self, page: Lsn) -> u64 {
            let offset = page.0 - self.base.0;
            let (segment, in_segment) = (offset / SEGMENT, offset % SEGMENT / PAGE);
            let before = if in_segment == 0 {
                0
            } else {
                FIRST_ROOM + (in_segment - 1) * ROOM
            };
            segment * SEGMENT_ROOM + before
        }

        /// The LSN of record-byte position `at`; at a page boundary, the end
        /// of the page before (`end`) or the first byte after the next page's
        /// header.
        fn lsn(&self, at: u64, end: bool) -> Lsn {
            let (segment, mut rest) = (at / SEGMENT_ROOM, at % SEGMENT_ROOM);
            let mut lsn = self.base.0 + segment * SEGMENT;
            if rest == 0 && end && at > 0 {
                return Lsn(lsn);
            }
            if rest < FIRST_ROOM || (rest == FIRST_ROOM && end) {
                return Lsn(lsn + 40 + rest);
            }
            rest -= FIRST_ROOM;
            lsn += PAGE;
            let (pages, in_page) = (rest / ROOM, rest % ROOM);
            if in_page == 0 && end {
                return Lsn(lsn + pages * PAGE);
            }
            Lsn(lsn + pages * PAGE + 24 + in_page)
        }

        fn start_of(&self, record: usize) -> Lsn {
            self.lsn(self.spans[record].0, false)
        }

        /// `EndRecPtr` of a record.
        fn end_of(&self, record: usize) -> Lsn {
            self.lsn(max_align(self.spans[record].1), true)
        }

        /// The LSN right after the last byte of a record.
        fn raw_end_of(&self, record: usize) -> Lsn {
            self.lsn(self.spans[record].1, true)
        }
    }

    impl WalSource for &mut Generated {
        fn read_page(&mut self, page: Lsn, buf: &mut [u8]) -> Result<(), WalError> {
            self.reads += 1;
            buf.fill(0);
            let long = page.0 % SEGMENT == 0;
            let header = if long { 40 } else { 24 };
            let room_start = self.room_start(page);
            let room_end = room_start + PAGE - header;
            let mut info: u16 = if long { 2 } else { 0 };
            let mut remaining = 0u32;
            if let Some(&(_, end)) = self
                .spans
                .iter()
                .find(|(start, end)| *start < room_start && room_start < *end)
            {
                info |= 1;
                remaining = (end - room_start) as u32;
            }
            buf[0..2].copy_from_slice(&format().page_magic.to_le_bytes());
            buf[2..4].copy_from_slice(&info.to_le_bytes());
            buf[4..8].copy_from_slice(&1u32.to_le_bytes());
            buf[8..16].copy_from_slice(&page.0.to_le_bytes());
            buf[16..20].copy_from_slice(&remaining.to_le_bytes());
            if long {
                buf[24..32].copy_from_slice(&SYSTEM_ID.to_le_bytes());
                buf[32..36].copy_from_slice(&(SEGMENT as u32).to_le_bytes());
                buf[36..40].copy_from_slice(&(PAGE as u32).to_le_bytes());
            }
            for (record, &(start, end)) in self.records.iter().zip(&self.spans) {
                let (from, to) = (start.max(room_start), end.min(room_end));
                if from < to {
                    let at = (header + from - room_start) as usize;
                    record.copy(from - start, &mut buf[at..at + (to - from) as usize]);
                }
            }
            Ok(())
        }
    }

    fn heap_block(block: u32) -> BlockSpec {
        BlockSpec {
            id: 0,
            relation: Some((1663, 5, 16384)),
            block,
            ..BlockSpec::default()
        }
    }

    /// A logical-message-like record naming one block (so that its block
    /// reference is seen to survive), with `len` bytes of main data.
    fn huge_record(prev: Lsn, len: u64, fill: u8) -> Piece {
        let headers = RecordSpec {
            blocks: vec![heap_block(7)],
            ..RecordSpec::default()
        }
        .body();
        let mut prefix = vec![0u8; 24];
        prefix.extend_from_slice(&headers);
        prefix.push(254);
        prefix.extend_from_slice(&(len as u32).to_le_bytes());
        let total_len = prefix.len() as u64 + len;
        prefix[0..4].copy_from_slice(&(total_len as u32).to_le_bytes());
        prefix[8..16].copy_from_slice(&prev.0.to_le_bytes());
        prefix[16] = 0; // XLOG_LOGICAL_MESSAGE
        prefix[17] = 21; // RM_LOGICALMSG_ID
        let mut crc = Crc32c::new();
        crc.update(&prefix[24..]);
        let chunk = vec![fill; 1 << 20];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            crc.update(&chunk[..n]);
            left -= n as u64;
        }
        crc.update(&prefix[..20]);
        let crc = crc.finish();
        prefix[20..24].copy_from_slice(&crc.to_le_bytes());
        Piece::Huge(Huge { prefix, fill, len })
    }

    /// A huge record, then an ordinary one naming block 9.
    fn huge_then_small(len: u64) -> Generated {
        let base = Lsn(0x3_0000_0000);
        let start = Lsn(base.0 + 40);
        let huge = huge_record(Lsn(base.0 - 0x100), len, b'x');
        let small = RecordSpec {
            rmgr: rmgr::HEAP,
            info: 0x00,
            blocks: vec![heap_block(9)],
            main_data: vec![1; 3],
            ..RecordSpec::default()
        }
        .encode(start);
        Generated::new(base, vec![huge, Piece::Bytes(small)])
    }

    #[test]
    fn a_200_mb_record_is_streamed_through_its_crc_in_bounded_memory() {
        let len = 200 << 20;
        let mut wal = huge_then_small(len);
        let (start, end, small_end) = (wal.start_of(0), wal.end_of(0), wal.end_of(1));
        let small_start = wal.start_of(1);
        let limit = wal.raw_end_of(1);
        let ((huge, small), peak) = peak_allocation(|| {
            let mut reader = WalReader::at_record(&mut wal, format(), start);
            let huge = reader.next_record(limit).unwrap().unwrap();
            let small = reader.next_record(limit).unwrap().unwrap();
            assert_eq!(reader.next_record(limit).unwrap(), None);
            (huge, small)
        });
        eprintln!(
            "peak allocation reading a {} MB record: {peak} bytes",
            len >> 20
        );
        assert_eq!((huge.start, huge.end), (start, end));
        assert_eq!((huge.rmgr, huge.info), (21, 0));
        assert_eq!(huge.blocks.len(), 1);
        assert_eq!(huge.blocks[0].file.fork, Fork::Main);
        assert_eq!(
            (huge.blocks[0].file.relfilenode, huge.blocks[0].block),
            (16384, 7)
        );
        assert!(huge.main_data.iter().all(|&b| b == b'x'));
        assert_eq!((small.start, small.end), (small_start, small_end));
        assert_eq!(small.prev, start);
        assert_eq!(small.blocks[0].block, 9);
        assert!(
            peak < 1 << 20,
            "reading a {} MB record took {peak} bytes of memory at its peak",
            len >> 20
        );
    }

    #[test]
    fn a_huge_record_cut_by_the_limit_is_read_once() {
        // The follower asks every few milliseconds while the server writes a
        // huge record: each call goes on where the last one stopped.
        let len = 16 << 20;
        let mut wal = huge_then_small(len);
        let (start, raw_end) = (wal.start_of(0), wal.raw_end_of(1));
        let pages = (raw_end.0 - start.0).div_ceil(PAGE);
        let mut calls = 0u64;
        let mut reader = WalReader::at_record(&mut wal, format(), start);
        let mut limit = Lsn(start.0 + 100);
        let huge = loop {
            calls += 1;
            match reader.next_record(limit).unwrap() {
                Some(record) => break record,
                None => {
                    assert_eq!(reader.next_record_start(), start);
                    limit = Lsn(limit.0 + 65_531);
                }
            }
        };
        let small = reader.next_record(raw_end).unwrap().unwrap();
        drop(reader);
        assert_eq!((huge.start, huge.end), (start, wal.end_of(0)));
        assert_eq!(small.end, wal.end_of(1));
        assert!(calls > 200);
        // Each call reads again the page the limit was in, no more.
        assert!(
            wal.reads <= pages + 2 * calls,
            "{} page reads for {pages} pages in {calls} calls",
            wal.reads
        );
    }

    #[test]
    fn only_the_first_64_kb_of_main_data_are_kept() {
        let mut writer = super::super::testing::WalWriter::new(Lsn(0x3_0000_0000));
        let first = writer.insert;
        let main_data: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
        let placed = writer.push(&RecordSpec {
            rmgr: rmgr::HEAP,
            blocks: vec![heap_block(3)],
            main_data: main_data.clone(),
            ..RecordSpec::default()
        });
        let mut reader = WalReader::at_record(writer.source(), format(), first);
        let record = reader.next_record(writer.end()).unwrap().unwrap();
        assert_eq!((record.start, record.end), (placed.start, placed.end));
        assert_eq!(record.main_data_len, 150_000);
        assert_eq!(record.main_data, main_data[..MAX_KEPT_MAIN_DATA]);
        assert_eq!(record.blocks[0].block, 3);
    }

    #[test]
    fn fragment_headers_past_64_kb_are_refused_after_the_crc_check() {
        // 25,000 replication-origin headers: valid to DecodeXLogRecord, but
        // nothing a server writes.
        let mut body = Vec::new();
        for _ in 0..25_000 {
            body.extend_from_slice(&[253, 1, 0]);
        }
        body.extend_from_slice(&[255, 4, 1, 2, 3, 4]);
        let base = Lsn(0x3_0000_0000);
        let mut writer = super::super::testing::WalWriter::new(base);
        let first = writer.insert;
        let record = super::super::testing::record_from_body(rmgr::HEAP, 0, 1, writer.prev, &body);
        writer.push_bytes(&record);
        let mut reader = WalReader::at_record(writer.source(), format(), first);
        match reader.next_record(writer.end()) {
            Err(WalError::InvalidRecord { at, reason }) => {
                assert_eq!(at, Lsn(base.0 + 40));
                assert!(reason.contains("fragment headers"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // A damaged CRC is what is reported first, as before.
        let mut damaged = record.clone();
        damaged[70_000] ^= 1;
        let mut writer = super::super::testing::WalWriter::new(base);
        writer.push_bytes(&damaged);
        let mut reader = WalReader::at_record(writer.source(), format(), first);
        assert!(matches!(
            reader.next_record(writer.end()),
            Err(WalError::BadCrc { .. })
        ));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// Read at once or as the limit creeps up, records of every length
        /// decode to what was written, main data up to the kept part.
        #[test]
        fn records_read_in_steps_decode_as_written(
            lengths in proptest::collection::vec(0usize..200_000, 1..5),
            step in 1u64..40_000,
            with_block in proptest::prelude::any::<bool>(),
        ) {
            let mut writer = super::super::testing::WalWriter::new(Lsn(0x3_0000_0000));
            let first = writer.insert;
            let mut placed = Vec::new();
            for (n, &len) in lengths.iter().enumerate() {
                let spec = RecordSpec {
                    rmgr: rmgr::HEAP,
                    blocks: if with_block { vec![heap_block(n as u32)] } else { vec![] },
                    main_data: (0..len).map(|i| (i * 7 + n) as u8).collect(),
                    ..RecordSpec::default()
                };
                placed.push((writer.push(&spec), spec));
            }
            let end = writer.end();
            let at_once: Vec<DecodedRecord> = {
                let mut reader = WalReader::at_record(writer.source(), format(), first);
                std::iter::from_fn(|| reader.next_record(end).unwrap()).collect()
            };
            let mut reader = WalReader::at_record(writer.source(), format(), first);
            let mut in_steps = Vec::new();
            let mut limit = first;
            while in_steps.len() < placed.len() {
                match reader.next_record(limit).unwrap() {
                    Some(record) => in_steps.push(record),
                    None => limit = Lsn((limit.0 + step).min(end.0)),
                }
            }
            proptest::prop_assert_eq!(&at_once, &in_steps);
            for (record, (place, spec)) in at_once.iter().zip(&placed) {
                proptest::prop_assert_eq!((record.start, record.end), (place.start, place.end));
                proptest::prop_assert_eq!(record.main_data_len as usize, spec.main_data.len());
                let kept = spec.main_data.len().min(MAX_KEPT_MAIN_DATA);
                proptest::prop_assert_eq!(&record.main_data[..], &spec.main_data[..kept]);
                proptest::prop_assert_eq!(record.blocks.len(), spec.blocks.len());
            }
        }
    }
}
