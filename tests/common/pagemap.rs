//! `ptrack_get_pagemapset()` decoded: `PageMap`, `PageMapSet`, and the
//! cluster's ptrack queries that give LSNs and page maps.

use std::collections::BTreeMap;

use super::client::split_rows;
use super::{lsn, Cluster, Lsn};

impl Cluster {
    pub fn wal_insert_lsn(&self) -> Lsn {
        lsn(&self.query_one("SELECT pg_current_wal_insert_lsn()"))
    }

    pub fn init_lsn(&self) -> Lsn {
        lsn(&self.query_one("SELECT ptrack_init_lsn()"))
    }

    /// `ptrack_get_pagemapset(start)`, decoded and checked for internal
    /// consistency (unique paths, pagecount = number of set bits).
    pub fn pagemapset(&self, start: Lsn) -> PageMapSet {
        self.pagemapset_db("postgres", start)
    }

    pub fn pagemapset_db(&self, db: &str, start: Lsn) -> PageMapSet {
        let out = self.psql_db(
            db,
            &format!("SELECT path, pagecount, pagemap FROM ptrack_get_pagemapset('{start}')"),
        );
        PageMapSet::parse(&out)
    }
}

/// One row of `ptrack_get_pagemapset()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageMap {
    pub pagecount: u64,
    pub bitmap: Vec<u8>,
}

impl PageMap {
    pub fn is_set(&self, block: u64) -> bool {
        let byte = (block / 8) as usize;
        byte < self.bitmap.len() && self.bitmap[byte] & (1 << (block % 8)) != 0
    }

    pub fn set_blocks(&self) -> Vec<u64> {
        (0..self.bitmap.len() as u64 * 8)
            .filter(|&b| self.is_set(b))
            .collect()
    }

    pub fn popcount(&self) -> u64 {
        self.bitmap.iter().map(|b| u64::from(b.count_ones())).sum()
    }
}

/// The decoded result of `ptrack_get_pagemapset()`, keyed by path.
#[derive(Clone, Debug, Default)]
pub struct PageMapSet {
    pub maps: BTreeMap<String, PageMap>,
}

impl PageMapSet {
    /// Parses `path|pagecount|\x<hex>` lines, asserting the row invariants.
    pub fn parse(psql_out: &str) -> PageMapSet {
        let mut maps = BTreeMap::new();
        for row in split_rows(psql_out) {
            assert_eq!(row.len(), 3, "bad pagemapset row {row:?}");
            let path = row[0].clone();
            let pagecount: u64 = row[1]
                .parse()
                .unwrap_or_else(|e| panic!("bad pagecount in {row:?}: {e}"));
            let bitmap = parse_bytea(&row[2]);
            let map = PageMap { pagecount, bitmap };
            assert_eq!(
                map.popcount(),
                pagecount,
                "pagecount of {path} does not match the number of bits set in its pagemap"
            );
            assert!(pagecount > 0, "row for {path} reports no page");
            assert!(
                maps.insert(path.clone(), map).is_none(),
                "pagemapset returned {path} twice"
            );
        }
        PageMapSet { maps }
    }

    pub fn get(&self, path: &str) -> Option<&PageMap> {
        self.maps.get(path)
    }

    pub fn is_set(&self, path: &str, block: u64) -> bool {
        self.maps.get(path).is_some_and(|m| m.is_set(block))
    }

    pub fn total_pages(&self) -> u64 {
        self.maps.values().map(|m| m.pagecount).sum()
    }

    pub fn len(&self) -> usize {
        self.maps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.maps.is_empty()
    }
}

/// Decodes psql's hex bytea output (`\x0a1b...`).
pub fn parse_bytea(s: &str) -> Vec<u8> {
    let hex = s
        .strip_prefix("\\x")
        .unwrap_or_else(|| panic!("bytea not in hex format: {s:?}"));
    hex.as_bytes()
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .filter(|p| p.len() == 2)
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .unwrap_or_else(|| panic!("bad bytea hex {s:?}"))
        })
        .collect()
}

/// Path of segment `seg` of a relation whose first segment is `path`.
pub fn segment_path(path: &str, seg: u64) -> String {
    if seg == 0 {
        path.to_string()
    } else {
        format!("{path}.{seg}")
    }
}

/// Asserts that `path` is reported with exactly its blocks `0..blocks`.
pub fn assert_reports_all(set: &PageMapSet, path: &str, blocks: u64, why: &str) {
    assert!(blocks > 0, "{why}: {path} has no block");
    let got = set.get(path).map(|m| m.set_blocks()).unwrap_or_default();
    assert_eq!(
        got,
        (0..blocks).collect::<Vec<_>>(),
        "{why}: {path} must be reported with all of its {blocks} blocks"
    );
}
