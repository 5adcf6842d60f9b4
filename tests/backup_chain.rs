//! `ptrack-backup` end to end: a FULL and two incrementals of a cluster under
//! a workload that updates, truncates (DELETE + VACUUM) and regrows (COPY),
//! creates and drops tables; then the chain restored — by stock
//! `pg_combinebackup` on 17+, after `pg_verifybackup` accepted every backup,
//! by `ptrack-backup restore` on 15 — must have the source's relation files
//! block for block and, once started, the same table contents.

mod common;

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use common::backup::{self as tools, server_major};
use common::{Cluster, StopMode};

fn copy_rows(table: &str, ids: std::ops::Range<u32>, pad: &str) -> String {
    let mut sql = format!("COPY {table} (id, pad) FROM STDIN;\n");
    for id in ids {
        writeln!(sql, "{id}\t{pad}{id}").expect("write to a String");
    }
    sql.push_str("\\.\n");
    sql
}

fn setup(c: &Cluster) {
    c.psql(
        "CREATE EXTENSION ptrack;
         CREATE TABLE keep (id int PRIMARY KEY, v text);
         INSERT INTO keep SELECT g, md5(g::text) FROM generate_series(1, 50000) g;
         CREATE TABLE shrink (id int, pad text);
         INSERT INTO shrink SELECT g, repeat('x', 200) FROM generate_series(1, 40000) g;
         CREATE TABLE doomed AS SELECT g AS id FROM generate_series(1, 10000) g;
         CREATE TABLE emptied AS SELECT g AS id FROM generate_series(1, 5000) g;
         CREATE UNLOGGED TABLE scratch AS SELECT g AS id FROM generate_series(1, 1000) g;",
    );
    // Hint bits and visibility map set and on disk before the FULL: the
    // incrementals then carry what the workload changes, not that.
    c.psql("VACUUM;");
    c.psql("CHECKPOINT;");
}

fn shrink_blocks(c: &Cluster) -> u64 {
    c.query_one("SELECT pg_relation_size('shrink') / 8192")
        .parse()
        .expect("a number")
}

fn workload1(c: &Cluster) {
    let before = shrink_blocks(c);
    c.psql(
        "UPDATE keep SET v = 'one' WHERE id % 5000 = 0;
         DELETE FROM shrink WHERE id > 30000;
         VACUUM shrink;",
    );
    let truncated = shrink_blocks(c);
    assert!(
        truncated * 5 < before * 4,
        "VACUUM did not truncate shrink: {before} -> {truncated} blocks"
    );
    c.psql(&copy_rows("shrink", 100_000..103_000, "regrown-"));
    c.psql(
        "CREATE TABLE fresh AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g;
         CREATE INDEX ON fresh (v);
         DROP TABLE doomed;
         VACUUM shrink;",
    );
}

fn workload2(c: &Cluster) {
    c.psql(
        "UPDATE keep SET v = 'two' WHERE id % 7777 = 0;
         DELETE FROM shrink WHERE id > 20000;
         VACUUM shrink;",
    );
    c.psql(&copy_rows("shrink", 200_000..220_000, "again-"));
    c.psql(
        "DELETE FROM fresh WHERE id % 2 = 0;
         VACUUM fresh;
         TRUNCATE emptied;
         INSERT INTO emptied SELECT g FROM generate_series(1, 300) g;
         CREATE TABLE late AS SELECT g AS id FROM generate_series(1, 3000) g;
         INSERT INTO scratch SELECT generate_series(1, 100);",
    );
}

/// The restored cluster: a fresh cluster's directories and settings with the
/// restored data directory in place of its own.
fn restored_cluster(fill: impl FnOnce(&Path)) -> Cluster {
    let mut r = Cluster::new("restored");
    fs::remove_dir_all(&r.pgdata).expect("remove the fresh data directory");
    fill(&r.pgdata);
    tools::chown_tree(&r.pgdata);
    // The restored postgresql.conf includes the test settings file, which is
    // the source's: write this cluster's (its port and socket directory).
    r.set_conf("autovacuum", "off");
    r
}

#[test]
fn full_and_two_incrementals_restore_exactly() {
    let major = server_major();
    let mut c = Cluster::new("backup_chain");
    // Quiet between the steps, so the source's files at the last backup are
    // what the chain must give back.
    c.set_conf("autovacuum", "off");
    if major >= 17 {
        c.set_conf("summarize_wal", "off");
    }
    c.start();
    setup(&c);
    let full = c.base.join("full");
    let inc1 = c.base.join("inc1");
    let inc2 = c.base.join("inc2");
    eprintln!("{}", tools::take_backup(&c, &full, None));
    workload1(&c);
    eprintln!("{}", tools::take_backup(&c, &inc1, Some(&full)));
    workload2(&c);
    c.psql("CHECKPOINT;");
    let mut digests = tools::table_digests(&c, "postgres");
    // An unlogged table comes back empty.
    assert!(digests.remove("scratch").is_some());
    eprintln!("{}", tools::take_backup(&c, &inc2, Some(&inc1)));
    assert!(
        fs::read_to_string(inc2.join("backup_label"))
            .expect("backup_label")
            .contains("INCREMENTAL FROM LSN: "),
        "INC2 is not an incremental backup"
    );
    // Sparse updates: INC2 holds the table as an incremental file.
    let keep = c.query_one("SELECT pg_relation_filepath('keep')");
    let (dir, node) = keep.rsplit_once('/').expect("a relation path");
    assert!(
        inc2.join(dir).join(format!("INCREMENTAL.{node}")).is_file(),
        "INC2 has no incremental file for {keep}"
    );
    let relation_files = tools::user_relation_files(&c, "postgres", &c.pgdata);
    c.stop(StopMode::Fast);
    let snapshot = c.base.join("snapshot");
    c.snapshot(&snapshot);

    let r = restored_cluster(|pgdata| {
        if major >= 17 {
            for dir in [&full, &inc1, &inc2] {
                tools::verifybackup(dir);
            }
            tools::combinebackup(pgdata, &[&full, &inc1, &inc2]);
            tools::verifybackup(pgdata);
        } else {
            tools::restore(pgdata, &[&full, &inc1, &inc2]);
        }
    });
    // Before any replay: the reconstructed relation files are the source's.
    let mut compared = 0;
    for file in &relation_files {
        if file.contains("_init") {
            continue;
        }
        let restored = r.pgdata.join(file);
        let source = snapshot.join(file);
        if !source.exists() {
            continue;
        }
        if let Some(difference) = tools::first_difference(&source, &restored) {
            panic!("relation file {file}: {difference}");
        }
        compared += 1;
    }
    assert!(compared >= 10, "only {compared} relation files compared");
    // A dropped table's files are gone, an unlogged table's data forks were
    // never copied.
    let mut r = r;
    r.start();
    let mut restored = tools::table_digests(&r, "postgres");
    assert_eq!(restored.remove("scratch").as_deref(), Some("0 -"));
    assert_eq!(restored, digests);
    r.stop(StopMode::Fast);
}

#[test]
fn incremental_refused_when_ptrack_started_after_the_parent() {
    let major = server_major();
    let mut c = Cluster::new("backup_refused");
    if major >= 17 {
        c.set_conf("summarize_wal", "off");
    }
    c.start();
    c.psql("CREATE EXTENSION ptrack; CREATE TABLE t AS SELECT generate_series(1, 1000) AS id;");
    let full = c.base.join("full");
    tools::take_backup(&c, &full, None);
    // A lost map: ptrack starts over, with an init LSN after the FULL.
    c.stop(StopMode::Fast);
    fs::remove_file(c.map_path()).expect("remove the map file");
    c.start();
    c.psql("INSERT INTO t SELECT generate_series(1, 1000);");
    let inc = c.base.join("inc");
    let error = tools::try_run(
        "ptrack-backup backup",
        &mut tools::backup_cmd(&c, &inc, Some(&full)),
    )
    .expect_err("an incremental from before ptrack's init LSN must fail");
    assert!(error.contains("create a new FULL backup"), "{error}");
    c.stop(StopMode::Fast);
}
