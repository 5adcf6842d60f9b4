//! WAL positions: `Lsn`, printed and parsed the way PostgreSQL does.

use std::fmt;
use std::str::FromStr;

/// A WAL position, printed and parsed the way PostgreSQL does (`16/B374D848`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl FromStr for Lsn {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (hi, lo) = s
            .split_once('/')
            .ok_or_else(|| format!("not an LSN (no '/'): {s:?}"))?;
        let hi = u32::from_str_radix(hi, 16).map_err(|e| format!("bad LSN {s:?}: {e}"))?;
        let lo = u32::from_str_radix(lo, 16).map_err(|e| format!("bad LSN {s:?}: {e}"))?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Parses an LSN, panicking with context on malformed input.
pub fn lsn(s: &str) -> Lsn {
    s.parse().unwrap_or_else(|e| panic!("{e}"))
}
