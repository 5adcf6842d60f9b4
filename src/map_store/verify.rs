//! The checks at start: `global/pg_control`, `backup_label` and the map file
//! decide whether the map file may be loaded or how a new map starts.

use std::fs::File;

use pgrx::prelude::*;
use ptrack_core::mapfile::{self, Expectation, HeaderVerifiedMapFile, MapFileError, TrackingMode};
use ptrack_core::resize::{self, OldMapFile};
use ptrack_core::startup::{new_map_start, BackupLabel, NewMapStart, StartFacts};
use ptrack_core::Lsn;

use crate::{server, settings};

/// The map file at start if every check of its header passes, and otherwise
/// how a new map starts; `None` when tracking cannot start at all.
pub struct MapFileVerdict {
    /// Its words are checked against the CRC only if they are loaded: a
    /// resumed live map needs none of them.
    pub file: Option<HeaderVerifiedMapFile<memmap2::Mmap>>,
    /// A map file of another size (`ptrack.map_size` changed) that passed
    /// every other check: its answers are carried into the new map.
    pub resized: Option<OldMapFile>,
    pub new_map: NewMapStart,
    /// The server did not shut down cleanly: crash recovery will replay the
    /// WAL from the latest checkpoint, on this timeline.
    pub crash_recovery_on: Option<u32>,
    /// pg_control's system identifier and data checksum version, as read.
    pub system_identifier: u64,
    pub data_checksum_version: u32,
}

/// Reads `global/pg_control`, `backup_label` and the header of the map file
/// of a map of `slot_count` slots, and returns the map file if every check of
/// its header passes; otherwise logs a WARNING saying why it is discarded. A
/// new map started because the CRC fails during the load starts as one
/// started here for a damaged file would: a damaged file raises no floor.
pub fn verified_map_file(slot_count: usize) -> Option<MapFileVerdict> {
    let global = server::data_dir().join("global");
    let mode = settings::active_mode().unwrap_or(TrackingMode::Hooks);
    let other_mode = match mode {
        TrackingMode::Hooks => TrackingMode::Wal,
        TrackingMode::Wal => TrackingMode::Hooks,
    };
    // A map of the other mode is of no use to this one (switching modes
    // starts a new map); its LSNs are below pg_control's by now anyway.
    for name in [
        mode.temp_file_name(),
        other_mode.map_file_name(),
        other_mode.temp_file_name(),
    ] {
        let _ = std::fs::remove_file(global.join(name));
    }
    let name = mode.map_file_name();
    let control = match server::read_control_file() {
        Ok(control) => control,
        Err(error) => {
            // The postmaster read it moments ago; nothing is known of the
            // LSNs used before, so no map may vouch for any of them.
            warning!(
                "ptrack: cannot read pg_control ({error}); change tracking is off until the next \
                 start, and ptrack's functions fail"
            );
            return None;
        }
    };
    let backup_label = server::read_backup_label();
    let mut facts = StartFacts {
        primary_shut_down_cleanly: control.primary_shut_down,
        control_highest: control
            .latest_checkpoint
            .max(control.latest_checkpoint_redo)
            .max(control.min_recovery_point),
        control_redo: control.latest_checkpoint_redo,
        backup_label: backup_label
            .as_ref()
            .and_then(|text| BackupLabel::parse(text)),
        rejected_map_highest: None,
    };
    let expect = Expectation {
        system_identifier: control.system_identifier,
        slot_count: slot_count as u64,
        latest_checkpoint_redo: control.latest_checkpoint_redo,
        data_checksum_version: control.data_checksum_version,
        backup_label_present: backup_label.is_some(),
        mode,
    };
    let path = global.join(name);
    let mut resized = None;
    let rejected = match mapfile::open_header_verified(&path, &expect) {
        Ok(file) => Ok(file),
        Err(MapFileError::WrongSlotCount { .. }) => match resize::open_resized(&path, &expect) {
            Ok(old) => {
                resized = Some(old);
                Err(None)
            }
            Err(error) => Err(Some(error)),
        },
        Err(error) => Err(Some(error)),
    };
    let file = match rejected {
        Ok(file) => Some(file),
        Err(Some(MapFileError::Missing)) => {
            warning!(
                "ptrack: map file \"global/{name}\" not found; starting a new map: changes before its init LSN are unknown"
            );
            None
        }
        Err(error) => {
            if let Some(error) = error {
                warn_discarded(&error, mode);
            }
            // After pg_rewind or a restore, LSNs the old map saw may lie ahead
            // of everything this server will replay first. A resized map that
            // cannot be carried over after all starts a new map above it too.
            facts.rejected_map_highest = recorded_highest(&path, control.system_identifier);
            None
        }
    };
    Some(MapFileVerdict {
        file,
        resized,
        new_map: new_map_start(&facts),
        crash_recovery_on: (!control.cleanly_shut_down).then_some(control.timeline),
        system_identifier: control.system_identifier,
        data_checksum_version: control.data_checksum_version,
    })
}

/// The highest LSN the rejected map file at `path` records, delta records
/// included, read through a mapping: it can be gigabytes, and a start must
/// not fail for want of memory.
fn recorded_highest(path: &std::path::Path, system_identifier: u64) -> Option<Lsn> {
    let file = File::open(path).ok()?;
    // SAFETY: a private read-only mapping of a file in the data directory that
    // only this (starting) server writes; it is dropped before anything could.
    let bytes = unsafe { memmap2::Mmap::map(&file) }.ok()?;
    mapfile::highest_lsn_recorded(&bytes, system_identifier)
}

/// The WARNING of a map file discarded for `error`, with ptrack 2.4's own
/// words first where it has some.
pub fn warn_discarded(error: &MapFileError, mode: TrackingMode) {
    let name = mode.map_file_name();
    let path = server::data_dir().join("global").join(name);
    if let Some(text) = error.ptrack24_text(&path.display().to_string()) {
        warning!("{text}");
    }
    warning!(
        "ptrack: discarding map file \"global/{name}\": {error}; starting a new map: changes before its init LSN are unknown"
    );
}
