//! The `pagemap` column of `ptrack_get_pagemapset`: bit `b % 8` of byte
//! `b / 8` is block `b` of the segment file; trailing zero bytes may be left
//! out.

/// The set blocks, ascending.
pub fn blocks(pagemap: &[u8]) -> Vec<u32> {
    let mut out = Vec::new();
    for (index, &byte) in pagemap.iter().enumerate() {
        let mut bits = byte;
        while bits != 0 {
            let bit = bits.trailing_zeros();
            out.push(index as u32 * 8 + bit);
            bits &= bits - 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_bits_in_order() {
        assert_eq!(blocks(&[]), Vec::<u32>::new());
        assert_eq!(blocks(&[0, 0]), Vec::<u32>::new());
        assert_eq!(blocks(&[0b0000_0001]), vec![0]);
        assert_eq!(blocks(&[0b1000_0010, 0, 0b0000_0101]), vec![1, 7, 16, 18]);
        assert_eq!(blocks(&[0xFF]), (0..8).collect::<Vec<_>>());
    }
}
