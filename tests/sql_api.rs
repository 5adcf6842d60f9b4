//! The SQL interface of the extension: functions, results and privileges.

mod common;

use common::{Cluster, Lsn, PageMapSet, StopMode, BLCKSZ};

/// Number of blocks of a relation fork, from the server.
fn nblocks(c: &Cluster, rel: &str, fork: &str) -> u64 {
    let bytes: u64 = c
        .query_one(&format!("SELECT pg_relation_size('{rel}', '{fork}')"))
        .parse()
        .expect("pg_relation_size is a number");
    bytes / BLCKSZ as u64
}

fn filepath(c: &Cluster, rel: &str) -> String {
    c.query_one(&format!("SELECT pg_relation_filepath('{rel}')"))
}

/// Asserts that `path` is reported with exactly blocks 0..n (all of them).
fn assert_all_blocks(set: &PageMapSet, path: &str, n: u64, why: &str) {
    assert!(n > 0, "{path} has no blocks, test setup is wrong");
    let map = set
        .get(path)
        .unwrap_or_else(|| panic!("{why}: {path} is not reported at all"));
    assert_eq!(
        map.set_blocks(),
        (0..n).collect::<Vec<_>>(),
        "{why}: {path} must be reported with all of its {n} blocks"
    );
}

fn assert_not_reported(set: &PageMapSet, path: &str) {
    let reported = set.get(path).map(|m| m.set_blocks()).unwrap_or_default();
    assert!(
        reported.is_empty(),
        "{path} did not change but is reported: {reported:?}"
    );
}

fn hook_mode(c: &Cluster) -> bool {
    c.query_one("SELECT mode FROM ptrack_status()") == "hooks"
}

fn ext_schema(c: &Cluster) -> String {
    c.query_one(
        "SELECT extnamespace::regnamespace FROM pg_catalog.pg_extension WHERE extname = 'ptrack'",
    )
}

#[test]
fn functions_report_changed_blocks() {
    let mut c = Cluster::new("sql_api");
    // Nothing but this test may write: the assertions are about exact blocks.
    c.set_conf("autovacuum", "off");
    c.start();
    c.psql("CREATE EXTENSION ptrack;");

    // Versions and settings.
    assert_eq!(c.query_one("SELECT ptrack_version()"), "2.4");
    let ext = c.query_rows(
        "SELECT extnamespace::regnamespace, extversion FROM pg_catalog.pg_extension \
         WHERE extname = 'ptrack'",
    );
    assert_eq!(ext.len(), 1, "pg_extension rows for ptrack: {ext:?}");
    let (major, minor) = ext[0][1]
        .split_once('.')
        .unwrap_or_else(|| panic!("extversion {:?} is not MAJOR.MINOR", ext[0][1]));
    assert_eq!(major, "2", "extversion {:?}", ext[0][1]);
    minor
        .parse::<u32>()
        .unwrap_or_else(|e| panic!("extversion {:?}: {e}", ext[0][1]));
    assert_eq!(c.query_one("SHOW ptrack.map_size"), "16MB");

    // Two tables written before L; only one block of one of them after.
    c.psql(
        "CREATE TABLE untouched (id int, pad text) WITH (autovacuum_enabled = off);
         INSERT INTO untouched SELECT g, repeat('u', 500) FROM generate_series(1, 200) g;
         CREATE TABLE t (id int, pad text) WITH (fillfactor = 50, autovacuum_enabled = off);
         INSERT INTO t SELECT g, repeat('t', 500) FROM generate_series(1, 200) g;
         VACUUM (FREEZE, ANALYZE) untouched, t;
         CHECKPOINT;",
    );
    let init = c.init_lsn();
    let current = c.wal_insert_lsn();
    assert!(init > Lsn(0), "ptrack_init_lsn() is 0/0 after writes");
    assert!(
        init <= current,
        "ptrack_init_lsn() {init} is ahead of the WAL insert position {current}"
    );

    let t_path = filepath(&c, "t");
    let untouched_path = filepath(&c, "untouched");
    let t_blocks = nblocks(&c, "t", "main");
    let untouched_blocks = nblocks(&c, "untouched", "main");
    assert!(t_blocks > 8, "t has only {t_blocks} blocks");

    let l = c.wal_insert_lsn();
    c.psql("UPDATE t SET id = id WHERE ctid = '(3,1)'; CHECKPOINT;");
    let set = c.pagemapset(l);
    let t_map = set.get(&t_path).unwrap_or_else(|| {
        panic!("block 3 of t was updated after {l} but {t_path} is not reported")
    });
    assert!(
        t_map.is_set(3),
        "block 3 of {t_path} was updated after {l}; reported blocks: {:?}",
        t_map.set_blocks()
    );
    assert!(
        t_map.pagecount <= 2,
        "one HOT update after {l} but {t_path} reports blocks {:?}",
        t_map.set_blocks()
    );
    assert!(
        set.get(&untouched_path).is_none(),
        "{untouched_path} (table 'untouched') was not written after {l} but is reported: {:?}",
        set.get(&untouched_path).map(|m| m.set_blocks())
    );
    // FSM and VM forks: in hook mode answered block by block, a checkpoint
    // having run since the start (before L); in WAL mode reported in full.
    if hook_mode(&c) {
        for fork in ["fsm", "vm"] {
            assert_not_reported(&set, &format!("{untouched_path}_{fork}"));
        }
        // The update cleared block 3's all-visible bit on the VM's page.
        assert!(
            set.is_set(&format!("{t_path}_vm"), 0),
            "the visibility map of {t_path} changed after {l} but is not reported"
        );
    } else {
        for (rel, path) in [("t", &t_path), ("untouched", &untouched_path)] {
            for fork in ["fsm", "vm"] {
                let n = nblocks(&c, rel, fork);
                assert_all_blocks(
                    &set,
                    &format!("{path}_{fork}"),
                    n,
                    &format!("{fork} fork of {rel} in WAL mode"),
                );
            }
        }
    }

    // pg_probackup's query, with a parameter ($1), plain and schema-qualified.
    // A server-side prepared statement binds it the way the extended protocol
    // does, on every psql version (\bind needs psql 16).
    let schema = ext_schema(&c);
    for func in [
        "ptrack_get_pagemapset".to_string(),
        format!("{schema}.ptrack_get_pagemapset"),
    ] {
        let out = c.psql(&format!(
            "PREPARE probackup(pg_lsn) AS SELECT path, pagemap FROM {func}($1) ORDER BY 1;
             EXECUTE probackup('{l}');"
        ));
        let rows = common::split_rows(&out);
        let paths: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
        let mut sorted = paths.clone();
        sorted.sort_unstable();
        assert_eq!(paths, sorted, "ORDER BY 1 result is not sorted");
        let t_row = rows
            .iter()
            .find(|r| r[0] == t_path)
            .unwrap_or_else(|| panic!("{t_path} missing from pg_probackup's query via {func}"));
        assert!(
            common::parse_bytea(&t_row[1])
                .first()
                .is_some_and(|b| b & (1 << 3) != 0),
            "bit 3 of {t_path} not set in {:?}",
            t_row[1]
        );
    }

    // Before the init LSN nothing is known: every block is reported.
    for start in [Lsn(0), Lsn(init.0 - 1)] {
        let all = c.pagemapset(start);
        let why = format!("start LSN {start} < init LSN {init}");
        assert_all_blocks(&all, &untouched_path, untouched_blocks, &why);
        assert_all_blocks(&all, &t_path, t_blocks, &why);
        assert!(
            all.total_pages() > set.total_pages(),
            "{why}: reports {} pages, no more than for {l} ({})",
            all.total_pages(),
            set.total_pages()
        );
    }

    // STRICT: NULL in, nothing out.
    assert_eq!(
        c.query_one("SELECT count(*) FROM ptrack_get_pagemapset(NULL)"),
        "0"
    );
    assert_eq!(
        c.query_one("SELECT count(*) FROM ptrack_get_change_stat(NULL) WHERE files IS NOT NULL"),
        "0"
    );

    // change_stat agrees with the pagemapset; retry if a background write
    // (hint bits on catalogs) changed the set between the two calls.
    let sums = format!("SELECT count(*), sum(pagecount) FROM ptrack_get_pagemapset('{l}')");
    let stat = format!("SELECT files, pages, \"size, MB\" FROM ptrack_get_change_stat('{l}')");
    let mut attempts = Vec::new();
    let agreed = (0..5).any(|_| {
        let before = c.query_rows(&sums);
        let st = c.query_rows(&stat);
        let after = c.query_rows(&sums);
        let ok = before == after
            && st.len() == 1
            && st[0][0] == before[0][0]
            && st[0][1].parse::<f64>().ok() == before[0][1].parse::<f64>().ok()
            && st[0][2].parse::<f64>().is_ok_and(|mb| {
                let pages: f64 = before[0][1].parse().unwrap_or(f64::NAN);
                (mb - pages * BLCKSZ as f64 / 1048576.0).abs() < 1e-6
            });
        attempts.push(format!(
            "pagemapset {before:?} / change_stat {st:?} / pagemapset {after:?}"
        ));
        ok
    });
    assert!(
        agreed,
        "ptrack_get_change_stat disagrees with the pagemapset:\n{}",
        attempts.join("\n")
    );
}

/// ptrack 2.4's functions are executable by PUBLIC, and pg_probackup's
/// documented backup role gets USAGE on the extension's schema and nothing
/// more for ptrack: out of the box such a role takes PTRACK backups. A DBA who
/// wants least privilege revokes from PUBLIC and grants to the backup role
/// (the README's recipe); then only that role may read the maps.
/// Hook mode answers the free space map and the visibility map block by
/// block only from the first checkpoint after the server processes last
/// started: a process killed between a write of theirs and its mark leaves
/// nothing that redo writes again.
#[test]
fn side_forks_are_reported_in_full_until_a_checkpoint_after_a_crash() {
    let mut c = Cluster::new("sql_api_side_forks");
    c.set_conf("autovacuum", "off");
    // No timed checkpoint between the restart and the questions.
    c.set_conf("checkpoint_timeout", "'1h'");
    c.start();
    c.psql("CREATE EXTENSION ptrack;");
    if !hook_mode(&c) {
        eprintln!("WAL mode reports these forks in full (functions_report_changed_blocks)");
        return;
    }
    c.psql(
        "CREATE TABLE untouched (id int, pad text);
         INSERT INTO untouched SELECT g, repeat('u', 500) FROM generate_series(1, 2000) g;
         VACUUM (FREEZE) untouched;
         CHECKPOINT;",
    );
    let path = filepath(&c, "untouched");
    let forks = [
        ("fsm", nblocks(&c, "untouched", "fsm")),
        ("vm", nblocks(&c, "untouched", "vm")),
    ];
    let before_crash = c.wal_insert_lsn();
    assert_not_reported(&c.pagemapset(before_crash), &format!("{path}_vm"));
    c.stop(StopMode::Immediate);
    c.start();
    // Crash recovery's own checkpoint does not count: the startup process
    // replays, and nothing since the restart is vouched for yet.
    let after_restart = c.wal_insert_lsn();
    for since in [before_crash, after_restart] {
        let set = c.pagemapset(since);
        for (fork, n) in forks {
            assert_all_blocks(
                &set,
                &format!("{path}_{fork}"),
                n,
                &format!("{fork} fork, since {since}, before a checkpoint after the crash"),
            );
        }
    }
    c.psql("CHECKPOINT;");
    let after_checkpoint = c.wal_insert_lsn();
    let set = c.pagemapset(after_checkpoint);
    for (fork, _) in forks {
        assert_not_reported(&set, &format!("{path}_{fork}"));
    }
    // Earlier start LSNs still get everything.
    assert_all_blocks(
        &c.pagemapset(before_crash),
        &format!("{path}_fsm"),
        forks[0].1,
        "fsm fork since before the crash",
    );
    // A clean stop kills no process between a write and its mark: the live
    // map it keeps (hook mode, tmpfs) is resumed still answering block by
    // block.
    let live_while_running = c.live_map_file().is_some();
    c.stop(StopMode::Fast);
    let mark = c.log_mark();
    c.start();
    let resumed = c.log_since(mark).contains("ptrack: resumed the live map");
    assert!(
        resumed || !live_while_running,
        "a clean restart did not resume the live map kept in tmpfs"
    );
    let set = c.pagemapset(after_checkpoint);
    for (fork, n) in forks {
        let name = format!("{path}_{fork}");
        if resumed {
            assert_not_reported(&set, &name);
        } else {
            eprintln!("no live map kept over the clean stop (no tmpfs)");
            assert_all_blocks(&set, &name, n, &format!("{fork} fork, map loaded"));
        }
    }
    // After a reboot (no live map) the file written by the clean stop holds
    // every mark made before it, and the position it records: still block
    // by block.
    c.stop(StopMode::Fast);
    if let Some(live) = c.live_map_file() {
        std::fs::remove_file(&live).expect("remove the live map");
    }
    let mark = c.log_mark();
    c.start();
    assert!(
        c.log_since(mark).contains("ptrack: loaded map"),
        "the map was not loaded from its file"
    );
    let set = c.pagemapset(after_checkpoint);
    for (fork, _) in forks {
        assert_not_reported(&set, &format!("{path}_{fork}"));
    }
    // After an operating-system crash the file is the last checkpoint's,
    // and writes of these forks since it may have lost their marks: in full.
    c.psql("UPDATE untouched SET pad = 'x' WHERE id < 10; CHECKPOINT;");
    c.stop(StopMode::Immediate);
    if let Some(live) = c.live_map_file() {
        std::fs::remove_file(&live).expect("remove the live map");
    }
    c.start();
    let set = c.pagemapset(after_checkpoint);
    for (fork, n) in forks {
        assert_all_blocks(
            &set,
            &format!("{path}_{fork}"),
            n,
            &format!("{fork} fork, since {after_checkpoint}, map loaded after a crash"),
        );
    }
    c.stop(StopMode::Fast);
}

#[test]
fn privileges_and_temporary_relations() {
    let mut c = Cluster::new("sql_priv");
    c.start();
    c.psql("CREATE SCHEMA ptrack; CREATE EXTENSION ptrack SCHEMA ptrack; CREATE ROLE backup LOGIN; CREATE ROLE snoop LOGIN;");
    let schema = ext_schema(&c);
    assert_eq!(schema, "ptrack");
    let calls = [
        "SELECT ptrack.ptrack_version()",
        "SELECT ptrack.ptrack_init_lsn()",
        "SELECT count(*) FROM ptrack.ptrack_get_pagemapset('0/0')",
        "SELECT files FROM ptrack.ptrack_get_change_stat('0/0')",
    ];
    // As pg_probackup documents it: USAGE on the schema, nothing else.
    c.psql("GRANT USAGE ON SCHEMA ptrack TO backup, snoop;");
    let run_all = |role: &str| -> Vec<Result<String, String>> {
        calls
            .iter()
            .map(|sql| {
                c.try_psql_as("postgres", role, sql)
                    .map(|out| out.trim().to_string())
            })
            .collect()
    };
    let outputs: Vec<String> = run_all("backup")
        .into_iter()
        .zip(calls)
        .map(|(out, sql)| {
            out.unwrap_or_else(|e| panic!("pg_probackup's backup role cannot run {sql}: {e}"))
        })
        .collect();
    assert_eq!(outputs[0], "2.4");
    assert!(
        outputs[1].parse::<Lsn>().is_ok(),
        "init LSN {:?}",
        outputs[1]
    );
    assert!(
        outputs[2].parse::<u64>().is_ok_and(|n| n > 100),
        "pagemapset('0/0') as backup reports {:?} files",
        outputs[2]
    );

    // The least-privilege recipe of the README.
    c.psql(
        "REVOKE EXECUTE ON FUNCTION ptrack.ptrack_version(), ptrack.ptrack_init_lsn(),
           ptrack.ptrack_get_pagemapset(pg_lsn), ptrack.ptrack_get_change_stat(pg_lsn),
           ptrack.ptrack_status() FROM PUBLIC;
         GRANT EXECUTE ON FUNCTION ptrack.ptrack_version(), ptrack.ptrack_init_lsn(),
           ptrack.ptrack_get_pagemapset(pg_lsn), ptrack.ptrack_get_change_stat(pg_lsn)
           TO backup;",
    );
    for (out, sql) in run_all("snoop").into_iter().zip(calls) {
        let err = out.expect_err(&format!(
            "after the REVOKE, a role without grants ran {sql}"
        ));
        assert!(err.contains("permission denied"), "{sql} as snoop: {err}");
    }
    for (out, sql) in run_all("backup").into_iter().zip(calls) {
        out.unwrap_or_else(|e| panic!("after the GRANT, backup cannot run {sql}: {e}"));
    }

    // Temporary relations are never reported, even when everything is.
    let l = c.wal_insert_lsn();
    let out = c.psql(&format!(
        "SET search_path = public, ptrack;
         CREATE TEMP TABLE tt AS
           SELECT g AS id, repeat('x', 200) AS pad FROM generate_series(1, 100000) g;
         CREATE INDEX tt_id ON tt (id);
         CHECKPOINT;
         SELECT pg_relation_filepath('tt');
         SELECT (pg_stat_file(pg_relation_filepath('tt'))).size;
         SELECT count(*) FROM ptrack_get_pagemapset('0/0') p
           WHERE p.path IN (pg_relation_filepath('tt'), pg_relation_filepath('tt_id'))
              OR p.path ~ '(^|/)t[0-9]+_';
         SELECT count(*) FROM ptrack_get_pagemapset('{l}') p
           WHERE p.path IN (pg_relation_filepath('tt'), pg_relation_filepath('tt_id'))
              OR p.path ~ '(^|/)t[0-9]+_';"
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "unexpected output {out:?}");
    let file = lines[0].rsplit('/').next().unwrap_or_default();
    assert!(
        file.starts_with('t') && file.contains('_'),
        "temp table file {:?} is not named t<backend>_<node>",
        lines[0]
    );
    assert!(
        lines[1].parse::<u64>().is_ok_and(|n| n > 0),
        "temp table file {} is empty on disk ({:?}): the test would prove nothing",
        lines[0],
        lines[1]
    );
    assert_eq!(
        lines[2], "0",
        "temporary relation files reported by pagemapset('0/0')"
    );
    assert_eq!(
        lines[3], "0",
        "temporary relation files reported by pagemapset('{l}')"
    );
}

/// A start LSN beyond the current WAL position cannot come from an earlier
/// backup of this cluster: a clear ERROR with a hint, never a wrong answer and
/// never a crash. The server stays usable afterwards.
#[test]
fn future_lsn_is_a_clear_error() {
    let mut c = Cluster::new("sql_future");
    c.start();
    c.psql("CREATE EXTENSION ptrack; CREATE TABLE f AS SELECT 1 AS x; CHECKPOINT;");
    let future = Lsn(c.wal_insert_lsn().0 + (1 << 40));
    for query in [
        format!("SELECT path FROM ptrack_get_pagemapset('{future}')"),
        format!("SELECT * FROM ptrack_get_change_stat('{future}')"),
    ] {
        let error = c
            .try_psql(&query)
            .expect_err("a start LSN in the future must be rejected");
        assert!(
            error.contains("is in the future"),
            "unexpected error for {query}: {error}"
        );
        assert!(
            error.contains("HINT"),
            "the error should carry a hint: {error}"
        );
    }
    let now = c.wal_insert_lsn();
    let rows = c.psql(&format!(
        "SELECT count(*) FROM ptrack_get_pagemapset('{now}')"
    ));
    assert!(
        rows.trim().parse::<u64>().is_ok(),
        "the current LSN is accepted: {rows}"
    );
}

/// A catalog made by C ptrack 2.4 (its extension created before the library
/// was replaced by this one, or recreated by `pg_upgrade` with the symbol
/// names it had) calls the library's functions by ptrack 2.4's C symbol
/// names, which are the SQL names. They must answer as the functions do.
#[test]
fn ptrack_2_4_symbol_names_answer_as_the_functions_do() {
    let mut c = Cluster::new("sql_symbols");
    c.start();
    c.psql(
        "CREATE EXTENSION ptrack;
         CREATE SCHEMA c_ptrack;
         CREATE FUNCTION c_ptrack.ptrack_version() RETURNS text
             AS '$libdir/ptrack' LANGUAGE C STRICT VOLATILE;
         CREATE FUNCTION c_ptrack.ptrack_init_lsn() RETURNS pg_lsn
             AS '$libdir/ptrack' LANGUAGE C STRICT VOLATILE;
         CREATE FUNCTION c_ptrack.ptrack_get_pagemapset(start_lsn pg_lsn)
             RETURNS TABLE (path text, pagecount bigint, pagemap bytea)
             AS '$libdir/ptrack' LANGUAGE C STRICT VOLATILE;
         CHECKPOINT;",
    );
    let since = c.query_one("SELECT c_ptrack.ptrack_init_lsn()");
    assert_eq!(since, c.query_one("SELECT ptrack_init_lsn()"));
    assert_eq!(
        c.query_one("SELECT c_ptrack.ptrack_version()"),
        c.query_one("SELECT ptrack_version()")
    );
    c.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 10000) g;");
    let rows = |schema: &str| {
        c.query_rows(&format!(
            "SELECT path, pagecount, encode(pagemap, 'hex') \
             FROM {schema}.ptrack_get_pagemapset('{since}') ORDER BY path"
        ))
    };
    let by_old_names = rows("c_ptrack");
    assert!(
        by_old_names.len() > 1,
        "the new table's file is reported: {by_old_names:?}"
    );
    assert_eq!(by_old_names, rows("public"));
}
