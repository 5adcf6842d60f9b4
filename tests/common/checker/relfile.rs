//! Relation files: their names (`<relfilenode>[_fork][.segno]`) and the
//! directories of a data directory that hold them.

use std::fs;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fork {
    Main,
    Fsm,
    Vm,
    Init,
}

/// A relation file name split up: `<relfilenode>[_fork][.segno]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelFileName {
    pub relfilenode: u32,
    pub fork: Fork,
    pub segno: u64,
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Parses a relation file name; None for everything else (temporary relations
/// `t3_16384`, pg_filenode.map, PG_VERSION, pg_internal.init, ptrack.map...).
pub fn parse_relation_file_name(name: &str) -> Option<RelFileName> {
    let (stem, segno) = match name.split_once('.') {
        Some((stem, seg)) if all_digits(seg) => (stem, seg.parse().ok()?),
        Some(_) => return None,
        None => (name, 0),
    };
    let (node, fork) = match stem.split_once('_') {
        Some((node, "fsm")) => (node, Fork::Fsm),
        Some((node, "vm")) => (node, Fork::Vm),
        Some((node, "init")) => (node, Fork::Init),
        Some(_) => return None,
        None => (stem, Fork::Main),
    };
    if !all_digits(node) {
        return None;
    }
    Some(RelFileName {
        relfilenode: node.parse().ok()?,
        fork,
        segno,
    })
}

/// True for the name of a temporary relation's file (`t<backend>_<node>...`).
pub fn is_temp_relation_file_name(name: &str) -> bool {
    name.strip_prefix('t')
        .and_then(|rest| rest.split_once('_'))
        .is_some_and(|(backend, rest)| {
            all_digits(backend) && parse_relation_file_name(rest).is_some()
        })
}

/// Directories (relative to the data directory) that hold relation files.
pub fn relation_dirs(datadir: &Path) -> Vec<String> {
    let mut dirs = vec!["global".to_string()];
    let list = |rel: &str| -> Vec<String> {
        match fs::read_dir(datadir.join(rel)) {
            Ok(rd) => {
                let mut v: Vec<String> = rd
                    .map(|e| {
                        e.expect("readdir entry")
                            .file_name()
                            .to_string_lossy()
                            .into_owned()
                    })
                    .filter(|n| datadir.join(rel).join(n).is_dir())
                    .collect();
                v.sort();
                v
            }
            Err(_) => Vec::new(),
        }
    };
    for db in list("base").into_iter().filter(|n| all_digits(n)) {
        dirs.push(format!("base/{db}"));
    }
    for spc in list("pg_tblspc").into_iter().filter(|n| all_digits(n)) {
        let spc_dir = format!("pg_tblspc/{spc}");
        for ver in list(&spc_dir).into_iter().filter(|n| n.starts_with("PG_")) {
            let ver_dir = format!("{spc_dir}/{ver}");
            for db in list(&ver_dir).into_iter().filter(|n| all_digits(n)) {
                dirs.push(format!("{ver_dir}/{db}"));
            }
        }
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_file_names() {
        let p = parse_relation_file_name;
        assert_eq!(
            p("16384"),
            Some(RelFileName {
                relfilenode: 16384,
                fork: Fork::Main,
                segno: 0
            })
        );
        assert_eq!(p("16384_vm").map(|r| r.fork), Some(Fork::Vm));
        assert_eq!(
            p("16384_fsm.2").map(|r| (r.fork, r.segno)),
            Some((Fork::Fsm, 2))
        );
        assert_eq!(p("16384_init").map(|r| r.fork), Some(Fork::Init));
        assert_eq!(p("16384.1").map(|r| r.segno), Some(1));
        for bad in [
            "t3_16384",
            "pg_filenode.map",
            "PG_VERSION",
            "pg_internal.init",
            "ptrack.map",
            "ptrack.map.tmp",
            "16384_xx",
            "16384.",
        ] {
            assert_eq!(p(bad), None, "{bad}");
        }
        assert!(is_temp_relation_file_name("t3_16384"));
        assert!(is_temp_relation_file_name("t12_16384_fsm.1"));
        assert!(!is_temp_relation_file_name("16384"));
    }
}
