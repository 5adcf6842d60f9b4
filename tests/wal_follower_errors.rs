//! WAL mode: a WAL file the follower cannot read for a moment (EACCES here;
//! EMFILE is alike) is retried, not taken for lost WAL: the map keeps its
//! init LSN and tracks on once the file is readable again.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::util::wait_for;
use common::{lsn, Cluster, StopMode};

#[test]
fn an_unreadable_wal_file_is_retried_not_taken_for_lost_wal() {
    if !common::running_as_root() {
        eprintln!("skipped: changing a WAL file's mode needs root");
        return;
    }
    let mut c = Cluster::new("wal_eacces");
    c.set_conf("ptrack.mode", "'wal'");
    c.set_conf("autovacuum", "off");
    c.set_conf("checkpoint_timeout", "'1h'");
    c.start();
    c.psql("CREATE EXTENSION ptrack; CREATE TABLE t (v int);");
    let init = c.init_lsn();
    // A checkpoint after the init LSN: a map started again would start there.
    c.psql("CHECKPOINT;");
    c.pause_follower();
    // Changes in a segment of their own, which the follower has not read.
    c.psql("SELECT pg_switch_wal();");
    let start = c.wal_insert_lsn();
    c.psql("INSERT INTO t SELECT generate_series(1, 50000);");
    let segment = c.query_one(&format!("SELECT pg_walfile_name('{start}')"));
    let file = c.pgdata.join("pg_wal").join(&segment);
    let mode = std::fs::metadata(&file).expect("segment").permissions();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    let mark = c.log_mark();
    c.reset_sighup("ptrack.debug_follower_paused");
    assert!(
        wait_for(Duration::from_secs(30), || c
            .log_since(mark)
            .contains("cannot read the WAL")),
        "the follower did not meet the unreadable file:\n{}",
        c.log_tail(30)
    );
    std::fs::set_permissions(&file, mode).expect("chmod back");
    let (path, _) = c.relation_file("postgres", "t");
    assert!(
        c.pagemapset(start).is_set(&path, 0),
        "the table written in the unreadable segment is not reported"
    );
    let after = c.init_lsn();
    assert_eq!(
        after, init,
        "a transient read error started a new map (init LSN {init} -> {after})"
    );
    assert!(lsn(&c.query_one("SELECT init_lsn FROM ptrack_status()")) == init);
    c.stop(StopMode::Fast);
}
