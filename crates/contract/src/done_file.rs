//! The restore done-file protocol between the volume agent and the restore helper (Velero's,
//! plus a failure marker): the restored pod's init container waits until every volume it lists
//! holds `<volume root>/.velero/<restore uid>`, written by the agent once restic has restored
//! the volume. When the volume will not be restored (restic failed, the restore was cancelled or
//! abandoned), the agent writes `<volume root>/.velero/<restore uid>.failed` instead, holding the
//! reason on one line, and the helper exits non-zero at once with that reason.
//! The helper sees each volume at `/restores/<volume name>` in the pod.

use std::{
    io::{self, Write},
    path::{Path, PathBuf},
};

use crate::{ContractError, error::shown};

/// The directory in a volume's root holding the done files, as Velero's restore helper expects.
pub const MARKER_DIR: &str = ".velero";
/// Appended to the restore uid: the failure marker's name.
pub const FAILED_SUFFIX: &str = ".failed";
/// Where the restore helper's container mounts the restored volumes, one directory each.
pub const RESTORES_DIR: &str = "/restores";
/// What the failure marker says when the writer gave no reason.
const NO_REASON: &str = "the restore of this volume failed (no reason given)";

/// The path in the restore helper's container at which volume `volume` is mounted.
pub fn restores_mount_path(volume: &str) -> String {
    format!("{RESTORES_DIR}/{volume}")
}

/// A restore uid names a file: one path component, not a failure marker's name itself.
pub fn validate_restore_uid(uid: &str) -> Result<(), ContractError> {
    let invalid = |reason| ContractError::InvalidRestoreUid {
        value: shown(uid),
        reason,
    };
    if uid.is_empty() {
        return Err(invalid("is empty"));
    }
    if uid.contains(['/', '\\', '\0']) || uid == "." || uid == ".." {
        return Err(invalid("is not a single path component"));
    }
    if uid.chars().any(char::is_control) || uid.len() > 253 {
        return Err(invalid("must be at most 253 printable characters"));
    }
    if uid.ends_with(FAILED_SUFFIX) {
        return Err(invalid("ends in `.failed`, the failure marker's suffix"));
    }
    Ok(())
}

/// `<volume root>/.velero`.
pub fn marker_dir(volume_root: &Path) -> PathBuf {
    volume_root.join(MARKER_DIR)
}

/// `<volume root>/.velero/<restore uid>`: the volume is restored.
pub fn done_file(volume_root: &Path, restore_uid: &str) -> PathBuf {
    marker_dir(volume_root).join(restore_uid)
}

/// `<volume root>/.velero/<restore uid>.failed`: the volume will not be restored.
pub fn failure_marker(volume_root: &Path, restore_uid: &str) -> PathBuf {
    marker_dir(volume_root).join(format!("{restore_uid}{FAILED_SUFFIX}"))
}

/// The reason as the marker holds it: one line of UTF-8, line breaks and control characters
/// made spaces, never empty.
pub fn reason_line(reason: &str) -> String {
    let line: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let line = line.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.is_empty() {
        NO_REASON.to_string()
    } else {
        line
    }
}

/// A done file or failure marker that could not be written or read.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct MarkerError {
    pub path: PathBuf,
    pub source: io::Error,
}

/// Creates `.velero` in the volume root. A snapshot could carry a `.velero` symlink (or file);
/// markers must land in the volume, so anything there that is not a directory is replaced.
fn prepare_dir(volume_root: &Path) -> Result<PathBuf, MarkerError> {
    let dir = marker_dir(volume_root);
    let error = |source| MarkerError {
        path: dir.clone(),
        source,
    };
    if std::fs::symlink_metadata(&dir).is_ok_and(|m| !m.is_dir()) {
        std::fs::remove_file(&dir).map_err(error)?;
    }
    std::fs::create_dir_all(&dir).map_err(error)?;
    Ok(dir)
}

/// Writes `contents` to `path` whole or not at all: a reader never sees half a reason.
fn write_whole(dir: &Path, path: &Path, contents: &[u8]) -> Result<(), MarkerError> {
    let error = |source| MarkerError {
        path: path.to_path_buf(),
        source,
    };
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    let temporary = dir.join(format!(".{file_name}.writing"));
    let mut file = std::fs::File::create(&temporary).map_err(error)?;
    file.write_all(contents).map_err(error)?;
    file.sync_all().map_err(error)?;
    std::fs::rename(&temporary, path).map_err(error)
}

/// Marks the volume restored for `restore_uid`. A failure marker left by an earlier attempt of
/// the same restore is removed first, so the helper never sees both.
pub fn write_done(volume_root: &Path, restore_uid: &str) -> Result<PathBuf, MarkerError> {
    let dir = prepare_dir(volume_root)?;
    let failed = failure_marker(volume_root, restore_uid);
    match std::fs::remove_file(&failed) {
        Err(source) if source.kind() != io::ErrorKind::NotFound => {
            return Err(MarkerError {
                path: failed,
                source,
            });
        }
        _ => {}
    }
    let path = done_file(volume_root, restore_uid);
    write_whole(&dir, &path, b"")?;
    Ok(path)
}

/// Marks the volume failed for `restore_uid`, the marker holding [`reason_line`] of `reason`.
pub fn write_failure(
    volume_root: &Path,
    restore_uid: &str,
    reason: &str,
) -> Result<PathBuf, MarkerError> {
    let dir = prepare_dir(volume_root)?;
    let path = failure_marker(volume_root, restore_uid);
    write_whole(&dir, &path, format!("{}\n", reason_line(reason)).as_bytes())?;
    Ok(path)
}

/// The reason of the volume's failure marker for `restore_uid`, `None` when there is none.
pub fn read_failure(volume_root: &Path, restore_uid: &str) -> Result<Option<String>, MarkerError> {
    let path = failure_marker(volume_root, restore_uid);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(reason_line(&String::from_utf8_lossy(&bytes)))),
        Err(source) if source.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(MarkerError { path, source }),
    }
}

/// Whether the volume is marked restored for `restore_uid`.
pub fn is_done(volume_root: &Path, restore_uid: &str) -> bool {
    done_file(volume_root, restore_uid).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_velero_s() {
        let root = Path::new("/var/lib/kubelet/pods/p/volumes/kubernetes.io~empty-dir/data");
        assert_eq!(done_file(root, "r-1"), root.join(".velero/r-1"));
        assert_eq!(failure_marker(root, "r-1"), root.join(".velero/r-1.failed"));
        assert_eq!(restores_mount_path("data"), "/restores/data");
    }

    #[test]
    fn restore_uids_name_one_file() {
        assert!(validate_restore_uid("7d3c1e2a-0000-4000-8000-000000000001").is_ok());
        for bad in ["", "..", ".", "a/b", "../x", "a\0", "x.failed", "a\nb"] {
            let error = validate_restore_uid(bad).unwrap_err().to_string();
            assert!(error.starts_with("restore uid `"), "{bad}: {error}");
        }
    }

    #[test]
    fn a_failure_marker_holds_its_reason_on_one_line() {
        let volume = tempfile::tempdir().unwrap();
        assert_eq!(read_failure(volume.path(), "r-1").unwrap(), None);
        let path =
            write_failure(volume.path(), "r-1", "restic failed:\nFatal: no space\r\n").unwrap();
        assert_eq!(path, volume.path().join(".velero/r-1.failed"));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "restic failed: Fatal: no space\n"
        );
        assert_eq!(
            read_failure(volume.path(), "r-1").unwrap().as_deref(),
            Some("restic failed: Fatal: no space")
        );
        // Another restore's marker is not this one's.
        assert_eq!(read_failure(volume.path(), "r-2").unwrap(), None);
        assert!(!is_done(volume.path(), "r-1"));
        // No temporary file is left beside the marker.
        let names: Vec<_> = std::fs::read_dir(volume.path().join(".velero"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["r-1.failed"]);
    }

    #[test]
    fn an_empty_reason_still_says_the_volume_failed() {
        let volume = tempfile::tempdir().unwrap();
        write_failure(volume.path(), "r-1", " \n").unwrap();
        assert_eq!(
            read_failure(volume.path(), "r-1").unwrap().as_deref(),
            Some(NO_REASON)
        );
    }

    #[test]
    fn done_clears_an_earlier_failure_of_the_same_restore() {
        let volume = tempfile::tempdir().unwrap();
        write_failure(volume.path(), "r-1", "first attempt failed").unwrap();
        write_failure(volume.path(), "r-2", "another restore").unwrap();
        let done = write_done(volume.path(), "r-1").unwrap();
        assert_eq!(done, volume.path().join(".velero/r-1"));
        assert!(is_done(volume.path(), "r-1"));
        assert_eq!(read_failure(volume.path(), "r-1").unwrap(), None);
        assert!(read_failure(volume.path(), "r-2").unwrap().is_some());
    }

    #[cfg(unix)]
    #[test]
    fn a_velero_symlink_from_the_snapshot_is_replaced() {
        let volume = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), volume.path().join(".velero")).unwrap();
        write_done(volume.path(), "r-1").unwrap();
        assert!(
            std::fs::symlink_metadata(volume.path().join(".velero"))
                .unwrap()
                .is_dir()
        );
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    }
}
