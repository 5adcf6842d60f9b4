//! The workload the cold-copy tests run between their two snapshots: pgbench
//! plus the operations that create, copy, move or rewrite relation files
//! outside the plain buffer-manager path; and a frozen reference table.

use std::path::PathBuf;

use super::{Cluster, BLCKSZ};

/// Objects created by [`setup`] that the later parts use.
pub struct Workload {
    pub tablespace_dir: PathBuf,
}

/// Database the pgbench tables live in.
pub const BENCH_DB: &str = "postgres";

/// Builds the starting state (before snapshot A). The server must be running.
pub fn setup(c: &Cluster) -> Workload {
    let tablespace_dir = c.create_tablespace_dir("ts1");
    c.psql(&format!(
        "CREATE EXTENSION ptrack;
         CREATE TABLESPACE ts1 LOCATION '{}';",
        tablespace_dir.display()
    ));
    c.pgbench(BENCH_DB, &["-i", "-s", "3", "-q"]);
    c.psql(
        "CREATE TABLE setup_t (id int PRIMARY KEY, v text, arr int[], pt point, doc tsvector);
         INSERT INTO setup_t
           SELECT g, md5(g::text), ARRAY[g % 100, g % 7], point(g % 1000, g / 1000),
                  to_tsvector('simple', md5(g::text))
           FROM generate_series(1, 20000) g;
         CREATE TABLE move_me AS SELECT g AS id, repeat('m', 200) AS pad
           FROM generate_series(1, 5000) g;
         CREATE TABLE vf_t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 30000) g;
         DELETE FROM vf_t WHERE id % 3 = 0;
         CREATE TABLE cl_t (id int PRIMARY KEY, v text);
         INSERT INTO cl_t SELECT g, md5(g::text) FROM generate_series(1, 20000) g ORDER BY random();
         CREATE INDEX cl_t_v ON cl_t (v);
         CREATE TABLE tr_t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 10000) g;
         CREATE TABLE ts_resident (id int, v text) TABLESPACE ts1;
         INSERT INTO ts_resident SELECT g, md5(g::text) FROM generate_series(1, 10000) g;
         CREATE INDEX ts_resident_id ON ts_resident (id) TABLESPACE ts1;
                  CREATE UNLOGGED TABLE ul_old (id int PRIMARY KEY, v text);
         INSERT INTO ul_old SELECT g, md5(g::text) FROM generate_series(1, 5000) g;
         CREATE DATABASE d_move;",
    );
    // Objects whose existing files the workload changes in place after snapshot
    // A: an index of every access method, a TOAST table, a sequence, and a
    // partitioned table with partitions in two tablespaces.
    let tablespace2_dir = c.create_tablespace_dir("ts2");
    c.psql(&format!(
        "CREATE TABLESPACE ts2 LOCATION '{}';",
        tablespace2_dir.display()
    ));
    c.psql(
        "CREATE TABLE am_t (id int, v text, arr int[], pt point, doc tsvector, r int4range);
         INSERT INTO am_t
           SELECT g, md5(g::text), ARRAY[g % 50, g % 9], point(g % 300, g / 300),
                  to_tsvector('simple', md5(g::text)), int4range(g, g + g % 20)
           FROM generate_series(1, 15000) g;
         CREATE INDEX am_t_btree ON am_t (v);
         CREATE INDEX am_t_hash ON am_t USING hash (id);
         CREATE INDEX am_t_gin ON am_t USING gin (arr);
         CREATE INDEX am_t_gist ON am_t USING gist (r);
         CREATE INDEX am_t_spgist ON am_t USING spgist (pt);
         CREATE INDEX am_t_brin ON am_t USING brin (id) WITH (pages_per_range = 4);
         CREATE TABLE toast_t (id int PRIMARY KEY, big text);
         ALTER TABLE toast_t ALTER COLUMN big SET STORAGE EXTERNAL;
         INSERT INTO toast_t SELECT g, repeat(md5(g::text), 200) FROM generate_series(1, 400) g;
         CREATE SEQUENCE seq_t;
         SELECT nextval('seq_t') FROM generate_series(1, 100);
         CREATE TABLE part_t (id int, v text) PARTITION BY RANGE (id);
         CREATE TABLE part_t_1 PARTITION OF part_t FOR VALUES FROM (0) TO (10000);
         CREATE TABLE part_t_2 PARTITION OF part_t FOR VALUES FROM (10000) TO (20000) TABLESPACE ts1;
         CREATE TABLE part_t_3 PARTITION OF part_t FOR VALUES FROM (20000) TO (30000) TABLESPACE ts2;
         INSERT INTO part_t SELECT g, md5(g::text) FROM generate_series(0, 29999) g;
         CREATE INDEX part_t_id ON part_t (id);",
    );
    c.psql_db(
        "d_move",
        "CREATE TABLE dm (id int PRIMARY KEY, v text);
         INSERT INTO dm SELECT g, md5(g::text) FROM generate_series(1, 10000) g;",
    );
    c.psql("VACUUM ANALYZE;");
    Workload { tablespace_dir }
}

/// First half of the workload (after snapshot A).
pub fn part1(c: &Cluster) {
    c.pgbench(BENCH_DB, &["-c", "2", "-j", "2", "-T", "8"]);
    c.psql("CREATE DATABASE d_wal STRATEGY wal_log;");
    c.psql_db(
        "d_wal",
        "CREATE TABLE w AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 10000) g;
         CREATE INDEX w_v ON w (v);",
    );
    c.psql("CREATE DATABASE d_copy STRATEGY file_copy;");
    c.psql_db(
        "d_copy",
        "CREATE TABLE fc AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 10000) g;
         CREATE INDEX fc_v ON fc (v);",
    );
    c.psql(
        "ALTER TABLE move_me SET TABLESPACE ts1;
         ALTER DATABASE d_move SET TABLESPACE ts1;",
    );
    c.psql_db("d_move", "UPDATE dm SET v = v || 'x' WHERE id % 10 = 0;");
    c.psql(
        "INSERT INTO ts_resident SELECT g, md5(g::text) FROM generate_series(10001, 12000) g;
         UPDATE ts_resident SET v = 'updated' WHERE id % 50 = 0;
         UPDATE move_me SET pad = 'moved' WHERE id % 100 = 0;
         CHECKPOINT;",
    );
}

/// Second half of the workload.
pub fn part2(c: &Cluster) {
    c.psql(
        "VACUUM FULL vf_t;
         CLUSTER cl_t USING cl_t_pkey;
         TRUNCATE tr_t;
         INSERT INTO tr_t SELECT g, md5(g::text) FROM generate_series(1, 8000) g;
         CREATE INDEX setup_t_btree ON setup_t (v);
         CREATE INDEX setup_t_gin ON setup_t USING gin (arr);
         CREATE INDEX setup_t_gin_doc ON setup_t USING gin (doc);
         CREATE INDEX setup_t_gist ON setup_t USING gist (pt);
         CREATE INDEX setup_t_brin ON setup_t USING brin (id);
         CREATE INDEX setup_t_hash ON setup_t USING hash (v);
         CREATE INDEX setup_t_spgist ON setup_t USING spgist (pt);
         CREATE UNLOGGED TABLE ul_new (id int, v text);
         INSERT INTO ul_new SELECT g, md5(g::text) FROM generate_series(1, 10000) g;
         CREATE INDEX ul_new_v ON ul_new (v);
         UPDATE ul_old SET v = 'changed' WHERE id % 3 = 0;
                  UPDATE setup_t SET v = v || 'u', arr = arr || 1 WHERE id % 5 = 0;
         DELETE FROM setup_t WHERE id % 11 = 0;",
    );
    c.psql(
        "INSERT INTO am_t
           SELECT g, md5(g::text), ARRAY[g % 50, 77], point(g % 300, g / 300),
                  to_tsvector('simple', md5(g::text)), int4range(g, g + 5)
           FROM generate_series(15001, 17000) g;
         UPDATE am_t SET v = v || 'x', arr = arr || 5, pt = point(pt[0] + 1, pt[1]),
                         r = int4range(id, id + 30)
           WHERE id % 13 = 0;
         DELETE FROM am_t WHERE id % 17 = 0;
         UPDATE toast_t SET big = repeat(md5((id * 7)::text), 250) WHERE id % 4 = 0;
         INSERT INTO toast_t SELECT g, repeat(md5(g::text), 300) FROM generate_series(401, 500) g;
         SELECT nextval('seq_t') FROM generate_series(1, 1000);
         ALTER SEQUENCE seq_t RESTART WITH 5;
         UPDATE part_t SET v = 'changed' WHERE id % 97 = 0;
         INSERT INTO part_t SELECT g, md5(g::text) FROM generate_series(25000, 26000) g;
         ALTER TABLE part_t_1 SET TABLESPACE ts2;
         VACUUM am_t;",
    );
    c.pgbench(BENCH_DB, &["-c", "2", "-j", "2", "-T", "7"]);
    c.psql("VACUUM; ANALYZE;");
}

/// A short burst of writes that leaves dirty buffers behind (crash variant).
pub fn burst(c: &Cluster) {
    c.pgbench(BENCH_DB, &["-n", "-c", "2", "-j", "2", "-T", "4"]);
    c.psql(
        "UPDATE setup_t SET v = v || 'b' WHERE id % 3 = 0;
         INSERT INTO tr_t SELECT g, md5(g::text) FROM generate_series(8001, 20000) g;
         CREATE INDEX tr_t_id ON tr_t (id);
         UPDATE ts_resident SET v = 'burst' WHERE id % 7 = 0;",
    );
}

/// Creates the reference table `known` (frozen, never written again) and
/// returns its file path and block count.
pub fn create_known_table(c: &Cluster) -> (String, u64) {
    c.psql(
        "CREATE EXTENSION IF NOT EXISTS ptrack;
         CREATE TABLE known (id int, pad text) WITH (autovacuum_enabled = off);
         INSERT INTO known SELECT g, repeat('k', 300) FROM generate_series(1, 2000) g;
         VACUUM (FREEZE, ANALYZE) known;
         CHECKPOINT;",
    );
    let path = c.query_one("SELECT pg_relation_filepath('known')");
    let bytes: u64 = c
        .query_one("SELECT pg_relation_size('known')")
        .parse()
        .expect("relation size");
    (path, bytes / BLCKSZ as u64)
}
