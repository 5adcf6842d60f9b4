//! What a record changes on disk, for the change map. The module
//! documentation of [`crate::wal`] explains why block references and
//! file-copying database creation are all a change map needs.

use super::record::{DecodedRecord, MAX_KEPT_MAIN_DATA};
use super::{info, rmgr};
use crate::block::{BlockKey, Fork, RelFileKey};

/// What a record changes on disk, for the change map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordEffect {
    /// One block changed.
    Block(BlockKey),
    /// A whole database directory was created by copying files
    /// (`XLOG_DBASE_CREATE_FILE_COPY`: `CREATE DATABASE … STRATEGY file_copy`
    /// and `ALTER DATABASE … SET TABLESPACE`): the caller marks every block
    /// of every file in it ([`crate::walk::mark_copied_directory`]).
    CopiedDatabase { tablespace: u32, database: u32 },
    /// A relation fork was cut to `length` blocks (`XLOG_SMGR_TRUNCATE`) or
    /// created empty (`XLOG_SMGR_CREATE`, length 0): blocks at or past
    /// `length` may later come back as all-zero blocks no WAL record names,
    /// over block numbers an earlier backup holds other data for. The caller
    /// reports them all from now on ([`crate::LsnMap::mark_cut`]).
    Cut { file: RelFileKey, length: u32 },
}

/// `xl_dbase_create_file_copy_rec`: `db_id`, `tablespace_id`, `src_db_id`,
/// `src_tablespace_id`, four `Oid`s; the same in 15 to 18
/// (`dbcommands_xlog.h`).
const DBASE_CREATE_FILE_COPY_SIZE: usize = 16;

fn is_file_copy_database_creation(record: &DecodedRecord) -> bool {
    record.rmgr == rmgr::DATABASE && record.rmgr_info() == info::DBASE_CREATE_FILE_COPY
}

/// `xl_smgr_truncate`: `blkno` u32, the `RelFileLocator` (three `Oid`s),
/// `flags` int; the same in 15 to 18 (`storage_xlog.h`).
const SMGR_TRUNCATE_SIZE: usize = 20;

/// The first `N` 32-bit fields of a record's main data (all these records'
/// structs are made of `Oid`s, `BlockNumber`s and `int`s), little-endian as
/// the server writes them on this platform; `None` if the data is shorter.
fn main_data_fields<const N: usize>(record: &DecodedRecord) -> Option<[u32; N]> {
    let bytes = record.main_data.get(..N * 4)?;
    let mut fields = [0u32; N];
    for (field, chunk) in fields.iter_mut().zip(bytes.chunks_exact(4)) {
        *field = u32::from_le_bytes(chunk.try_into().ok()?);
    }
    Some(fields)
}

/// `xl_smgr_create`: a `RelFileLocator` (three `Oid`s) and a `ForkNumber`.
const SMGR_CREATE_SIZE: usize = 16;

fn is_creation(record: &DecodedRecord) -> bool {
    record.rmgr == rmgr::STORAGE && record.rmgr_info() == info::SMGR_CREATE
}

/// The fork an `XLOG_SMGR_CREATE` record creates.
fn record_creation(record: &DecodedRecord) -> Option<RelFileKey> {
    if !is_creation(record) {
        return None;
    }
    let field = main_data_fields::<{ SMGR_CREATE_SIZE / 4 }>(record)?;
    let field = |index: usize| field[index];
    Some(RelFileKey {
        tablespace: field(0),
        database: field(1),
        relfilenode: field(2),
        fork: Fork::from_number(field(3) as i32)?,
    })
}

fn is_truncation(record: &DecodedRecord) -> bool {
    record.rmgr == rmgr::STORAGE && record.rmgr_info() == info::SMGR_TRUNCATE
}

/// A relation cut short by `XLOG_SMGR_TRUNCATE` (VACUUM returning empty
/// trailing pages, and the truncation of relations created in the same
/// transaction). Not a [`RecordEffect`]: no block changes content, but
/// blocks the relation later grows back by may never be WAL-logged (see the
/// [`crate::wal`] module documentation), so a tracker may want to treat
/// everything past `blocks` specially.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Truncation {
    /// The relation's main fork.
    pub relation: RelFileKey,
    /// The block count the main fork is cut to (when `flags` has
    /// [`Truncation::MAIN_FORK`]).
    pub blocks: u32,
    /// Which forks were cut: [`Truncation::MAIN_FORK`],
    /// [`Truncation::VISIBILITY_MAP`], [`Truncation::FREE_SPACE_MAP`].
    pub flags: u32,
}

impl Truncation {
    /// `SMGR_TRUNCATE_HEAP`.
    pub const MAIN_FORK: u32 = 0x1;
    /// `SMGR_TRUNCATE_VM`: cut to what covers `blocks` heap blocks.
    pub const VISIBILITY_MAP: u32 = 0x2;
    /// `SMGR_TRUNCATE_FSM`.
    pub const FREE_SPACE_MAP: u32 = 0x4;
}

/// The truncation an `XLOG_SMGR_TRUNCATE` record describes.
pub fn record_truncation(record: &DecodedRecord) -> Option<Truncation> {
    if !is_truncation(record) {
        return None;
    }
    let field = main_data_fields::<{ SMGR_TRUNCATE_SIZE / 4 }>(record)?;
    let field = |index: usize| field[index];
    Some(Truncation {
        relation: RelFileKey {
            tablespace: field(1),
            database: field(2),
            relfilenode: field(3),
            fork: Fork::Main,
        },
        blocks: field(0),
        flags: field(4),
    })
}

/// Every block reference, of every fork (the caller decides about the free
/// space and visibility maps), then the copied database directory of a
/// file-copying `CREATE DATABASE`.
pub fn record_effects(record: &DecodedRecord) -> Vec<RecordEffect> {
    let mut effects: Vec<RecordEffect> = record
        .blocks
        .iter()
        .map(|block| RecordEffect::Block(block.file.block(block.block)))
        .collect();
    if is_file_copy_database_creation(record) {
        // The reader refuses a shorter payload (check_payload), so this
        // always matches for records it returned.
        if let Some(oids) = main_data_fields::<{ DBASE_CREATE_FILE_COPY_SIZE / 4 }>(record) {
            let oid = |index: usize| oids[index];
            effects.push(RecordEffect::CopiedDatabase {
                tablespace: oid(1),
                database: oid(0),
            });
        }
    }
    if let Some(cut) = record_truncation(record) {
        if cut.flags & Truncation::MAIN_FORK != 0 {
            effects.push(RecordEffect::Cut {
                file: cut.relation,
                length: cut.blocks,
            });
        }
    }
    if let Some(file) = record_creation(record) {
        effects.push(RecordEffect::Cut { file, length: 0 });
    }
    effects
}

// The reader keeps the first `MAX_KEPT_MAIN_DATA` bytes of every record's
// main data: all that the effects read.
const _: () = assert!(
    DBASE_CREATE_FILE_COPY_SIZE <= MAX_KEPT_MAIN_DATA
        && SMGR_TRUNCATE_SIZE <= MAX_KEPT_MAIN_DATA
        && SMGR_CREATE_SIZE <= MAX_KEPT_MAIN_DATA
);

/// Refuses records whose effects could not be read in full, so that
/// [`record_effects`] and [`record_truncation`] never silently miss one.
pub(crate) fn check_payload(record: &DecodedRecord) -> Result<(), String> {
    let expected = if is_file_copy_database_creation(record) {
        DBASE_CREATE_FILE_COPY_SIZE
    } else if is_truncation(record) {
        SMGR_TRUNCATE_SIZE
    } else if is_creation(record) {
        SMGR_CREATE_SIZE
    } else {
        return Ok(());
    };
    if record.main_data.len() < expected {
        return Err(format!(
            "rmgr {} info {:02X} with {} bytes of main data, {expected} expected",
            record.rmgr,
            record.info,
            record.main_data.len()
        ));
    }
    Ok(())
}
