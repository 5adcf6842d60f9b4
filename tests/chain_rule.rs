//! A chain restored by pg_probackup's rule, from three cold copies: each
//! block from the newest backup that has it, the file's length from the
//! newest backup only ("if the file was truncated in an intermediate backup …
//! old blocks will be overwritten by new blocks from the next backup"). A
//! relation truncated between the FULL and INC1 and grown back by zero blocks
//! (bulk extension, never WAL-logged) between INC1 and INC2 must not get the
//! FULL's old blocks back.

mod common;

use std::fs;
use std::path::Path;

use common::{checker, Cluster, Lsn, PageMapSet, StopMode, BLCKSZ};

/// A cold copy: stop, copy, note the REDO LSN a backup started there would
/// carry, start again.
fn cold_copy(c: &mut Cluster, name: &str) -> (std::path::PathBuf, Lsn) {
    c.stop(StopMode::Fast);
    let dir = c.base.join(name);
    c.snapshot(&dir);
    let redo = c.controldata_redo_lsn();
    c.start();
    (dir, redo)
}

fn blocks(path: &Path) -> Vec<Vec<u8>> {
    fs::read(path)
        .map(|bytes| bytes.chunks(BLCKSZ).map(<[u8]>::to_vec).collect())
        .unwrap_or_default()
}

/// Block `b` as the chain FULL (`c0`), INC1 (`c1` with `p0`, the pagemap
/// for the FULL's start), INC2 (`c2` with `p1`) restores it.
fn restored_block(
    file: &str,
    b: usize,
    copies: [&[Vec<u8>]; 3],
    pagemaps: [&PageMapSet; 2],
) -> Vec<u8> {
    let [c0, c1, c2] = copies;
    let [p0, p1] = pagemaps;
    if p1.is_set(file, b as u64) {
        return c2[b].clone();
    }
    if b < c1.len() && p0.is_set(file, b as u64) {
        return c1[b].clone();
    }
    c0.get(b).cloned().unwrap_or_else(|| vec![0; BLCKSZ])
}

#[test]
fn a_relation_truncated_then_regrown_restores_exactly_through_a_chain() {
    let mut c = Cluster::new("chain_rule");
    c.set_conf("autovacuum", "off");
    c.start();
    c.psql(
        "CREATE EXTENSION ptrack;
         CREATE TABLE t (id int, pad text) WITH (fillfactor = 100);
         INSERT INTO t SELECT g, repeat('x', 150) FROM generate_series(1, 45000) g;
         VACUUM t;",
    );
    let path = c.query_one("SELECT pg_relation_filepath('t')");
    let (full, l0) = cold_copy(&mut c, "full");
    c.psql("DELETE FROM t WHERE id > 500; VACUUM t;");
    let (inc1, l1) = cold_copy(&mut c, "inc1");
    let p0 = c.pagemapset(l0);
    // Three COPYs: bulk extension leaves all-zero blocks at the end.
    for round in 0..3u32 {
        let mut sql = String::from("COPY t (id, pad) FROM STDIN;\n");
        for id in 100_000 + round * 6000..100_000 + (round + 1) * 6000 {
            sql.push_str(&format!("{id}\t{}\n", "z".repeat(150)));
        }
        sql.push_str("\\.\n");
        c.psql(&sql);
    }
    let (inc2, _) = cold_copy(&mut c, "inc2");
    let p1 = c.pagemapset(l1);
    c.stop(StopMode::Fast);

    let [b0, b1, b2] = [&full, &inc1, &inc2].map(|dir| blocks(&dir.join(&path)));
    assert!(
        b1.len() * 10 < b0.len() && b2.len() > b1.len(),
        "the table was not truncated and regrown: {} -> {} -> {} blocks",
        b0.len(),
        b1.len(),
        b2.len()
    );
    let zero_regrown = (b1.len()..b2.len())
        .filter(|&b| b2[b].iter().all(|&x| x == 0))
        .count();
    eprintln!(
        "[chain_rule] {} -> {} -> {} blocks; {zero_regrown} all-zero blocks in the regrowth",
        b0.len(),
        b1.len(),
        b2.len()
    );
    let mut stale = Vec::new();
    for dir in checker::relation_dirs(&inc2) {
        for entry in fs::read_dir(inc2.join(&dir)).expect("relation dir") {
            let name = entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned();
            if checker::parse_relation_file_name(&name).is_none() {
                continue;
            }
            let file = format!("{dir}/{name}");
            let copies = [&full, &inc1, &inc2].map(|d| blocks(&d.join(&file)));
            for (b, want) in copies[2].iter().enumerate() {
                let got =
                    restored_block(&file, b, [&copies[0], &copies[1], &copies[2]], [&p0, &p1]);
                if &got != want {
                    stale.push(format!("{file} block {b}"));
                }
            }
        }
    }
    assert!(
        stale.is_empty(),
        "{} blocks restored stale through FULL -> INC1 -> INC2 (first 10): {:?}",
        stale.len(),
        &stale[..stale.len().min(10)]
    );
}
