//! Heap pages: masking out what a hint-bit-only write may change, to tell
//! such a write from a real change, and reading one block of a cold copy.

use std::fs;
use std::path::Path;

use super::BLCKSZ;

/// `HEAP_XMIN_COMMITTED | HEAP_XMIN_INVALID | HEAP_XMAX_COMMITTED |
/// HEAP_XMAX_INVALID`: the tuple hint bits of `t_infomask`.
pub const HEAP_HINT_BITS: u16 = 0x0100 | 0x0200 | 0x0400 | 0x0800;
const SIZE_OF_PAGE_HEADER: usize = 24;
const SIZE_OF_HEAP_TUPLE_HEADER: usize = 23;
const T_INFOMASK_OFFSET: usize = 20;
const LP_NORMAL: u32 = 1;

/// A heap page with everything a hint-bit-only write may change zeroed: the
/// header's `pd_checksum`, `pd_flags` and `pd_prune_xid`, and the hint bits
/// of every normal tuple's `t_infomask` (found through the page's own line
/// pointers). Malformed line pointers are left alone.
pub fn mask_heap_hint_bits(page: &[u8]) -> Vec<u8> {
    assert_eq!(page.len(), BLCKSZ, "not a whole page");
    let mut p = page.to_vec();
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let pd_lower = usize::from(u16_at(&p, 12));
    p[8..12].fill(0); // pd_checksum, pd_flags
    p[20..24].fill(0); // pd_prune_xid
    if !(SIZE_OF_PAGE_HEADER..=BLCKSZ).contains(&pd_lower) {
        return p;
    }
    let mut lp = SIZE_OF_PAGE_HEADER;
    while lp + 4 <= pd_lower {
        let word = u32::from_le_bytes(p[lp..lp + 4].try_into().expect("4 bytes"));
        let off = (word & 0x7FFF) as usize;
        let flags = (word >> 15) & 0x3;
        let len = (word >> 17) as usize;
        if flags == LP_NORMAL && len >= SIZE_OF_HEAP_TUPLE_HEADER && off + len <= BLCKSZ {
            let at = off + T_INFOMASK_OFFSET;
            let infomask = u16_at(&p, at) & !HEAP_HINT_BITS;
            p[at..at + 2].copy_from_slice(&infomask.to_le_bytes());
        }
        lp += 4;
    }
    p
}

/// True when two versions of a heap page differ only in hint bits.
pub fn differs_only_in_hint_bits(old: &[u8], new: &[u8]) -> bool {
    old.len() == BLCKSZ
        && new.len() == BLCKSZ
        && old != new
        && mask_heap_hint_bits(old) == mask_heap_hint_bits(new)
}

/// Block `block` of file `path` (relative to the snapshot root), if whole.
pub fn read_block(root: &Path, path: &str, block: u64) -> Option<Vec<u8>> {
    let bytes = fs::read(root.join(path)).ok()?;
    let start = block as usize * BLCKSZ;
    bytes.get(start..start + BLCKSZ).map(<[u8]>::to_vec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::util::Rng;

    fn page_with_tuple(infomask: u16) -> Vec<u8> {
        let mut p = vec![0u8; BLCKSZ];
        let off = BLCKSZ - 64;
        p[12..14].copy_from_slice(&28u16.to_le_bytes()); // pd_lower: one line pointer
        p[14..16].copy_from_slice(&(off as u16).to_le_bytes());
        p[16..18].copy_from_slice(&(BLCKSZ as u16).to_le_bytes());
        let lp = (off as u32) | (LP_NORMAL << 15) | (40 << 17);
        p[24..28].copy_from_slice(&lp.to_le_bytes());
        p[off + 20..off + 22].copy_from_slice(&infomask.to_le_bytes());
        p[off + 30] = 0xAB; // tuple data
        p
    }

    #[test]
    fn hint_bits_are_masked_and_nothing_else() {
        let a = page_with_tuple(0x0002);
        let mut b = page_with_tuple(0x0002 | 0x0100 | 0x0800);
        b[10] = 0x04; // PD_ALL_VISIBLE
        b[8] = 0x55; // checksum
        assert!(differs_only_in_hint_bits(&a, &b));
        let mut c = b.clone();
        c[BLCKSZ - 64 + 30] = 0xAC;
        assert!(!differs_only_in_hint_bits(&a, &c));
        let d = page_with_tuple(0x0002 | 0x0010); // HEAP_XMAX_LOCK_ONLY: not a hint
        assert!(!differs_only_in_hint_bits(&a, &d));
        let mut rng = Rng::new(7);
        assert!((0..100).all(|_| rng.range(3, 5) >= 3));
    }
}
