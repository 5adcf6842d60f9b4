//! The on-disk map `global/ptrack.map`: its layout, its survival across clean
//! restarts, and that any damaged, foreign or stale map is discarded (tracking
//! restarts from a new init LSN) instead of giving partial answers; a map of
//! another size is carried over (see also `map_resize.rs`) only when sound.

mod common;

use std::fs;

use common::log::ptrack_warnings;
use common::mapfile::delta_records;
use common::workload::create_known_table;
use common::{chown_to_server, Cluster, Lsn, PageMapSet, StopMode, MAP_SIZE_MB};

const MAGIC: &[u8; 8] = b"PTRACKMP";
const HEADER_LEN: usize = 80;
const TRAILER_LEN: usize = 8;

fn slot_count(map_mb: u64) -> u64 {
    map_mb * 1_048_576 / 8
}

/// Format version 3 (as 2): after the slots, the cut table of one three-word entry
/// per 512 slots (at least 64, at most 2^22 entries).
fn cut_table_words(map_mb: u64) -> u64 {
    (slot_count(map_mb) / 512).clamp(64, 1 << 22) * 3
}

fn map_len(map_mb: u64) -> usize {
    HEADER_LEN + 8 * (slot_count(map_mb) + cut_table_words(map_mb)) as usize + TRAILER_LEN
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

/// The header fields of a map file.
#[derive(Debug)]
struct Header {
    init_lsn: Lsn,
    checkpoint_redo: Lsn,
}

/// Reads the map file and checks every field of the layout; the positions
/// are those of the last whole delta record, if it has one.
fn read_valid_map(c: &Cluster, map_mb: u64) -> Header {
    let path = c.map_path();
    let b = fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    // The full part, then the delta records of the checkpoints since it.
    assert!(
        b.len() >= map_len(map_mb),
        "length {} of {} for map_size = {map_mb}MB",
        b.len(),
        path.display()
    );
    let (b, records) = b.split_at(map_len(map_mb));
    assert_eq!(&b[0..8], MAGIC, "magic");
    assert_eq!(u32_at(b, 8), 3, "format version");
    assert_eq!(u32_at(b, 12), HEADER_LEN as u32, "header length");
    assert_eq!(u64_at(b, 16), c.system_identifier(), "system identifier");
    assert_eq!(u64_at(b, 24), slot_count(map_mb), "slot count");
    assert_eq!(
        u32_at(b, 48),
        1,
        "data checksum version (the cluster has checksums)"
    );
    assert!(
        b[52..56].iter().all(|&x| x == 0),
        "header bytes 52..56 are not zero"
    );
    assert_eq!(u64_at(b, 56), 0, "a WAL position in a hook-mode map");
    assert_ne!(u64_at(b, 64), 0, "the nonce is zero");
    let trailer = b.len() - TRAILER_LEN;
    assert_eq!(
        u32_at(b, trailer),
        crc32fast::hash(&b[..trailer]),
        "CRC of {}",
        path.display()
    );
    assert_eq!(&b[trailer + 4..], &[0u8; 4], "trailer padding");
    assert!(
        !c.pgdata.join("global/ptrack.map.tmp").exists(),
        "global/ptrack.map.tmp left behind"
    );
    let mut header = Header {
        init_lsn: Lsn(u64_at(b, 32)),
        checkpoint_redo: Lsn(u64_at(b, 40)),
    };
    for (init_lsn, checkpoint_redo) in delta_records(records, u64_at(b, 64)) {
        header = Header {
            init_lsn,
            checkpoint_redo,
        };
    }
    assert_eq!(
        header.checkpoint_redo,
        c.controldata_redo_lsn(),
        "checkpoint_redo of the map is not the REDO LSN of the latest checkpoint"
    );
    header
}

fn recompute_crc(b: &mut [u8]) {
    let trailer = b.len() - TRAILER_LEN;
    let crc = crc32fast::hash(&b[..trailer]);
    b[trailer..trailer + 4].copy_from_slice(&crc.to_le_bytes());
}

fn assert_reports_all(set: &PageMapSet, path: &str, blocks: u64, why: &str) {
    let got = set.get(path).map(|m| m.set_blocks()).unwrap_or_default();
    assert_eq!(
        got,
        (0..blocks).collect::<Vec<_>>(),
        "{why}: {path} must be reported with all of its {blocks} blocks (never a partial answer)"
    );
}

/// Common test cluster: a checkpoint only when asked, so map contents and
/// pg_control can be compared.
fn new_cluster(name: &str) -> Cluster {
    let mut c = Cluster::new(name);
    c.set_conf("checkpoint_timeout", "'1h'");
    c.set_conf("autovacuum", "off");
    c
}

/// Stops, lets `damage` spoil the map, starts, and checks the map was
/// discarded: WARNING, init LSN moved forward to the shutdown checkpoint,
/// and every block of `known` reported for an LSN from before the stop.
fn expect_discard(
    c: &mut Cluster,
    known: &(String, u64),
    variant: &str,
    needs_discard_word: bool,
    damage: impl FnOnce(&Cluster),
) {
    let old_init = c.init_lsn();
    // Just before the shutdown checkpoint, which a new map may vouch from
    // (nothing is written after it): an LSN only the old map could answer.
    let mid = Lsn(c.wal_insert_lsn().0 - 1);
    let before = c.pagemapset(mid);
    assert!(
        before.get(&known.0).is_none(),
        "[{variant}] precondition: the untouched table is reported for {mid} before the restart"
    );
    c.stop(StopMode::Fast);
    damage(c);
    let mark = c.log_mark();
    c.start();
    let log = c.log_since(mark);
    let warnings = ptrack_warnings(&log);
    assert!(
        warnings.iter().any(|w| w.contains("ptrack:")
            && (!needs_discard_word || w.to_lowercase().contains("discard"))),
        "[{variant}] no WARNING with 'ptrack:'{} in the log after the restart:\n{log}",
        if needs_discard_word {
            " and 'discard'"
        } else {
            ""
        }
    );
    let new_init = c.init_lsn();
    assert!(
        new_init > old_init && new_init > mid,
        "[{variant}] init LSN did not move forward: was {old_init}, now {new_init}, \
         WAL position before the stop {mid}"
    );
    let after = c.pagemapset(mid);
    assert_reports_all(
        &after,
        &known.0,
        known.1,
        &format!("[{variant}] LSN {mid} < new init LSN {new_init}"),
    );
    // The next checkpoint writes a sound map again.
    c.psql("CHECKPOINT;");
    let h = read_valid_map(c, MAP_SIZE_MB);
    assert_eq!(
        h.init_lsn, new_init,
        "[{variant}] init LSN in the new map file"
    );
    eprintln!("[{variant}] discarded: init {old_init} -> {new_init}");
}

#[derive(Clone, Copy, Debug)]
enum Damage {
    Empty,
    Truncated,
    MagicBitFlip,
    SlotBitFlip,
    CrcBitFlip,
    WrongVersion,
    ForeignSystemId,
    /// A bit of the last delta record (the shutdown checkpoint's):
    /// the map is then the one of an older checkpoint, stale.
    DeltaRecordBitFlip,
}

fn damage_map(c: &Cluster, kind: Damage) {
    let path = c.map_path();
    let mut b = fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let full_part = map_len(MAP_SIZE_MB);
    assert!(b.len() >= full_part, "map before damaging it");
    match kind {
        Damage::Empty => b.clear(),
        Damage::Truncated => b.truncate(full_part / 2),
        Damage::MagicBitFlip => b[0] ^= 0x01,
        Damage::SlotBitFlip => {
            let off = HEADER_LEN + 8 * (slot_count(MAP_SIZE_MB) as usize / 2);
            b[off] ^= 0x10;
        }
        Damage::CrcBitFlip => {
            let off = full_part - TRAILER_LEN;
            b[off] ^= 0x80;
        }
        Damage::WrongVersion => {
            // Version 2, the format before delta records: what an upgrade
            // from the previous release finds.
            b[8..12].copy_from_slice(&2u32.to_le_bytes());
            recompute_crc(&mut b[..full_part]);
        }
        Damage::ForeignSystemId => {
            let sysid = u64_at(&b, 16) ^ 0x0123_4567_89AB_CDEF;
            b[16..24].copy_from_slice(&sysid.to_le_bytes());
            recompute_crc(&mut b[..full_part]);
        }
        Damage::DeltaRecordBitFlip => {
            assert!(
                b.len() > full_part,
                "the shutdown checkpoint appended no delta record"
            );
            // In the last record's end of runs.
            let off = b.len() - 12;
            b[off] ^= 0x04;
        }
    }
    // Rewrite in place: the file keeps its owner.
    fs::write(&path, &b).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    chown_to_server(&path);
    if matches!(kind, Damage::SlotBitFlip | Damage::CrcBitFlip) {
        // Only the header decides whether a live map kept by the clean stop
        // is resumed (see `body_damage_under_a_kept_live_map_is_rewritten`):
        // the words are read, and their CRC checked, after a reboot.
        if let Some(live) = c.live_map_file() {
            fs::remove_file(&live).unwrap_or_else(|e| panic!("rm {}: {e}", live.display()));
        }
    }
}

#[test]
fn clean_restart_keeps_the_map() {
    let mut c = new_cluster("map_keep");
    c.start();
    let (known_path, _) = create_known_table(&c);
    let init = c.init_lsn();
    let mid = c.wal_insert_lsn();

    // Written at every checkpoint, not only at shutdown.
    c.psql("CREATE TABLE other AS SELECT 1 AS x; CHECKPOINT;");
    let h = read_valid_map(&c, MAP_SIZE_MB);
    assert_eq!(
        h.init_lsn, init,
        "init LSN in the map file vs ptrack_init_lsn()"
    );

    c.stop(StopMode::Fast);
    let h = read_valid_map(&c, MAP_SIZE_MB);
    assert_eq!(
        h.init_lsn, init,
        "init LSN in the map file after a clean stop"
    );
    let mark = c.log_mark();
    c.start();
    let log = c.log_since(mark);
    assert!(
        ptrack_warnings(&log).is_empty(),
        "clean restart with a good map logged ptrack WARNINGs:\n{log}"
    );
    assert_eq!(
        c.init_lsn(),
        init,
        "init LSN changed across a clean restart"
    );
    let set = c.pagemapset(mid);
    assert!(
        set.get(&known_path).is_none(),
        "the map was not kept: untouched {known_path} is reported for {mid}"
    );
    let other = c.query_one("SELECT pg_relation_filepath('other')");
    assert!(
        set.get(&other).is_some_and(|m| m.is_set(0)),
        "table 'other' written after {mid} is not reported after the restart"
    );

    // The same from the map file alone, as after a reboot: a clean stop
    // keeps the live map in hook mode, and a start resumes it instead.
    c.stop(StopMode::Fast);
    if let Some(live) = c.live_map_file() {
        fs::remove_file(&live).expect("remove the live map");
    }
    let mark = c.log_mark();
    c.start();
    let log = c.log_since(mark);
    assert!(
        log.contains("ptrack: loaded map") && ptrack_warnings(&log).is_empty(),
        "the map file was not loaded cleanly without a live map:\n{log}"
    );
    assert_eq!(c.init_lsn(), init, "init LSN after loading the map file");
    let set = c.pagemapset(mid);
    assert!(
        set.get(&known_path).is_none() && set.get(&other).is_some_and(|m| m.is_set(0)),
        "the map loaded from its file answers otherwise than before"
    );
}

/// A clean stop keeps the live map in hook mode, and the next start resumes
/// it on the strength of the map file's header alone: words damaged on disk
/// are never read, and the next checkpoint writes them anew. Without a kept
/// live map (WAL mode, no tmpfs) the file is loaded, and the damage found.
#[test]
fn body_damage_under_a_kept_live_map_is_rewritten() {
    let mut c = new_cluster("map_body_damage");
    c.start();
    let known = create_known_table(&c);
    let mid = Lsn(c.wal_insert_lsn().0 - 1);
    let init = c.init_lsn();
    let live_while_running = c.live_map_file().is_some();
    c.stop(StopMode::Fast);
    if live_while_running && common::tracking_mode() == "hooks" {
        assert!(
            c.live_map_file().is_some(),
            "hook mode: the clean stop removed the live map"
        );
    }
    if c.live_map_file().is_none() {
        eprintln!("no live map kept by the clean stop: the damaged file must be discarded");
        c.start();
        expect_discard(&mut c, &known, "SlotBitFlip, no live map", true, |c| {
            damage_map(c, Damage::SlotBitFlip)
        });
        return;
    }
    let path = c.map_path();
    let mut b = fs::read(&path).expect("read map");
    let off = HEADER_LEN + 8 * (slot_count(MAP_SIZE_MB) as usize / 2);
    b[off] ^= 0x10;
    fs::write(&path, &b).expect("write map");
    chown_to_server(&path);
    let mark = c.log_mark();
    c.start();
    let log = c.log_since(mark);
    assert!(
        log.contains("ptrack: resumed the live map"),
        "the live map kept by the clean stop was not resumed:\n{log}"
    );
    assert!(
        ptrack_warnings(&log).is_empty(),
        "resuming over a damaged map file logged WARNINGs:\n{log}"
    );
    assert_eq!(c.init_lsn(), init, "init LSN after resuming");
    assert!(
        c.pagemapset(mid).get(&known.0).is_none(),
        "the untouched table is reported for {mid} after resuming"
    );
    c.psql("CHECKPOINT;");
    let h = read_valid_map(&c, MAP_SIZE_MB);
    assert_eq!(h.init_lsn, init, "init LSN in the rewritten map file");
}

/// A map file refused for its CRC during the load (after a reboot) leaves a
/// new live map that continues no file: an immediate stop before its first
/// flush does not resume it on the strength of the damaged file's header.
#[test]
fn a_new_map_after_a_failed_load_is_not_resumed_before_its_first_flush() {
    let mut c = new_cluster("map_crc_then_crash");
    c.start();
    create_known_table(&c);
    c.stop(StopMode::Fast);
    damage_map(&c, Damage::SlotBitFlip);
    let mark = c.log_mark();
    c.start();
    let log = c.log_since(mark);
    assert!(
        ptrack_warnings(&log)
            .iter()
            .any(|w| w.contains("discard") && w.contains("CRC")),
        "the damaged words were not refused at the load:\n{log}"
    );
    c.stop(StopMode::Immediate);
    let mark = c.log_mark();
    c.start();
    let log = c.log_since(mark);
    assert!(
        !log.contains("ptrack: resumed the live map"),
        "a map that continues no file was resumed:\n{log}"
    );
    assert!(
        ptrack_warnings(&log).iter().any(|w| w.contains("discard")),
        "the damaged file was not refused again:\n{log}"
    );
    c.stop(StopMode::Fast);
}

#[test]
fn damaged_map_is_discarded() {
    let mut c = new_cluster("map_damage");
    c.start();
    let known = create_known_table(&c);
    for kind in [
        Damage::Empty,
        Damage::Truncated,
        Damage::MagicBitFlip,
        Damage::SlotBitFlip,
        Damage::CrcBitFlip,
        Damage::WrongVersion,
        Damage::ForeignSystemId,
        Damage::DeltaRecordBitFlip,
    ] {
        expect_discard(&mut c, &known, &format!("{kind:?}"), true, |c| {
            damage_map(c, kind)
        });
    }

    expect_discard(&mut c, &known, "Missing", false, |c| {
        fs::remove_file(c.map_path()).expect("remove ptrack.map");
    });

    // A stale map: valid in itself but older than the latest checkpoint.
    c.stop(StopMode::Fast);
    let stale = fs::read(c.map_path()).expect("read map");
    c.start();
    c.psql("CREATE TABLE after_stale AS SELECT g FROM generate_series(1, 1000) g; CHECKPOINT;");
    expect_discard(&mut c, &known, "Stale", true, |c| {
        fs::write(c.map_path(), &stale).expect("put the stale map back");
        chown_to_server(&c.map_path());
    });
}

#[test]
fn map_size_changes() {
    let mut c = new_cluster("map_size");
    c.start();
    let known = create_known_table(&c);
    assert_eq!(c.query_one("SHOW ptrack.map_size"), "16MB");

    // 16 -> 8 MB: the old file, verified at its own size, is carried over.
    c.set_conf("ptrack.map_size", "8");
    let old_init = c.init_lsn();
    let mid = Lsn(c.wal_insert_lsn().0 - 1);
    c.stop(StopMode::Fast);
    let mark = c.log_mark();
    c.start();
    let log = c.log_since(mark);
    assert!(
        ptrack_warnings(&log).is_empty(),
        "map_size 16 -> 8: WARNINGs:\n{log}"
    );
    assert!(
        log.contains("ptrack: map resized from 16 to 8 MB: carried over"),
        "map_size 16 -> 8: no LOG line of the carry-over:\n{log}"
    );
    assert_eq!(c.query_one("SHOW ptrack.map_size"), "8MB");
    assert_eq!(c.init_lsn(), old_init, "init LSN after map_size 16 -> 8");
    assert!(
        c.pagemapset(mid).get(&known.0).is_none(),
        "the untouched table is reported for {mid} after map_size 16 -> 8"
    );
    c.psql("CHECKPOINT;");
    read_valid_map(&c, 8);

    // 8 -> 16 MB with a damaged 8 MB file: verified like one of the right
    // size, so discarded.
    let mid = Lsn(c.wal_insert_lsn().0 - 1);
    c.stop(StopMode::Fast);
    let mut b = fs::read(c.map_path()).expect("read map");
    let crc_at = map_len(8) - TRAILER_LEN;
    b[crc_at] ^= 0x80;
    fs::write(c.map_path(), &b).expect("write map");
    c.set_conf("ptrack.map_size", &MAP_SIZE_MB.to_string());
    let mark = c.log_mark();
    c.start();
    let log = c.log_since(mark);
    assert!(
        ptrack_warnings(&log)
            .iter()
            .any(|w| w.contains("ptrack:") && w.contains("discard") && w.contains("CRC")),
        "map_size 8 -> 16 with a damaged file: no discard WARNING:\n{log}"
    );
    let init_damaged = c.init_lsn();
    assert!(
        init_damaged > old_init && init_damaged > mid,
        "init LSN {old_init} -> {init_damaged}, mid {mid}"
    );
    assert_reports_all(
        &c.pagemapset(mid),
        &known.0,
        known.1,
        "after map_size 8 -> 16 with a damaged file",
    );
    c.psql("CHECKPOINT;");
    read_valid_map(&c, MAP_SIZE_MB);

    // 0: tracking off, functions raise errors, map files removed.
    c.stop(StopMode::Fast);
    c.set_conf("ptrack.map_size", "0");
    c.start();
    for sql in [
        "SELECT ptrack_init_lsn()",
        "SELECT count(*) FROM ptrack_get_pagemapset('0/0')",
        "SELECT * FROM ptrack_get_change_stat('0/0')",
    ] {
        let err = c
            .try_psql(sql)
            .expect_err(&format!("{sql} succeeded with ptrack.map_size = 0"));
        assert!(err.contains("ERROR"), "{sql}: {err}");
    }
    let map_files = |c: &Cluster| -> Vec<String> {
        fs::read_dir(c.pgdata.join("global"))
            .expect("readdir global")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("ptrack"))
            .collect()
    };
    assert_eq!(
        map_files(&c),
        Vec::<String>::new(),
        "map files with map_size = 0"
    );
    c.psql("CREATE TABLE while_off AS SELECT 1 AS x; CHECKPOINT;");
    assert_eq!(
        map_files(&c),
        Vec::<String>::new(),
        "map files after a checkpoint with map_size = 0"
    );
    c.stop(StopMode::Fast);
    assert_eq!(
        map_files(&c),
        Vec::<String>::new(),
        "map files after a stop with map_size = 0"
    );

    // Back on: no file, so a new map and a new init LSN.
    let mid = {
        // Before the shutdown checkpoint the new map starts at.
        let cd = Lsn(c.controldata_redo_lsn().0 - 1);
        c.set_conf("ptrack.map_size", &MAP_SIZE_MB.to_string());
        cd
    };
    let mark = c.log_mark();
    c.start();
    let log = c.log_since(mark);
    assert!(
        ptrack_warnings(&log).iter().any(|w| w.contains("ptrack:")),
        "map_size 0 -> 16 with no map file: no WARNING:\n{log}"
    );
    let init16 = c.init_lsn();
    assert!(
        init16 > init_damaged && init16 > mid,
        "init LSN {init_damaged} -> {init16}, last REDO {mid}"
    );
    assert_reports_all(
        &c.pagemapset(mid),
        &known.0,
        known.1,
        "after map_size 0 -> 16",
    );
    c.psql("CHECKPOINT;");
    read_valid_map(&c, MAP_SIZE_MB);
}
