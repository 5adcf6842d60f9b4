//! Log sequence numbers.

use std::fmt;
use std::str::FromStr;

/// A position in the write-ahead log, as PostgreSQL's `XLogRecPtr`.
///
/// `Lsn::INVALID` (0) never names a real WAL position; the map uses it for
/// "never marked" and the init LSN uses it for "not started yet".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const INVALID: Lsn = Lsn(0);

    pub fn is_valid(self) -> bool {
        self != Self::INVALID
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid LSN {0:?}: expected two hexadecimal numbers separated by '/', like 16/B374D848")]
pub struct ParseLsnError(pub String);

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || ParseLsnError(text.to_owned());
        let (high, low) = text.split_once('/').ok_or_else(error)?;
        let parse_half = |half: &str| {
            if half.is_empty() || half.len() > 8 {
                return Err(error());
            }
            u32::from_str_radix(half, 16).map_err(|_| error())
        };
        Ok(Lsn(
            (u64::from(parse_half(high)?) << 32) | u64::from(parse_half(low)?)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_postgres() {
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
    }

    #[test]
    fn parses_what_it_formats() {
        for value in [0, 1, 0x1_0000_0000, 0x16_B374_D848, u64::MAX] {
            assert_eq!(Lsn(value).to_string().parse::<Lsn>(), Ok(Lsn(value)));
        }
        assert_eq!("0/3000028".parse::<Lsn>(), Ok(Lsn(0x300_0028)));
        assert_eq!("a/b".parse::<Lsn>(), Ok(Lsn(0xA_0000_000B)));
    }

    #[test]
    fn rejects_malformed_text() {
        for bad in [
            "",
            "/",
            "1/",
            "/1",
            "1/2/3",
            "x/1",
            "1/123456789",
            "-1/0",
            "1 /2",
        ] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} should not parse");
        }
    }
}
