//! A local user who plants files where the server will look: the live map's
//! name in `/dev/shm` is predictable (system identifier, readable by any role,
//! and the data directory's device and inode), and `/dev/shm` is writable by
//! everyone. Whatever is planted there, the server never follows it to a file
//! of its own user and never adopts a file another user can write: it says so
//! in a WARNING and keeps the map in shared memory.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{chown_to_server, live_map_path, running_as_root, Cluster, StopMode};

/// Removes what a test planted, even when the test fails.
struct Planted(PathBuf);

impl Drop for Planted {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Runs a shell command as `nobody`, an unprivileged local user.
fn as_nobody(script: &str) {
    let status = Command::new("runuser")
        .args(["-u", "nobody", "--", "sh", "-c", script])
        .status()
        .expect("runuser");
    assert!(status.success(), "as nobody: {script}");
}

fn assert_refused(c: &Cluster, why: &str) {
    let log = c.log_contents();
    assert!(
        log.contains("WARNING:  ptrack: not using") && log.contains(why),
        "[{}] no WARNING that the planted live file was refused ({why}):\n{}",
        c.name,
        c.log_tail(30)
    );
    // Tracking still works, from shared memory.
    c.psql("CREATE TABLE IF NOT EXISTS t AS SELECT g FROM generate_series(1, 1000) g; CHECKPOINT;");
    let path = c.query_one("SELECT pg_relation_filepath('t')");
    assert!(
        c.pagemapset(c.init_lsn()).is_set(&path, 0),
        "nothing tracked"
    );
}

fn live_path(c: &Cluster) -> PathBuf {
    live_map_path(&c.pgdata).expect("a data directory with pg_control")
}

#[test]
fn a_symlink_planted_under_the_live_name_is_never_followed() {
    if !running_as_root() {
        eprintln!("skipped: planting files as another user needs root");
        return;
    }
    let mut c = Cluster::new("hostile_symlink");
    let live = live_path(&c);
    let _ = fs::remove_file(&live);
    // A file the server's OS user owns and can write, elsewhere.
    let victim = c.base.join("victim");
    fs::write(&victim, b"thirty-two bytes of someone's!!!").expect("victim");
    chown_to_server(&victim);
    as_nobody(&format!(
        "ln -s '{}' '{}'",
        victim.display(),
        live.display()
    ));
    let _planted = Planted(live.clone());

    c.start();
    c.psql("CREATE EXTENSION ptrack;");
    assert_eq!(
        fs::read(&victim).expect("victim"),
        b"thirty-two bytes of someone's!!!",
        "the server wrote through a symlink planted in /dev/shm"
    );
    assert!(fs::symlink_metadata(&live)
        .expect("link")
        .file_type()
        .is_symlink());
    // ELOOP, or EACCES for O_CREAT on a link in a sticky directory.
    assert_refused(&c, "for the live map");
    c.stop(StopMode::Fast);
    assert_eq!(fs::metadata(&victim).expect("victim").len(), 32);
}

#[test]
fn a_file_another_user_planted_under_the_live_name_is_never_adopted() {
    if !running_as_root() {
        eprintln!("skipped: planting files as another user needs root");
        return;
    }
    let mut c = Cluster::new("hostile_file");
    let live = live_path(&c);
    let _ = fs::remove_file(&live);
    as_nobody(&format!(
        "umask 000; printf planted > '{}'; chmod 0666 '{}'",
        live.display(),
        live.display()
    ));
    let _planted = Planted(live.clone());

    c.start();
    c.psql("CREATE EXTENSION ptrack;");
    let planted = fs::metadata(&live).expect("planted file");
    assert_eq!(
        (planted.len(), fs::read(&live).expect("planted file")),
        (7, b"planted".to_vec()),
        "the server adopted (resized or wrote) a file another user owns"
    );
    assert_refused(&c, "belongs to user id");
    c.stop(StopMode::Immediate);
    c.start();
    assert_eq!(fs::metadata(&live).expect("planted").len(), 7);
    c.stop(StopMode::Fast);
}

#[test]
fn a_hard_link_to_a_file_of_the_servers_user_is_never_adopted() {
    if !running_as_root() {
        eprintln!("skipped: planting files as another user needs root");
        return;
    }
    let mut c = Cluster::new("hostile_link");
    let live = live_path(&c);
    let _ = fs::remove_file(&live);
    // A private file of the server's user, hard-linked by someone else into
    // /dev/shm: only possible where fs.protected_hardlinks = 0, so the link
    // is made here as root to stand for it.
    let victim = Path::new("/dev/shm").join(format!(
        "ptrack-test-victim-{}",
        fs::metadata(&c.pgdata).expect("pgdata").ino()
    ));
    fs::write(&victim, b"private").expect("victim");
    chown_to_server(&victim);
    fs::set_permissions(&victim, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let _victim = Planted(victim.clone());
    fs::hard_link(&victim, &live).expect("hard link");
    let _planted = Planted(live.clone());

    c.start();
    c.psql("CREATE EXTENSION ptrack;");
    assert_eq!(fs::read(&victim).expect("victim"), b"private");
    assert_refused(&c, "hard links");
    c.stop(StopMode::Fast);
}
