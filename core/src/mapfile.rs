//! The map on disk: `global/ptrack.map`.
//!
//! Layout, little-endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `PTRACKMP` |
//! | 8 | 4 | format version ([`FORMAT_VERSION`]) |
//! | 12 | 4 | header length (64) |
//! | 16 | 8 | system identifier of the cluster |
//! | 24 | 8 | slot count |
//! | 32 | 8 | init LSN |
//! | 40 | 8 | REDO LSN of the checkpoint whose end wrote the file |
//! | 48 | 4 | data checksum version in `pg_control` when written |
//! | 52 | 4 | zero |
//! | 56 | 8 | WAL mode: end of the last WAL record marked; hook mode: 0 |
//! | 64 | 8 | nonce of this file, never 0: the delta records name it |
//! | 72 | 8 | hook mode: the LSN from which FSM and VM writes are all marked, or 0 |
//! | 80 | 8 × slot count | slots |
//! | after the slots | 8 × [`CutTable::words_for`]`(slot count)` | the cut table ([`crate::cuts`]) |
//! | … | 4 | CRC-32 of every byte before it |
//! | … | 4 | zero |
//! | [`file_len`] | … | the delta records ([`delta`]) |
//!
//! The file is written to `ptrack.map.tmp` in chunks with a running CRC, made
//! durable, and renamed over `ptrack.map`; the directory is then synced. A
//! reader therefore sees an old complete file or a new complete file, and the
//! CRC catches everything else.
//!
//! Between two such full writes, checkpoints append only the regions of the
//! map that changed, as delta records after the trailer ([`delta`]); the map
//! is the full part with the valid records applied. The records live in the
//! same file so that every tool that knows the file (the core patch's
//! pg_basebackup and pg_checksums skip it, pg_rewind keeps it, pg_resetwal
//! removes it) treats them as it treats the map.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::cuts::CutTable;
use crate::lsn::Lsn;

pub mod delta;
mod flush;
mod load;
pub use flush::{flush_map, Flushed};
pub use load::with_delta;
pub use load::{open_header_verified, HeaderVerifiedMapFile};

pub const MAGIC: [u8; 8] = *b"PTRACKMP";
/// Version 3: the layout above and the hash of [`crate::block`]. Version 2
/// had no nonce (and no delta records), version 1 no cut table.
pub const FORMAT_VERSION: u32 = 3;
pub const HEADER_LEN: usize = 80;
pub const TRAILER_LEN: usize = 8;
/// Hook mode's file, in `global/`, named as C ptrack names it: the core patch
/// makes PostgreSQL's tools treat it specially.
pub const MAP_FILE_NAME: &str = "ptrack.map";
pub const TEMP_FILE_NAME: &str = "ptrack.map.tmp";
/// WAL mode's file, in `global/`. Unpatched tools take any other file there
/// for a relation file: `pg_basebackup` fails on its name ("invalid segment
/// number") or reports checksum failures. Files named `pgsql_tmp*` are
/// temporary files to them: `pg_basebackup` and `pg_checksums` skip them,
/// `pg_rewind` neither copies nor keeps them, and the server removes them
/// only from its temporary-file directories, never from `global/`.
pub const WAL_MODE_MAP_FILE_NAME: &str = "pgsql_tmp_ptrack.map";
pub const WAL_MODE_TEMP_FILE_NAME: &str = "pgsql_tmp_ptrack.map.tmp";
/// Bytes written per chunk: large enough for full-speed I/O, small enough to
/// stay in cache between the copy out of the map and the CRC.
const CHUNK_BYTES: usize = 256 * 1024;

/// What the header says besides magic and version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapFileMeta {
    pub system_identifier: u64,
    pub slot_count: u64,
    pub init_lsn: Lsn,
    pub checkpoint_redo: Lsn,
    /// `pg_control`'s data checksum version: `pg_checksums --enable/--disable`
    /// rewrite every page offline, without a checkpoint and without ptrack.
    pub data_checksum_version: u32,
    /// WAL mode: every record ending at or before this LSN is in the map, and
    /// the WAL follower resumes here. `Lsn::INVALID` for a map written in hook
    /// mode, whose completeness rests on `checkpoint_redo` instead.
    pub wal_tracked_through: Lsn,
    /// The full file's nonce: what binds delta records to it.
    pub base_nonce: u64,
    /// Hook mode: every write of a free-space-map or visibility-map block
    /// since this LSN is in the map (see `LsnMap::track_side_forks_from`);
    /// `Lsn::INVALID`: none is vouched for.
    pub side_forks_tracked_from: Lsn,
}

impl MapFileMeta {
    /// The mode that wrote the file: only WAL mode records a WAL position.
    pub fn mode(&self) -> TrackingMode {
        if self.wal_tracked_through.is_valid() {
            TrackingMode::Wal
        } else {
            TrackingMode::Hooks
        }
    }
}

/// How the map learns of changes, which decides when a map file is complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrackingMode {
    /// The core patch's hooks mark writes; a file written at the latest
    /// checkpoint misses nothing that redo does not replay.
    Hooks,
    /// A WAL follower marks every block the WAL references; a file misses
    /// nothing before its `wal_tracked_through`, and the follower reads the
    /// rest from the WAL (whether that WAL still exists is the caller's check).
    Wal,
}

impl TrackingMode {
    /// The map file's name in `global/`.
    pub fn map_file_name(self) -> &'static str {
        match self {
            TrackingMode::Hooks => MAP_FILE_NAME,
            TrackingMode::Wal => WAL_MODE_MAP_FILE_NAME,
        }
    }

    /// The name it is written under before the rename.
    pub fn temp_file_name(self) -> &'static str {
        match self {
            TrackingMode::Hooks => TEMP_FILE_NAME,
            TrackingMode::Wal => WAL_MODE_TEMP_FILE_NAME,
        }
    }
}

/// What the running server expects of a file before it trusts it.
#[derive(Clone, Copy, Debug)]
pub struct Expectation {
    pub system_identifier: u64,
    pub slot_count: u64,
    /// REDO LSN of the latest checkpoint in `pg_control`. A map written at an
    /// older checkpoint missed the writes of every checkpoint after it (ptrack
    /// was not loaded, or its flush failed).
    pub latest_checkpoint_redo: Lsn,
    pub data_checksum_version: u32,
    /// A `backup_label` in the data directory: it was restored from a
    /// file-system backup or rewound by `pg_rewind`, and either may have
    /// replaced blocks behind ptrack's back.
    pub backup_label_present: bool,
    pub mode: TrackingMode,
}

#[derive(Debug, thiserror::Error)]
pub enum MapFileError {
    #[error("the file does not exist")]
    Missing,
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("the file is {found} bytes long, {expected} expected")]
    WrongLength { found: u64, expected: u64 },
    #[error("bad magic number")]
    BadMagic,
    #[error("format version {found}, this ptrack reads version {FORMAT_VERSION}")]
    UnsupportedVersion { found: u32 },
    #[error("header length {found}, {HEADER_LEN} expected")]
    BadHeaderLength { found: u32 },
    #[error("it belongs to the cluster with system identifier {found}, this one is {expected}")]
    ForeignCluster { found: u64, expected: u64 },
    #[error("it holds {found} slots, ptrack.map_size gives {expected}")]
    WrongSlotCount { found: u64, expected: u64 },
    #[error("CRC mismatch: stored {stored:08X}, computed {computed:08X}")]
    ChecksumMismatch { stored: u32, computed: u32 },
    #[error("data checksums were turned {} since it was written (pg_checksums rewrote every page)", if *control != 0 { "on" } else { "off" })]
    ChecksumsChanged { map: u32, control: u32 },
    #[error("the data directory was restored from a backup or rewound (backup_label is present): blocks may have been replaced untracked")]
    RestoredOrRewound,
    #[error("reserved header bytes or trailer padding are not zero")]
    NonZeroPadding,
    #[error("its nonce is zero")]
    ZeroNonce,
    #[error(
        "it was written at the checkpoint with REDO {map_redo}, but pg_control's latest \
         checkpoint has REDO {control_redo}: writes after it were not tracked"
    )]
    Stale { map_redo: Lsn, control_redo: Lsn },
    #[error("it was written in {found:?} mode and the server now tracks in {expected:?} mode")]
    OtherMode {
        found: TrackingMode,
        expected: TrackingMode,
    },
}

impl MapFileError {
    /// What ptrack 2.4 logs for the same condition, word for word, where it
    /// logs one: operators and tools search logs for these texts. `path` is
    /// the file's full path, as 2.4 prints it.
    pub fn ptrack24_text(&self, path: &str) -> Option<String> {
        match self {
            MapFileError::ChecksumMismatch { .. } => Some(format!(
                "ptrack read map: incorrect checksum of file \"{path}\""
            )),
            MapFileError::BadMagic => Some(format!(
                "ptrack read map: wrong map format of file \"{path}\""
            )),
            MapFileError::UnsupportedVersion { found } => Some(format!(
                "ptrack read map: map format version {found} in the file \"{path}\" is \
                 incompatible with file format of extension {FORMAT_VERSION}"
            )),
            MapFileError::WrongLength { found, expected } => Some(format!(
                "ptrack init: unexpected \"{path}\" file size {found} != {expected}, deleting"
            )),
            MapFileError::WrongSlotCount { found, expected } => Some(format!(
                "ptrack init: unexpected \"{path}\" file size {} != {}, deleting",
                file_len(*found),
                file_len(*expected)
            )),
            _ => None,
        }
    }
}

/// The length of a map file of `slot_count` slots; `u64::MAX`, which no file
/// has, for counts whose file could not exist (a damaged header's count).
pub fn file_len(slot_count: u64) -> u64 {
    word_count(slot_count)
        .saturating_mul(8)
        .saturating_add((HEADER_LEN + TRAILER_LEN) as u64)
}

/// Words after the header: the slots and the cut table.
pub(crate) fn word_count(slot_count: u64) -> u64 {
    let cut_words = usize::try_from(slot_count).map_or(usize::MAX, CutTable::words_for);
    slot_count.saturating_add(cut_words as u64)
}

fn encode_header(meta: &MapFileMeta) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[0..8].copy_from_slice(&MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
    header[16..24].copy_from_slice(&meta.system_identifier.to_le_bytes());
    header[24..32].copy_from_slice(&meta.slot_count.to_le_bytes());
    header[32..40].copy_from_slice(&meta.init_lsn.0.to_le_bytes());
    header[40..48].copy_from_slice(&meta.checkpoint_redo.0.to_le_bytes());
    header[48..52].copy_from_slice(&meta.data_checksum_version.to_le_bytes());
    header[56..64].copy_from_slice(&meta.wal_tracked_through.0.to_le_bytes());
    header[64..72].copy_from_slice(&meta.base_nonce.to_le_bytes());
    header[72..80].copy_from_slice(&meta.side_forks_tracked_from.0.to_le_bytes());
    header
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().expect("8 bytes"))
}

/// Writes the whole map file to `out`: header, words (slots, then the cut
/// table: [`crate::LsnMap::words`]) in chunks, CRC trailer.
///
/// Slots are read one by one while other processes keep
/// marking: a slot's value is at least what it was when the flush started,
/// which is all a flush needs to promise (see the extension's flush hook).
/// `words` must hold the words of a map of `meta.slot_count` slots.
pub fn write_map(out: &mut impl Write, meta: &MapFileMeta, slots: &[AtomicU64]) -> io::Result<()> {
    write_map_with(out, meta, slots, &mut |_| Ok(()))
}

/// [`write_map`], calling `after_chunk(chunks_written)` after every chunk: the
/// place where a test build pauses or fails a flush half-way.
pub fn write_map_with(
    out: &mut impl Write,
    meta: &MapFileMeta,
    slots: &[AtomicU64],
    after_chunk: &mut dyn FnMut(usize) -> io::Result<()>,
) -> io::Result<()> {
    debug_assert_eq!(word_count(meta.slot_count), slots.len() as u64);
    let mut crc = crc32fast::Hasher::new();
    let header = encode_header(meta);
    crc.update(&header);
    out.write_all(&header)?;
    // Copied as whole words (one load and one store per slot), then seen as
    // the little-endian bytes of the format.
    let mut chunk = vec![0u64; CHUNK_BYTES / 8];
    for (written, slots) in slots.chunks(CHUNK_BYTES / 8).enumerate() {
        let words = &mut chunk[..slots.len()];
        // `SeqCst`: after a flush took the dirty bits ([`crate::dirty`]).
        for (word, slot) in words.iter_mut().zip(slots) {
            *word = slot.load(Ordering::SeqCst).to_le();
        }
        // SAFETY: the bytes of initialized `u64`s, which have no padding,
        // viewed for as long as `words` is borrowed; `u8` needs no alignment.
        let bytes =
            unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), words.len() * 8) };
        crc.update(bytes);
        out.write_all(bytes)?;
        after_chunk(written + 1)?;
    }
    let mut trailer = [0u8; TRAILER_LEN];
    trailer[0..4].copy_from_slice(&crc.finalize().to_le_bytes());
    out.write_all(&trailer)
}

/// Atomically replaces `dir/ptrack.map` with the map: write to
/// `dir/ptrack.map.tmp` (mode 0600), fsync, rename, fsync the directory.
///
/// On error the old `ptrack.map` is untouched and the temporary file removed
/// where possible; an old map is then refused at the next start by its stale
/// checkpoint REDO, so a failed flush can never be trusted later.
pub fn persist(dir: &Path, meta: &MapFileMeta, slots: &[AtomicU64]) -> io::Result<()> {
    persist_with(dir, meta, slots, &mut |_| Ok(()))
}

/// [`persist`] with [`write_map_with`]'s chunk callback.
pub fn persist_with(
    dir: &Path,
    meta: &MapFileMeta,
    slots: &[AtomicU64],
    after_chunk: &mut dyn FnMut(usize) -> io::Result<()>,
) -> io::Result<()> {
    let temp = dir.join(meta.mode().temp_file_name());
    let result = write_temp_and_rename(dir, &temp, meta, slots, after_chunk);
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

fn write_temp_and_rename(
    dir: &Path,
    temp: &Path,
    meta: &MapFileMeta,
    slots: &[AtomicU64],
    after_chunk: &mut dyn FnMut(usize) -> io::Result<()>,
) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(temp)?;
    let mut writer = io::BufWriter::with_capacity(CHUNK_BYTES, file);
    write_map_with(&mut writer, meta, slots, after_chunk)?;
    let file = writer
        .into_inner()
        .map_err(io::IntoInnerError::into_error)?;
    file.sync_all()?;
    drop(file);
    fs::rename(temp, dir.join(meta.mode().map_file_name()))?;
    File::open(dir)?.sync_all()
}

/// Removes the map and its temporary file, of either mode, for
/// `ptrack.map_size = 0`. Returns the paths it removed.
pub fn remove_map_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for name in [
        MAP_FILE_NAME,
        TEMP_FILE_NAME,
        WAL_MODE_MAP_FILE_NAME,
        WAL_MODE_TEMP_FILE_NAME,
    ] {
        let path = dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
    }
    Ok(removed)
}

/// A map file whose every byte has been checked against an [`Expectation`].
pub struct VerifiedMapFile<B: AsRef<[u8]>> {
    bytes: B,
    /// Where the full part ends (and delta records, which this ignores, begin).
    base_len: usize,
    meta: MapFileMeta,
}

impl<B: AsRef<[u8]>> VerifiedMapFile<B> {
    pub fn meta(&self) -> &MapFileMeta {
        &self.meta
    }

    /// The slot values, in order.
    pub fn slots(&self) -> impl Iterator<Item = u64> + '_ {
        self.words().take(self.meta.slot_count as usize)
    }

    /// The words (slots, then the cut table), in order.
    pub fn words(&self) -> impl Iterator<Item = u64> + '_ {
        self.bytes.as_ref()[HEADER_LEN..self.base_len - TRAILER_LEN]
            .chunks_exact(8)
            .map(|slot| u64::from_le_bytes(slot.try_into().expect("8 bytes")))
    }
}

/// Checks the full part of a map file image, ignoring delta records after
/// it. Every check that can fail is made before any value of the file is
/// used.
pub fn verify<B: AsRef<[u8]>>(
    bytes: B,
    expect: &Expectation,
) -> Result<VerifiedMapFile<B>, MapFileError> {
    let (meta, base_len) = verify_all_but_freshness(bytes.as_ref(), expect)?;
    check_fresh(&meta, expect)?;
    Ok(VerifiedMapFile {
        bytes,
        base_len,
        meta,
    })
}

/// [`verify`] but for [`check_fresh`], which delta records may change; with
/// the length of the full part.
pub(crate) fn verify_all_but_freshness(
    data: &[u8],
    expect: &Expectation,
) -> Result<(MapFileMeta, usize), MapFileError> {
    let base = &data[..check_length(data, expect)?];
    let crc_at = base.len() - TRAILER_LEN;
    let stored = u32_at(base, crc_at);
    let computed = crc32fast::hash(&base[..crc_at]);
    if stored != computed {
        return Err(MapFileError::ChecksumMismatch { stored, computed });
    }
    Ok((check_header(base, expect)?, base.len()))
}

/// The file holds a full map of `expect.slot_count` slots, perhaps followed
/// by delta records: returns the full part's length. Where it does not, the
/// error names the likelier cause.
fn check_length(data: &[u8], expect: &Expectation) -> Result<usize, MapFileError> {
    let expected_len = file_len(expect.slot_count);
    let wrong_length = || MapFileError::WrongLength {
        found: data.len() as u64,
        expected: expected_len,
    };
    if data.len() < HEADER_LEN + TRAILER_LEN {
        return Err(wrong_length());
    }
    // Name the likelier cause: a whole map of another size (ptrack.map_size
    // changed) or a file cut short.
    let slot_count = u64_at(data, 24);
    if data[0..8] == MAGIC
        && slot_count != expect.slot_count
        && file_len(slot_count) <= data.len() as u64
    {
        return Err(MapFileError::WrongSlotCount {
            found: slot_count,
            expected: expect.slot_count,
        });
    }
    if (data.len() as u64) < expected_len {
        return Err(wrong_length());
    }
    Ok(expected_len as usize)
}

/// Every check but the CRC and [`check_fresh`], on an image of the right
/// length: the header's fields against `expect`, and the zero padding.
fn check_header(data: &[u8], expect: &Expectation) -> Result<MapFileMeta, MapFileError> {
    let crc_at = data.len() - TRAILER_LEN;
    let expected_len = file_len(expect.slot_count);
    let wrong_length = || MapFileError::WrongLength {
        found: data.len() as u64,
        expected: expected_len,
    };
    if data[0..8] != MAGIC {
        return Err(MapFileError::BadMagic);
    }
    let version = u32_at(data, 8);
    if version != FORMAT_VERSION {
        return Err(MapFileError::UnsupportedVersion { found: version });
    }
    let header_len = u32_at(data, 12);
    if header_len as usize != HEADER_LEN {
        return Err(MapFileError::BadHeaderLength { found: header_len });
    }
    if data[52..56]
        .iter()
        .chain(&data[crc_at + 4..])
        .any(|&b| b != 0)
    {
        return Err(MapFileError::NonZeroPadding);
    }
    let meta = MapFileMeta {
        system_identifier: u64_at(data, 16),
        slot_count: u64_at(data, 24),
        init_lsn: Lsn(u64_at(data, 32)),
        checkpoint_redo: Lsn(u64_at(data, 40)),
        data_checksum_version: u32_at(data, 48),
        wal_tracked_through: Lsn(u64_at(data, 56)),
        base_nonce: u64_at(data, 64),
        side_forks_tracked_from: Lsn(u64_at(data, 72)),
    };
    if meta.base_nonce == 0 {
        return Err(MapFileError::ZeroNonce);
    }
    if meta.system_identifier != expect.system_identifier {
        return Err(MapFileError::ForeignCluster {
            found: meta.system_identifier,
            expected: expect.system_identifier,
        });
    }
    if meta.slot_count != expect.slot_count {
        return Err(MapFileError::WrongSlotCount {
            found: meta.slot_count,
            expected: expect.slot_count,
        });
    }
    if data.len() as u64 != expected_len {
        return Err(wrong_length());
    }
    let found_mode = meta.mode();
    if found_mode != expect.mode {
        return Err(MapFileError::OtherMode {
            found: found_mode,
            expected: expect.mode,
        });
    }
    if meta.data_checksum_version != expect.data_checksum_version {
        return Err(MapFileError::ChecksumsChanged {
            map: meta.data_checksum_version,
            control: expect.data_checksum_version,
        });
    }
    if expect.backup_label_present {
        return Err(MapFileError::RestoredOrRewound);
    }
    Ok(meta)
}

/// The check that delta records may change: in hook mode, the map (the
/// full part with its delta records applied, `meta`) must have been written at the
/// latest checkpoint or after it.
pub(crate) fn check_fresh(meta: &MapFileMeta, expect: &Expectation) -> Result<(), MapFileError> {
    if expect.mode == TrackingMode::Hooks && meta.checkpoint_redo < expect.latest_checkpoint_redo {
        return Err(MapFileError::Stale {
            map_redo: meta.checkpoint_redo,
            control_redo: expect.latest_checkpoint_redo,
        });
    }
    Ok(())
}

/// The highest LSN an intact map file (CRC, magic and version good) of the
/// cluster `system_identifier` records — its init LSN, checkpoint REDO, WAL
/// position and largest slot, in the full part or in a valid delta record
/// after it — even when it fails the other checks (stale,
/// restored, rewound). A map that replaces it must start above this. `None`
/// for a damaged file, whose numbers mean nothing, and for another cluster's,
/// whose LSNs say nothing of this one's.
pub fn highest_lsn_recorded(bytes: &[u8], system_identifier: u64) -> Option<Lsn> {
    if bytes.len() < HEADER_LEN + TRAILER_LEN {
        return None;
    }
    // Only the slots hold LSNs; the cut table after them holds names.
    let slot_count = u64_at(bytes, 24);
    let base_len = file_len(slot_count);
    if base_len > bytes.len() as u64 {
        return None;
    }
    let (base, tail) = bytes.split_at(base_len as usize);
    if u64_at(base, 16) != system_identifier {
        return None;
    }
    let crc_at = base.len() - TRAILER_LEN;
    if u32_at(base, crc_at) != crc32fast::hash(&base[..crc_at])
        || base[0..8] != MAGIC
        || u32_at(base, 8) != FORMAT_VERSION
    {
        return None;
    }
    let slots_end = HEADER_LEN + slot_count as usize * 8;
    let slots = base[HEADER_LEN..slots_end]
        .chunks_exact(8)
        .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")));
    let in_base = slots
        .chain([u64_at(base, 32), u64_at(base, 40), u64_at(base, 56)])
        .max()
        .unwrap_or(0);
    let in_tail = delta::highest_lsn(
        tail,
        u64_at(base, 64),
        slot_count as usize,
        word_count(slot_count) as usize,
        Lsn(u64_at(base, 40)),
    );
    Some(Lsn(in_base).max(in_tail.unwrap_or(Lsn::INVALID)))
}

/// Memory-maps `path` and verifies it.
pub fn open_verified(
    path: &Path,
    expect: &Expectation,
) -> Result<VerifiedMapFile<memmap2::Mmap>, MapFileError> {
    verify(map_read_only(path, expect)?, expect)
}

/// Memory-maps `path` for reading; a file too short to be a map is refused
/// here, since an empty file cannot be mapped.
fn map_read_only(path: &Path, expect: &Expectation) -> Result<memmap2::Mmap, MapFileError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Err(MapFileError::Missing),
        Err(error) => return Err(error.into()),
    };
    let len = file.metadata()?.len();
    if len < (HEADER_LEN + TRAILER_LEN) as u64 {
        // An empty file cannot be mapped; it is simply too short.
        return Err(MapFileError::WrongLength {
            found: len,
            expected: file_len(expect.slot_count),
        });
    }
    // SAFETY: the map is only read, and only PostgreSQL's checkpointer writes
    // this path, by renaming a new file over it: the mapped inode itself is
    // never modified while we read it.
    Ok(unsafe { memmap2::Mmap::map(&file)? })
}

/// What the tests expect of a hook-mode file of a clean cluster whose latest
/// checkpoint has REDO 0x5000.
#[cfg(test)]
pub(crate) fn hook_mode_expectation(system_identifier: u64, slot_count: u64) -> Expectation {
    Expectation {
        system_identifier,
        slot_count,
        latest_checkpoint_redo: Lsn(0x5000),
        data_checksum_version: 1,
        backup_label_present: false,
        mode: TrackingMode::Hooks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYSID: u64 = 7_300_000_000_000_000_001;

    /// The words of a map with these slot values and an empty cut table.
    fn slots(values: &[u64]) -> Vec<AtomicU64> {
        let cut_words = CutTable::words_for(values.len());
        values
            .iter()
            .copied()
            .chain(std::iter::repeat_n(0, cut_words))
            .map(AtomicU64::new)
            .collect()
    }

    fn meta(slot_count: u64) -> MapFileMeta {
        MapFileMeta {
            system_identifier: SYSID,
            slot_count,
            init_lsn: Lsn(0x100),
            checkpoint_redo: Lsn(0x5000),
            data_checksum_version: 1,
            wal_tracked_through: Lsn::INVALID,
            base_nonce: 0x5EED,
            side_forks_tracked_from: Lsn::INVALID,
        }
    }

    fn expect(slot_count: u64) -> Expectation {
        hook_mode_expectation(SYSID, slot_count)
    }

    fn image(values: &[u64]) -> Vec<u8> {
        let mut out = Vec::new();
        write_map(&mut out, &meta(values.len() as u64), &slots(values)).unwrap();
        out
    }

    fn reseal(bytes: &mut [u8]) {
        let crc_at = bytes.len() - TRAILER_LEN;
        let crc = crc32fast::hash(&bytes[..crc_at]);
        bytes[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn round_trip() {
        let values: Vec<u64> = (0..100_000).map(|i| i * 3 + 1).collect();
        let bytes = image(&values);
        assert_eq!(bytes.len() as u64, file_len(values.len() as u64));
        let verified = verify(&bytes, &expect(values.len() as u64)).unwrap();
        assert_eq!(*verified.meta(), meta(values.len() as u64));
        assert!(verified.slots().eq(values.iter().copied()));
    }

    #[test]
    fn a_newer_map_than_pg_control_is_trusted() {
        // A crash after the map flush but before pg_control was updated.
        let bytes = image(&[1, 2, 3]);
        let older_control = Expectation {
            latest_checkpoint_redo: Lsn(0x4000),
            ..expect(3)
        };
        assert!(verify(&bytes, &older_control).is_ok());
    }

    #[test]
    fn every_kind_of_damage_is_detected() {
        let good = image(&[10, 20, 30, 40]);
        let e = expect(4);
        let check = |bytes: Vec<u8>, what: &str, matches: fn(&MapFileError) -> bool| {
            let error = verify(&bytes, &e)
                .err()
                .unwrap_or_else(|| panic!("{what} not detected"));
            assert!(matches(&error), "{what}: unexpected {error:?}");
        };
        check(Vec::new(), "empty", |e| {
            matches!(e, MapFileError::WrongLength { .. })
        });
        check(good[..good.len() - 1].to_vec(), "truncated by one", |e| {
            matches!(
                e,
                MapFileError::ChecksumMismatch { .. } | MapFileError::WrongLength { .. }
            )
        });
        check(good[..40].to_vec(), "header only", |e| {
            matches!(e, MapFileError::WrongLength { .. })
        });
        for (offset, what) in [
            (0, "magic"),
            (9, "version"),
            (20, "sysid"),
            (70, "slot"),
            (good.len() - 6, "crc"),
        ] {
            let mut bytes = good.clone();
            bytes[offset] ^= 0x10;
            check(bytes, what, |e| {
                matches!(e, MapFileError::ChecksumMismatch { .. })
            });
        }
        let resealed = |offset: usize, value: &[u8]| {
            let mut bytes = good.clone();
            bytes[offset..offset + value.len()].copy_from_slice(value);
            reseal(&mut bytes);
            bytes
        };
        check(resealed(0, b"XTRACKMP"), "magic", |e| {
            matches!(e, MapFileError::BadMagic)
        });
        check(resealed(8, &2u32.to_le_bytes()), "version", |e| {
            matches!(e, MapFileError::UnsupportedVersion { found: 2 })
        });
        check(resealed(64, &0u64.to_le_bytes()), "nonce", |e| {
            matches!(e, MapFileError::ZeroNonce)
        });
        check(resealed(12, &64u32.to_le_bytes()), "header length", |e| {
            matches!(e, MapFileError::BadHeaderLength { .. })
        });
        check(resealed(16, &1u64.to_le_bytes()), "foreign", |e| {
            matches!(e, MapFileError::ForeignCluster { .. })
        });
        check(resealed(24, &5u64.to_le_bytes()), "slot count", |e| {
            matches!(e, MapFileError::WrongSlotCount { .. })
        });
        check(resealed(53, &[1]), "reserved", |e| {
            matches!(e, MapFileError::NonZeroPadding)
        });
        check(resealed(48, &0u32.to_le_bytes()), "checksums", |e| {
            matches!(e, MapFileError::ChecksumsChanged { .. })
        });
        let restored = Expectation {
            backup_label_present: true,
            ..e
        };
        assert!(matches!(
            verify(&good, &restored),
            Err(MapFileError::RestoredOrRewound)
        ));
        check(resealed(40, &0x4fffu64.to_le_bytes()), "stale", |e| {
            matches!(e, MapFileError::Stale { .. })
        });
        // A well-formed map of another size: what a changed ptrack.map_size finds.
        check(image(&[1, 2, 3, 4, 5]), "wrong size", |e| {
            matches!(e, MapFileError::WrongSlotCount { .. })
        });
        // Words inserted before the trailer and resealed: the full part's
        // CRC is then not where the slot count puts it.
        let mut longer = good[..good.len() - TRAILER_LEN].to_vec();
        longer.extend_from_slice(&[0; 8]);
        longer.extend_from_slice(&[0; TRAILER_LEN]);
        reseal(&mut longer);
        check(longer, "longer", |e| {
            matches!(e, MapFileError::ChecksumMismatch { .. })
        });
        // Bytes after the full part that are no delta record change nothing.
        let mut garbage_after = good.clone();
        garbage_after.extend_from_slice(b"PTRKDLTA and then not a record at all");
        let verified = verify(&garbage_after, &e).expect("garbage after the full part");
        assert!(verified.slots().eq([10, 20, 30, 40]));
        let header_verified = HeaderVerifiedMapFile::new(&garbage_after[..], &e).unwrap();
        assert_eq!(header_verified.delta_applied().records, 0);
        assert_eq!(header_verified.meta(), verified.meta());
    }

    #[test]
    fn a_wal_mode_map_is_judged_by_its_wal_position_not_by_checkpoints() {
        let wal_meta = MapFileMeta {
            wal_tracked_through: Lsn(0x3000),
            ..meta(3)
        };
        let mut bytes = Vec::new();
        write_map(&mut bytes, &wal_meta, &slots(&[1, 2, 3])).unwrap();
        let wal_expect = Expectation {
            mode: TrackingMode::Wal,
            // Checkpoints ran since the file was written: harmless in WAL mode,
            // the follower reads their WAL.
            latest_checkpoint_redo: Lsn(0x9000),
            ..expect(3)
        };
        let verified = verify(&bytes, &wal_expect).unwrap();
        assert_eq!(verified.meta().wal_tracked_through, Lsn(0x3000));
        assert_eq!(*verified.meta(), wal_meta);
        assert!(matches!(
            verify(&bytes, &expect(3)),
            Err(MapFileError::OtherMode {
                found: TrackingMode::Wal,
                expected: TrackingMode::Hooks
            })
        ));
        assert!(matches!(
            verify(image(&[1, 2, 3]), &wal_expect),
            Err(MapFileError::OtherMode {
                found: TrackingMode::Hooks,
                expected: TrackingMode::Wal
            })
        ));
        // The other checks still apply.
        assert!(matches!(
            verify(
                &bytes,
                &Expectation {
                    backup_label_present: true,
                    ..wal_expect
                }
            ),
            Err(MapFileError::RestoredOrRewound)
        ));
        assert_eq!(highest_lsn_recorded(&bytes, SYSID), Some(Lsn(0x5000)));
        let mut ahead = bytes.clone();
        ahead[56..64].copy_from_slice(&0x7777u64.to_le_bytes());
        reseal(&mut ahead);
        assert_eq!(highest_lsn_recorded(&ahead, SYSID), Some(Lsn(0x7777)));
    }

    #[test]
    fn the_cut_table_travels_with_the_slots_and_raises_no_floor() {
        use crate::block::{Fork, RelFileKey};
        let map = crate::OwnedLsnMap::new(4);
        let map = map.view();
        map.mark(
            &RelFileKey {
                tablespace: 1663,
                database: 5,
                relfilenode: 9,
                fork: Fork::Main,
            }
            .block(3),
            Lsn(0x300),
        );
        let cut = RelFileKey {
            tablespace: u32::MAX,
            database: u32::MAX,
            relfilenode: u32::MAX,
            fork: Fork::Main,
        };
        map.record_cut(&cut, 12, Lsn(0x400)).unwrap();
        let mut bytes = Vec::new();
        write_map(&mut bytes, &meta(4), map.words()).unwrap();
        assert_eq!(bytes.len() as u64, file_len(4));
        let verified = verify(&bytes, &expect(4)).unwrap();
        let loaded = crate::OwnedLsnMap::new(4);
        loaded.view().load(Lsn(0x100), verified.words());
        assert_eq!(loaded.view().cut_table().reported_from(&cut), Some(12));
        // The table's words hold names (here all-ones ones), not LSNs.
        assert_eq!(highest_lsn_recorded(&bytes, SYSID), Some(Lsn(0x5000)));
    }

    #[test]
    fn a_version_1_file_is_refused_by_its_version() {
        let mut bytes = image(&[1, 2, 3]);
        bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
        reseal(&mut bytes);
        assert!(matches!(
            verify(&bytes, &expect(3)),
            Err(MapFileError::UnsupportedVersion { found: 1 })
        ));
    }

    #[test]
    fn an_absurd_slot_count_in_the_header_is_a_wrong_length_not_a_panic() {
        // Found by fuzz/fuzz_targets/map_file.rs: the length check named the
        // likelier cause with `file_len` of the header's slot count, which
        // overflowed (a panic where overflow checks are on).
        let mut bytes = image(&[1, 2, 3]);
        bytes[24..32].copy_from_slice(&((1u64 << 61) + 3).to_le_bytes());
        reseal(&mut bytes);
        assert!(matches!(
            verify(&bytes, &expect(4)),
            Err(MapFileError::WrongLength { .. })
        ));
        assert_eq!(file_len(u64::MAX), u64::MAX);
    }

    #[test]
    fn the_highest_lsn_of_an_intact_file_survives_its_rejection() {
        let bytes = image(&[10, 0x9000, 30]);
        assert_eq!(highest_lsn_recorded(&bytes, SYSID), Some(Lsn(0x9000)));
        let mut stale = bytes.clone();
        stale[40..48].copy_from_slice(&0x1_0000u64.to_le_bytes());
        reseal(&mut stale);
        assert_eq!(highest_lsn_recorded(&stale, SYSID), Some(Lsn(0x1_0000)));
        let mut damaged = bytes.clone();
        damaged[70] ^= 1;
        assert_eq!(highest_lsn_recorded(&damaged, SYSID), None);
        assert_eq!(highest_lsn_recorded(&bytes[..20], SYSID), None);
    }

    #[test]
    fn rejections_ptrack_2_4_logs_keep_its_words() {
        let path = "/data/global/ptrack.map";
        let crc = MapFileError::ChecksumMismatch {
            stored: 1,
            computed: 2,
        };
        assert_eq!(
            crc.ptrack24_text(path).as_deref(),
            Some("ptrack read map: incorrect checksum of file \"/data/global/ptrack.map\"")
        );
        assert_eq!(
            MapFileError::BadMagic.ptrack24_text(path).as_deref(),
            Some("ptrack read map: wrong map format of file \"/data/global/ptrack.map\"")
        );
        let resized = MapFileError::WrongSlotCount {
            found: 1,
            expected: 2,
        };
        assert_eq!(
            resized.ptrack24_text(path).as_deref(),
            Some(
                "ptrack init: unexpected \"/data/global/ptrack.map\" file size 1632 != 1640, deleting"
            )
        );
        assert_eq!(MapFileError::RestoredOrRewound.ptrack24_text(path), None);
    }

    #[test]
    fn another_clusters_map_raises_no_floor() {
        // A foreign map file planted in (or copied into) global/ must not push
        // this cluster's init LSN up to LSNs it will not reach for years.
        let mut foreign = image(&[10, u64::MAX - 5, 30]);
        foreign[16..24].copy_from_slice(&(SYSID ^ 1).to_le_bytes());
        reseal(&mut foreign);
        assert_eq!(highest_lsn_recorded(&foreign, SYSID), None);
        assert_eq!(
            highest_lsn_recorded(&foreign, SYSID ^ 1),
            Some(Lsn(u64::MAX - 5))
        );
    }

    #[test]
    fn persist_replaces_atomically_and_cleans_up() {
        let dir = std::env::temp_dir().join(format!("ptrack-mapfile-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        persist(&dir, &meta(3), &slots(&[7, 8, 9])).unwrap();
        persist(&dir, &meta(3), &slots(&[70, 80, 90])).unwrap();
        assert!(!dir.join(TEMP_FILE_NAME).exists());
        let verified = open_verified(&dir.join(MAP_FILE_NAME), &expect(3)).unwrap();
        assert_eq!(verified.slots().collect::<Vec<_>>(), vec![70, 80, 90]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.join(MAP_FILE_NAME))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A WAL-mode map goes by the name unpatched tools skip, beside it.
        let wal_meta = MapFileMeta {
            wal_tracked_through: Lsn(0x3000),
            ..meta(3)
        };
        persist(&dir, &wal_meta, &slots(&[1, 2, 3])).unwrap();
        assert!(!dir.join(WAL_MODE_TEMP_FILE_NAME).exists());
        let wal_expect = Expectation {
            mode: TrackingMode::Wal,
            ..expect(3)
        };
        let verified = open_verified(&dir.join(WAL_MODE_MAP_FILE_NAME), &wal_expect).unwrap();
        assert_eq!(verified.slots().collect::<Vec<_>>(), vec![1, 2, 3]);
        let removed = remove_map_files(&dir).unwrap();
        assert_eq!(
            removed,
            vec![dir.join(MAP_FILE_NAME), dir.join(WAL_MODE_MAP_FILE_NAME)]
        );
        assert!(matches!(
            open_verified(&dir.join(MAP_FILE_NAME), &expect(3)),
            Err(MapFileError::Missing)
        ));
        fs::write(dir.join(MAP_FILE_NAME), b"").unwrap();
        assert!(matches!(
            open_verified(&dir.join(MAP_FILE_NAME), &expect(3)),
            Err(MapFileError::WrongLength { found: 0, .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_leaves_the_old_map() {
        let dir = std::env::temp_dir().join(format!("ptrack-mapfile-fail-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        persist(&dir, &meta(2), &slots(&[1, 2])).unwrap();
        // A directory where the temporary file should go makes the open fail.
        fs::create_dir(dir.join(TEMP_FILE_NAME)).unwrap();
        assert!(persist(&dir, &meta(2), &slots(&[3, 4])).is_err());
        fs::remove_dir(dir.join(TEMP_FILE_NAME)).unwrap();
        // A failure half-way through the chunks (an injected fault, a full disk).
        let many: Vec<u64> = (0..100_000).collect();
        let mut fail_after_first = |written: usize| match written {
            1 => Err(io::Error::other("injected")),
            _ => Ok(()),
        };
        let error =
            persist_with(&dir, &meta(100_000), &slots(&many), &mut fail_after_first).unwrap_err();
        assert_eq!(error.to_string(), "injected");
        assert!(
            !dir.join(TEMP_FILE_NAME).exists(),
            "the partial file is removed"
        );
        let verified = open_verified(&dir.join(MAP_FILE_NAME), &expect(2)).unwrap();
        assert_eq!(verified.slots().collect::<Vec<_>>(), vec![1, 2]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
