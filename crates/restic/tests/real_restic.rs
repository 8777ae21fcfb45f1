//! The wrapper against the real `restic` binary and a repository in a temp dir: backup with
//! progress, tag filters and parents, stats, restore, restic's failures classified by exit
//! code, a held lock waited out with `--retry-lock`, and new repositories in format 2.

use std::{io::Write as _, path::Path, process::Stdio};

use stowage_restic::{
    BackupOptions, Overwrite, Repository, Restic, ResticCommand, ResticError, RestoreOptions,
    SnapshotFilter,
};
use tokio_util::sync::CancellationToken;

struct Fixture {
    dir: tempfile::TempDir,
    restic: Restic,
    repository: Repository,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let restic = Restic::new("restic", dir.path().join("scratch"));
    let repository = Repository::new(
        dir.path().join("repo").display().to_string(),
        "correct horse battery staple",
    );
    restic
        .init(&repository, &CancellationToken::new())
        .await
        .expect("restic init");
    Fixture {
        dir,
        restic,
        repository,
    }
}

fn write_tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("a.txt"), "alpha").unwrap();
    std::fs::write(dir.join("sub/b.txt"), "beta").unwrap();
}

#[tokio::test]
async fn backup_snapshots_stats_and_restore_round_trip() {
    let f = fixture().await;
    let cancel = CancellationToken::new();
    let data = f.dir.path().join("data");
    write_tree(&data);
    let options = BackupOptions {
        working_dir: data.clone(),
        host: Some("node-a".into()),
        tags: vec!["identity=x/1".into(), "ns=shop".into()],
        ..Default::default()
    };
    let mut statuses = Vec::new();
    let first = f
        .restic
        .backup(&f.repository, &options, &cancel, |status| {
            statuses.push(status.clone())
        })
        .await
        .expect("first backup");
    assert_eq!(first.files_new, 2);
    // restic 0.18 prints no status line for a backup this small; the last progress reported
    // is the summary's: both files and their 9 bytes done.
    let last = statuses.last().expect("progress was reported");
    assert_eq!(
        (
            last.files_done,
            last.total_files,
            last.bytes_done,
            last.total_bytes
        ),
        (2, 2, 9, 9),
        "{statuses:?}"
    );
    assert_eq!(last.percent_done, 1.0);
    assert!(
        first.data_added_packed > 0,
        "restic 0.17+ reports what the repository stores: {first:?}"
    );

    let found = f
        .restic
        .latest_snapshot(
            &f.repository,
            &SnapshotFilter {
                tags: vec!["identity=x/1".into(), "ns=shop".into()],
                ..Default::default()
            },
            &cancel,
        )
        .await
        .unwrap()
        .expect("the snapshot is found by its tags");
    // restic 0.18's summary names the full id.
    assert_eq!(found.id, first.snapshot_id);
    assert!(first.snapshot_id.starts_with(&found.short_id));
    assert_eq!(found.hostname, "node-a");
    assert_eq!(found.tag_value("ns"), Some("shop"));
    let none = f
        .restic
        .latest_snapshot(
            &f.repository,
            &SnapshotFilter {
                tags: vec!["identity=x/1".into(), "ns=other".into()],
                ..Default::default()
            },
            &cancel,
        )
        .await
        .unwrap();
    assert!(none.is_none(), "all tags must match");

    std::fs::write(data.join("a.txt"), "alpha, changed").unwrap();
    let second = f
        .restic
        .backup(
            &f.repository,
            &BackupOptions {
                parent: Some(found.id.clone()),
                ..options.clone()
            },
            &cancel,
            |_| {},
        )
        .await
        .expect("second backup");
    assert_eq!((second.files_changed, second.files_unmodified), (1, 1));

    let stats = f
        .restic
        .stats(&f.repository, &second.snapshot_id, &cancel)
        .await
        .unwrap();
    assert_eq!(stats.total_size, "alpha, changed".len() as u64 + 4);

    let target = f.dir.path().join("restored");
    let summary = f
        .restic
        .restore(
            &f.repository,
            &RestoreOptions {
                snapshot: second.snapshot_id.clone(),
                target: target.clone(),
                ..Default::default()
            },
            &cancel,
            |_| {},
        )
        .await
        .expect("restore");
    // restic's own totals, from its summary line: the two files' bytes; its file count takes
    // in the directory `sub` as well.
    assert_eq!(summary.bytes_total(), stats.total_size);
    assert_eq!(summary.bytes_done(), stats.total_size);
    assert_eq!(summary.files_restored, 3, "{summary:?}");
    // Backed up as `.` from inside the dir: the files are at the snapshot root.
    assert_eq!(
        std::fs::read_to_string(target.join("a.txt")).unwrap(),
        "alpha, changed"
    );
    assert_eq!(
        std::fs::read_to_string(target.join("sub/b.txt")).unwrap(),
        "beta"
    );
}

/// What a data-only restore relies on: `--delete` makes a used directory identical to the
/// snapshot except for the paths the restore excludes, which restic 0.18 leaves alone; and
/// `--overwrite if-newer` keeps a file that is newer than the snapshot's copy.
#[tokio::test]
async fn restore_with_delete_replaces_a_used_directory_but_keeps_excluded_paths() {
    let f = fixture().await;
    let cancel = CancellationToken::new();
    let data = f.dir.path().join("data");
    write_tree(&data);
    std::fs::write(data.join("keep.tmp"), "in the snapshot").unwrap();
    let snapshot = f
        .restic
        .backup(
            &f.repository,
            &BackupOptions {
                working_dir: data.clone(),
                ..Default::default()
            },
            &cancel,
            |_| {},
        )
        .await
        .expect("backup")
        .snapshot_id;
    // The volume moves on after the backup.
    std::fs::write(data.join("a.txt"), "alpha, changed since").unwrap();
    std::fs::write(data.join("keep.tmp"), "written since").unwrap();
    std::fs::write(data.join("added.txt"), "added since").unwrap();
    std::fs::create_dir_all(data.join("new-dir")).unwrap();
    std::fs::write(data.join("new-dir/c.txt"), "added since").unwrap();

    // if-newer: every file in place is newer than the snapshot's, so none is rewritten.
    f.restic
        .restore(
            &f.repository,
            &RestoreOptions {
                snapshot: snapshot.clone(),
                target: data.clone(),
                overwrite: Some(Overwrite::IfNewer),
                ..Default::default()
            },
            &cancel,
            |_| {},
        )
        .await
        .expect("if-newer restore");
    assert_eq!(
        std::fs::read_to_string(data.join("a.txt")).unwrap(),
        "alpha, changed since"
    );

    let summary = f
        .restic
        .restore(
            &f.repository,
            &RestoreOptions {
                snapshot,
                target: data.clone(),
                excludes: vec!["*.tmp".into()],
                delete: true,
                ..Default::default()
            },
            &cancel,
            |_| {},
        )
        .await
        .expect("replace restore");
    assert!(summary.files_deleted >= 2, "{summary:?}");
    assert_eq!(
        std::fs::read_to_string(data.join("a.txt")).unwrap(),
        "alpha"
    );
    assert_eq!(
        std::fs::read_to_string(data.join("sub/b.txt")).unwrap(),
        "beta"
    );
    assert!(!data.join("added.txt").exists());
    assert!(!data.join("new-dir").exists());
    assert_eq!(
        std::fs::read_to_string(data.join("keep.tmp")).unwrap(),
        "written since",
        "a path the restore excludes is neither restored nor deleted"
    );
}

#[tokio::test]
async fn wrong_password_and_missing_repository_are_classified() {
    let f = fixture().await;
    let cancel = CancellationToken::new();
    let wrong = Repository::new(f.repository.url.clone(), "not it");
    let error = f
        .restic
        .snapshots(&wrong, &SnapshotFilter::default(), &cancel)
        .await
        .unwrap_err();
    assert!(
        matches!(error, ResticError::WrongPassword { .. }),
        "{error}"
    );
    assert!(!error.to_string().contains("not it"));

    let missing = Repository::new(f.dir.path().join("nothing").display().to_string(), "pw");
    let error = f
        .restic
        .snapshots(&missing, &SnapshotFilter::default(), &cancel)
        .await
        .unwrap_err();
    assert!(
        matches!(error, ResticError::RepositoryMissing { .. }),
        "{error}"
    );
}

#[tokio::test]
async fn exclusive_command_against_a_held_lock_is_retryable() {
    let f = fixture().await;
    let mut holder = hold_lock(&f);
    let error = f
        .restic
        .run(
            &f.repository,
            &ResticCommand::new("prune"),
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
    let mut stdin = holder.stdin.take().unwrap();
    stdin.write_all(b"done").unwrap();
    drop(stdin);
    assert!(holder.wait().unwrap().success());
    assert!(error.is_retryable(), "{error}");
    assert!(matches!(error, ResticError::Locked { .. }));
}

/// A backup reading stdin holds its (shared) lock until its stdin is closed.
fn hold_lock(f: &Fixture) -> std::process::Child {
    let password_file = f.dir.path().join("holder-pw");
    std::fs::write(&password_file, f.repository.password()).unwrap();
    let mut holder = std::process::Command::new("restic")
        .args(["backup", "--stdin", "--stdin-filename", "held", "--repo"])
        .arg(&f.repository.url)
        .arg("--password-file")
        .arg(&password_file)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let locks = Path::new(&f.repository.url).join("locks");
    while std::fs::read_dir(&locks).map(|d| d.count()).unwrap_or(0) == 0 {
        assert!(holder.try_wait().unwrap().is_none(), "lock holder exited");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    holder
}

#[tokio::test]
async fn restic_waits_out_a_held_lock_itself_with_retry_lock() {
    let f = fixture().await;
    let mut holder = hold_lock(&f);
    let restic = f
        .restic
        .clone()
        .with_retry_lock(Some(std::time::Duration::from_secs(120)));
    let prune = {
        let repository = f.repository.clone();
        tokio::spawn(async move {
            restic
                .run(
                    &repository,
                    &ResticCommand::new("prune"),
                    &CancellationToken::new(),
                )
                .await
        })
    };
    // Meanwhile the prune is refused the lock and keeps trying (restic says so), so the holder
    // finishing is what lets it run; without --retry-lock it fails with exit code 11.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let mut stdin = holder.stdin.take().unwrap();
    stdin.write_all(b"done").unwrap();
    drop(stdin);
    assert!(holder.wait().unwrap().success());
    let output = prune
        .await
        .unwrap()
        .expect("prune ran once the lock was released");
    let said = format!("{}{}", output.stdout, output.stderr);
    assert!(
        said.contains("repo already locked, waiting up to"),
        "restic waited for the lock: {said}"
    );
}

#[tokio::test]
async fn repository_written_by_this_wrapper_is_format_2() {
    let f = fixture().await;
    let config = f
        .restic
        .cat_config(&f.repository, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(config.version, 2);
}
