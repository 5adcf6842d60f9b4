//! The randomized mix the soak runs: pgbench scripts and clients, DDL, and the setup.

use std::fs;

use crate::common::{chown_to_server, workload, Cluster};
use crate::iteration::Soak;
use crate::stats::Stats;

/// Custom pgbench scripts, written into the cluster's base directory.
const SCRIPTS: &[(&str, &str)] = &[
    (
        "soak_update.sql",
        "\\set id random(1, 20000)\nUPDATE setup_t SET v = md5(v) WHERE id = :id;\n",
    ),
    (
        "soak_insert.sql",
        "INSERT INTO soak_log (v) SELECT md5(random()::text) FROM generate_series(1, 20);\n",
    ),
    (
        "soak_delete.sql",
        "DELETE FROM soak_log WHERE id IN (SELECT id FROM soak_log ORDER BY id LIMIT 15);\n",
    ),
    (
        "soak_am.sql",
        "\\set id random(1, 17000)\nUPDATE am_t SET v = md5(v), arr = arr || 3, pt = point(pt[0] + 1, pt[1]), r = int4range(id, id + 7), doc = to_tsvector('simple', md5(v)) WHERE id = :id;\nSELECT nextval('seq_t');\n",
    ),
    (
        "soak_toast_part.sql",
        "\\set id random(1, 500)\n\\set pid random(0, 29999)\nUPDATE toast_t SET big = repeat(md5(random()::text), 220) WHERE id = :id;\nUPDATE part_t SET v = md5(v) WHERE id = :pid;\n",
    ),
    (
        "soak_ts.sql",
        "\\set id random(1, 12000)\nUPDATE ts_resident SET v = md5(v) WHERE id = :id;\n",
    ),
];

/// DDL and maintenance that may run while the server is crashed under it.
pub const TABLE_DDL: &[&str] = &[
    "VACUUM FULL vf_t",
    "CLUSTER cl_t USING cl_t_pkey",
    "TRUNCATE tr_t; INSERT INTO tr_t SELECT g, md5(g::text) FROM generate_series(1, 8000) g",
    "INSERT INTO tr_t SELECT g, md5(g::text) FROM generate_series(1, 20000) g",
    "CREATE INDEX IF NOT EXISTS soak_setup_v ON setup_t (v)",
    "DROP INDEX IF EXISTS soak_setup_v",
    "CREATE INDEX IF NOT EXISTS soak_setup_gin ON setup_t USING gin (arr)",
    "DROP INDEX IF EXISTS soak_setup_gin",
    "REINDEX TABLE cl_t",
    "VACUUM",
    "VACUUM FREEZE setup_t",
    "UPDATE setup_t SET v = md5(v), arr = arr || 2 WHERE id % 13 = 0",
    "DELETE FROM vf_t WHERE id % 5 = 0; INSERT INTO vf_t SELECT g, md5(g::text) FROM generate_series(1, 30000) g WHERE g % 5 = 0",
    "TRUNCATE pgbench_history",
    "DELETE FROM soak_log WHERE id % 3 = 0",
    "TRUNCATE soak_log",
    "ALTER TABLE move_me SET TABLESPACE ts1",
    "ALTER TABLE move_me SET TABLESPACE pg_default",
    "DROP TABLE IF EXISTS soak_ul; CREATE UNLOGGED TABLE soak_ul AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 5000) g",
    "CREATE TABLE IF NOT EXISTS soak_ctas AS SELECT * FROM setup_t WHERE id % 4 = 0",
    "DROP TABLE IF EXISTS soak_ctas",
    "UPDATE am_t SET v = v || 'x', arr = arr || 5, r = int4range(id, id + 30) WHERE id % 29 = 0",
    "DELETE FROM am_t WHERE id % 31 = 0; INSERT INTO am_t SELECT g, md5(g::text), ARRAY[g % 50, 9], point(g % 300, g / 300), to_tsvector('simple', md5(g::text)), int4range(g, g + 3) FROM generate_series(1, 17000) g WHERE g % 31 = 0",
    "VACUUM am_t",
    "REINDEX TABLE am_t",
    "UPDATE toast_t SET big = repeat(md5((id * 3)::text), 260) WHERE id % 5 = 0",
    "SELECT nextval('seq_t') FROM generate_series(1, 500)",
    "ALTER SEQUENCE seq_t RESTART WITH 7",
    "UPDATE part_t SET v = md5(v) WHERE id % 89 = 0",
    "ALTER TABLE part_t_1 SET TABLESPACE ts2",
    "ALTER TABLE part_t_1 SET TABLESPACE pg_default",
    "ALTER TABLE part_t_3 SET TABLESPACE ts1",
    "ALTER TABLE part_t_3 SET TABLESPACE ts2",
];

/// Database-level DDL: run in the foreground only.
const DATABASE_DDL: &[&str] = &[
    "DROP DATABASE IF EXISTS soak_fc; CREATE DATABASE soak_fc STRATEGY file_copy",
    "DROP DATABASE IF EXISTS soak_wl; CREATE DATABASE soak_wl STRATEGY wal_log",
    "DROP DATABASE IF EXISTS soak_fc",
    "DROP DATABASE IF EXISTS soak_wl",
    "ALTER DATABASE d_move SET TABLESPACE ts1",
    "ALTER DATABASE d_move SET TABLESPACE pg_default",
];

pub fn setup(c: &mut Cluster) {
    c.start();
    workload::setup(c);
    c.psql(
        "CREATE TABLE soak_log (id bigserial PRIMARY KEY, v text, ts timestamptz DEFAULT now());
         INSERT INTO soak_log (v) SELECT md5(g::text) FROM generate_series(1, 5000) g;",
    );
    for (file, body) in SCRIPTS {
        let path = c.base.join(file);
        fs::write(&path, body).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        chown_to_server(&path);
    }
}

impl Soak {
    pub fn pgbench_args(&mut self) -> (Vec<String>, String) {
        let n = self.rng.range(1, 4);
        let clients = n.to_string();
        let mut args: Vec<String> = vec!["-n".into(), "-c".into(), clients.clone()];
        args.extend(["-j".into(), n.min(2).to_string()]);
        let label = if self.rng.chance(0.5) {
            let b = *self
                .rng
                .pick(&["tpcb-like", "simple-update", "select-only", "tpcb-like"]);
            args.extend(["-b".into(), b.into()]);
            format!("pgbench -b {b} -c {clients}")
        } else {
            let n = self.rng.range(1, 2);
            let mut names = Vec::new();
            for _ in 0..n {
                let (file, _) = *self.rng.pick(SCRIPTS);
                args.extend(["-f".into(), self.c.base.join(file).display().to_string()]);
                names.push(file.trim_end_matches(".sql").trim_start_matches("soak_"));
            }
            format!("pgbench -f {} -c {clients}", names.join("+"))
        };
        (args, label)
    }

    pub fn pgbench_fg(&mut self, actions: &mut Vec<String>, stats: &mut Stats) {
        let (mut args, label) = self.pgbench_args();
        let secs = self.rng.range(1, 4).to_string();
        args.extend(["-T".into(), secs.clone()]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.c.pgbench(workload::BENCH_DB, &refs);
        stats.pgbench_runs += 1;
        actions.push(format!("{label} -T {secs}"));
    }

    pub fn ddl_fg(&mut self, actions: &mut Vec<String>, stats: &mut Stats) {
        let sql = if self.rng.chance(0.2) {
            *self.rng.pick(DATABASE_DDL)
        } else {
            *self.rng.pick(TABLE_DDL)
        };
        if let Err(e) = self.c.try_psql(&format!("{sql};")) {
            // e.g. ALTER DATABASE while autovacuum is connected to it.
            actions.push(format!(
                "ddl failed: {sql} ({})",
                e.lines().last().unwrap_or("")
            ));
        } else {
            actions.push(format!("ddl: {sql}"));
        }
        stats.ddl_runs += 1;
    }
}
