//! The live map left on tmpfs by an earlier run: its header, judged at start
//! against this server's identity, then the map after it, whatever slot
//! values it holds; and the boot identifier parser.
//!
//! Input: 64 bytes of header, 8 bytes of system identifier, 16 bytes of boot
//! id, 8 bytes of the map file's REDO (0: discarded), 8 bytes of flags and
//! the start LSN of a question, then slots (at most 4096) for the map, and
//! the rest as text for the boot id parser.
#![no_main]

use std::mem::{size_of, MaybeUninit};

use libfuzzer_sys::fuzz_target;
use ptrack_core::live::{parse_boot_id, LiveHeader, LiveIdentity, NotResumed, LIVE_MAGIC};
use ptrack_core::{Fork, Lsn, OwnedLsnMap, RelFileKey};

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

fuzz_target!(|data: &[u8]| {
    const HEADER: usize = size_of::<LiveHeader>();
    const FIXED: usize = HEADER + 8 + 16 + 8 + 8 + 2;
    if data.len() < FIXED {
        return;
    }
    // The header as the server finds it in the mapped file: any 64 bytes.
    let mut raw = MaybeUninit::<LiveHeader>::uninit();
    // SAFETY: LiveHeader is plain integers and an atomic integer, every bit
    // pattern of which is valid; the bytes are copied into aligned storage.
    let header = unsafe {
        std::ptr::copy_nonoverlapping(data.as_ptr(), raw.as_mut_ptr().cast::<u8>(), HEADER);
        raw.assume_init()
    };
    let identity = LiveIdentity {
        system_identifier: u64_at(data, HEADER),
        slot_count: u64::from(u16::from_le_bytes([data[FIXED - 2], data[FIXED - 1]])) + 1,
        boot_id: data[HEADER + 8..HEADER + 24].try_into().unwrap(),
    };
    let redo = u64_at(data, HEADER + 24);
    let file_redo = (redo != 0).then_some(Lsn(redo));
    let verdict = header.resumable(&identity, file_redo);
    if verdict.is_ok() {
        assert_eq!(data[..8], LIVE_MAGIC);
        assert_eq!(file_redo, Some(header.base_redo()));
    }
    let _ = verdict.map_err(|e: NotResumed| e.to_string());
    // A header the server writes is resumed by the same server.
    let written = LiveHeader::new(&identity, Lsn(redo));
    assert_eq!(written.resumable(&identity, Some(Lsn(redo))), Ok(()));
    written.set_base_redo(Lsn(redo ^ 1));
    assert!(written.resumable(&identity, Some(Lsn(redo))).is_err());

    // The map after the header, with whatever slot values it holds.
    let flags = u64_at(data, HEADER + 32);
    let rest = &data[FIXED..];
    let slot_bytes = (rest.len() / 8).min(4096) * 8;
    let (slots, text) = rest.split_at(slot_bytes);
    if !slots.is_empty() {
        let owned = OwnedLsnMap::new(slots.len() / 8);
        let map = owned.view();
        let values = slots
            .chunks_exact(8)
            .map(|s| u64::from_le_bytes(s.try_into().unwrap()));
        map.load(Lsn(flags & 0xFFFF), values);
        let file = RelFileKey {
            tablespace: 1663,
            database: (flags >> 16) as u32 & 0xFF,
            relfilenode: (flags >> 24) as u32,
            fork: Fork::from_number(((flags >> 56) & 3) as i32).unwrap(),
        };
        let since = Lsn(flags >> 8 & 0xFFFF);
        let query = map.file_query(&file, since);
        let mut reported = 0u32;
        let first = (flags >> 40) as u32 & 0xFFFF;
        query.for_each_changed(first, 1024, |block| {
            assert!((first..first + 1024).contains(&block));
            assert!(query.changed(block));
            reported += 1;
        });
        let expected = (first..first + 1024).filter(|&b| query.changed(b)).count();
        assert_eq!(
            reported as usize, expected,
            "the batch and the single lookups differ"
        );
        if query.reports_everything() {
            assert_eq!(reported, 1024);
        }
    }

    if let Ok(text) = std::str::from_utf8(text) {
        if let Some(id) = parse_boot_id(text) {
            // Only a UUID's 32 hexadecimal digits (and dashes) make a boot id.
            let digits: String = text.trim().chars().filter(|c| *c != '-').collect();
            assert!(
                digits.len() == 32 && digits.chars().all(|c| c.is_ascii_hexdigit()),
                "{text:?} parsed as {id:?}"
            );
            let formatted: String = id.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(parse_boot_id(&formatted), Some(id));
        }
    }
});
