//! `ptrack-backup` end to end: a FULL and three incrementals of a cluster
//! under workloads between them (pgbench; DELETE + VACUUM truncation, then
//! regrowth by COPY in the next interval; DDL; CREATE DATABASE with both
//! strategies; ALTER TABLE and ALTER DATABASE SET TABLESPACE; VACUUM FULL; an
//! immediate stop and crash recovery). Every point of the chain is restored —
//! by stock `pg_combinebackup` on 17+, after `pg_verifybackup` accepted every
//! backup, by `ptrack-backup restore` on 15 — and must have the quiesced
//! source's relation files block for block; started, the same table contents
//! in every database, a clean `pg_amcheck` and, stopped, `pg_checksums --check`.
//! The same backups restored by pg_probackup's rule must match too.

mod common;

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use common::backup::{self as tools, server_major};
use common::{probackup_rule, Cluster, StopMode};

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
         CREATE UNLOGGED TABLE scratch AS SELECT g AS id FROM generate_series(1, 1000) g;
         CREATE TABLESPACE spc LOCATION '';
         CREATE DATABASE tmpl;",
    );
    c.psql_db(
        "tmpl",
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20000) g;",
    );
    c.pgbench("postgres", &["-i", "-q", "-s", "1"]);
    // Hint bits and visibility map set and on disk before the FULL: the
    // incrementals then carry what the workloads change, not that.
    c.psql("VACUUM;");
    c.psql_db("tmpl", "VACUUM;");
    c.psql("CHECKPOINT;");
}

fn pgbench(c: &Cluster) {
    c.pgbench("postgres", &["-n", "-c", "2", "-t", "300"]);
}

fn shrink_blocks(c: &Cluster) -> u64 {
    c.query_one("SELECT pg_relation_size('shrink') / 8192")
        .parse()
        .expect("a number")
}

/// Truncation (the regrowth comes in the next interval), DDL, new databases.
fn workload1(c: &Cluster) {
    pgbench(c);
    let before = shrink_blocks(c);
    c.psql(
        "UPDATE keep SET v = 'one' WHERE id % 5000 = 0;
         DELETE FROM shrink WHERE id > 1000;
         VACUUM shrink;",
    );
    let truncated = shrink_blocks(c);
    assert!(
        truncated * 10 < before,
        "VACUUM did not truncate shrink: {before} -> {truncated} blocks"
    );
    c.psql(
        "CREATE TABLE fresh AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g;
         CREATE INDEX ON fresh (v);
         DROP TABLE doomed;
         CREATE DATABASE db_wal TEMPLATE tmpl STRATEGY wal_log;
         CREATE DATABASE db_copy TEMPLATE tmpl STRATEGY file_copy;",
    );
}

/// The truncated table grown back by COPY (bulk extension leaves zero
/// blocks no WAL record names), a table moved to another tablespace,
/// VACUUM FULL, changes in the copied databases.
fn workload2(c: &Cluster) {
    for round in 0..3 {
        let first = 100_000 + round * 5_000;
        c.psql(&copy_rows("shrink", first..first + 5_000, "regrown-"));
    }
    pgbench(c);
    c.psql(
        "ALTER TABLE keep SET TABLESPACE spc;
         UPDATE keep SET v = 'two' WHERE id % 7777 = 0;
         VACUUM FULL fresh;
         TRUNCATE emptied;
         INSERT INTO emptied SELECT g FROM generate_series(1, 300) g;
         CREATE TABLE late AS SELECT g AS id FROM generate_series(1, 3000) g;",
    );
    for db in ["db_wal", "db_copy"] {
        c.psql_db(
            db,
            "UPDATE t SET v = 'changed' WHERE id % 100 = 0;
             INSERT INTO t SELECT g, 'new' FROM generate_series(20001, 25000) g;",
        );
    }
}

/// A database moved to another tablespace and copied from there, more
/// changes, then an immediate stop and crash recovery.
fn workload3(c: &mut Cluster) {
    c.psql(
        "ALTER DATABASE db_copy SET TABLESPACE spc;
         CREATE DATABASE db_copy2 TEMPLATE db_copy STRATEGY file_copy;",
    );
    c.psql_db("db_copy", "DELETE FROM t WHERE id % 3 = 0; VACUUM t;");
    pgbench(c);
    c.psql(
        "DELETE FROM fresh WHERE id % 2 = 0;
         VACUUM fresh;
         ALTER TABLE keep SET TABLESPACE pg_default;
         INSERT INTO scratch SELECT generate_series(1, 100);",
    );
    c.psql(&copy_rows("shrink", 200_000..205_000, "again-"));
    c.stop(StopMode::Immediate);
    c.start();
}

/// A fresh cluster's directories and settings with `fill` writing its data
/// directory; not started.
fn restored_cluster(name: &str, fill: impl FnOnce(&Path)) -> Cluster {
    let mut r = Cluster::new(name);
    fs::remove_dir_all(&r.pgdata).expect("remove the fresh data directory");
    fill(&r.pgdata);
    tools::chown_tree(&r.pgdata);
    // The restored postgresql.conf includes the test settings file, which is
    // the source's: write this cluster's (its port and socket directory).
    r.set_conf("autovacuum", "off");
    r.set_conf("allow_in_place_tablespaces", "on");
    r
}

/// Restores `chain` (FULL first), compares it with the quiet source `c`
/// block for block over `relation_files`, then starts it and checks its
/// contents against `digests`, amcheck and data checksums.
fn check_restore(
    c: &Cluster,
    chain: &[PathBuf],
    relation_files: &[String],
    digests: &tools::ClusterDigests,
) {
    let point = chain.len() - 1;
    let major = server_major();
    let chain: Vec<&Path> = chain.iter().map(PathBuf::as_path).collect();
    let mut r = restored_cluster(&format!("restored{point}"), |pgdata| {
        if major >= 17 {
            tools::verifybackup(chain[point]);
            tools::combinebackup(pgdata, &chain);
            tools::verifybackup(pgdata);
        } else {
            tools::restore(pgdata, &chain);
        }
    });
    // Before any replay: the reconstructed relation files are the source's.
    let mut compared = 0;
    for file in relation_files {
        if let Some(difference) =
            tools::first_difference(&c.pgdata.join(file), &r.pgdata.join(file))
        {
            panic!("point {point}: relation file {file}: {difference}");
        }
        compared += 1;
    }
    assert!(
        compared >= 20,
        "point {point}: only {compared} relation files compared"
    );
    // The same backups restored by pg_probackup's rule, which does not stop
    // at an intermediate backup's truncation length as pg_combinebackup does.
    for file in relation_files {
        let source = fs::read(c.pgdata.join(file)).expect("read a source relation file");
        let restored = probackup_rule::restore_file(&chain, file)
            .unwrap_or_else(|| panic!("point {point}: the newest backup has no {file}"));
        if let Some(difference) = tools::first_block_difference(&source, &restored) {
            panic!("point {point}: {file} restored by pg_probackup's rule: {difference}");
        }
    }
    r.start();
    let mut restored = tools::cluster_digests(&r);
    // An unlogged table comes back empty.
    let scratch = restored
        .get_mut("postgres")
        .and_then(|tables| tables.remove("scratch"));
    assert_eq!(scratch.as_deref(), Some("0 -"), "point {point}: scratch");
    assert_eq!(&restored, digests, "point {point}: table contents");
    tools::amcheck(&r);
    r.stop(StopMode::Fast);
    let checksums = r.tool(
        "pg_checksums",
        &["--check", "-D", &r.pgdata.display().to_string()],
    );
    eprintln!(
        "point {point}: {compared} relation files equal; {}",
        checksums.trim().replace('\n', "; ")
    );
}

#[test]
fn full_and_three_incrementals_restore_at_every_point() {
    let major = server_major();
    let mut c = Cluster::new("backup_chain");
    // Quiet between the steps, so the source's files at each backup are what
    // the chain up to it must give back.
    c.set_conf("autovacuum", "off");
    c.set_conf("allow_in_place_tablespaces", "on");
    if major >= 17 {
        c.set_conf("summarize_wal", "off");
    }
    c.start();
    setup(&c);
    let mut chain: Vec<PathBuf> = Vec::new();
    for point in 0..4 {
        match point {
            0 => {}
            1 => workload1(&c),
            2 => workload2(&c),
            _ => workload3(&mut c),
        }
        c.psql("CHECKPOINT;");
        let mut digests = tools::cluster_digests(&c);
        digests
            .get_mut("postgres")
            .and_then(|tables| tables.remove("scratch"))
            .expect("the unlogged table");
        let dir = c.base.join(format!("backup{point}"));
        eprintln!(
            "{}",
            tools::take_backup(&c, &dir, chain.last().map(PathBuf::as_path))
        );
        if point > 0 {
            assert!(
                fs::read_to_string(dir.join("backup_label"))
                    .expect("backup_label")
                    .contains("INCREMENTAL FROM LSN: "),
                "backup {point} is not an incremental backup"
            );
        }
        chain.push(dir);
        // The source stays up, so that each incremental asks ptrack about an
        // interval without a restart (one that follows a crash or a restart
        // gets the free space map and visibility map in full). It is quiet:
        // the backup's checkpoint wrote every page the workload dirtied.
        let relation_files = tools::cluster_relation_files(&c);
        check_restore(&c, &chain, &relation_files, &digests);
    }
    // Sparse updates: the last incremental holds a table as an incremental file.
    let accounts = c.query_one("SELECT pg_relation_filepath('pgbench_accounts')");
    let (dir, node) = accounts.rsplit_once('/').expect("a relation path");
    assert!(
        chain[3]
            .join(dir)
            .join(format!("INCREMENTAL.{node}"))
            .is_file(),
        "the last incremental has no incremental file for {accounts}"
    );
    c.stop(StopMode::Fast);
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
