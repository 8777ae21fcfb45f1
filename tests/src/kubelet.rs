//! A fake kubelet pods directory for the volume agent: pod dirs named by UID with emptyDir,
//! plain PV and CSI (`<pv>/mount`) volumes, sample trees with modes, symlinks and old mtimes,
//! and a manifest of a tree to compare a restore against its source.

use std::{
    collections::BTreeMap,
    hash::{BuildHasher, Hasher},
    io::Write as _,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

/// `<root>` as the kubelet's `/var/lib/kubelet/pods`.
pub struct FakeKubelet {
    root: PathBuf,
}

impl FakeKubelet {
    pub fn new(root: impl Into<PathBuf>) -> FakeKubelet {
        let root = root.into();
        std::fs::create_dir_all(&root).expect("creating the fake pods root");
        FakeKubelet { root }
    }

    pub fn pods_root(&self) -> &Path {
        &self.root
    }

    /// The directory of pod `uid` (created).
    pub fn pod(&self, uid: &str) -> FakePod {
        let dir = self.root.join(uid);
        std::fs::create_dir_all(dir.join("volumes")).expect("creating the pod dir");
        FakePod {
            uid: uid.to_string(),
            dir,
        }
    }
}

pub struct FakePod {
    pub uid: String,
    pub dir: PathBuf,
}

impl FakePod {
    fn volume_dir(&self, plugin: &str, name: &str) -> PathBuf {
        let dir = self.dir.join("volumes").join(plugin).join(name);
        std::fs::create_dir_all(&dir).expect("creating a volume dir");
        dir
    }

    /// `volumes/kubernetes.io~empty-dir/<name>`
    pub fn empty_dir(&self, name: &str) -> PathBuf {
        self.volume_dir("kubernetes.io~empty-dir", name)
    }

    /// `volumes/<plugin>/<pv>`, as for NFS or local volumes.
    pub fn pv(&self, plugin: &str, pv_name: &str) -> PathBuf {
        self.volume_dir(plugin, pv_name)
    }

    /// `volumes/kubernetes.io~csi/<pv>/mount`, with CSI's `vol_data.json` beside it.
    pub fn csi_pv(&self, pv_name: &str) -> PathBuf {
        let mount = self.volume_dir("kubernetes.io~csi", &format!("{pv_name}/mount"));
        let pv_dir = mount.parent().expect("mount has a parent");
        std::fs::write(
            pv_dir.join("vol_data.json"),
            format!("{{\"specVolumeID\":\"{pv_name}\"}}"),
        )
        .expect("writing vol_data.json");
        mount
    }
}

/// A random RFC 4122-shaped UID, as the API server gives pods.
pub fn new_pod_uid() -> String {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    let a = hasher.finish();
    hasher.write_u64(a);
    let b = hasher.finish();
    let hex = format!("{a:016x}{b:016x}");
    format!(
        "{}-{}-4{}-8{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

/// Writes `size` bytes of incompressible, non-repeating data (so restic cannot dedupe it).
pub fn write_random_file(path: &Path, size: usize, seed: u64) {
    let mut file = std::fs::File::create(path).expect("creating a random file");
    let mut state = seed | 1;
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for word in chunk.chunks_mut(8) {
            // xorshift64
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes()[..word.len()]);
        }
        let n = left.min(chunk.len());
        file.write_all(&chunk[..n]).expect("writing a random file");
        left -= n;
    }
}

fn set_mtime(path: &Path, seconds_since_epoch: u64) {
    let time = SystemTime::UNIX_EPOCH + Duration::new(seconds_since_epoch, 123_456_789);
    std::fs::File::open(path)
        .and_then(|file| file.set_modified(time))
        .expect("setting an mtime");
}

/// A small tree with the things a restore must keep: contents, modes (0755, 0600, 0644),
/// a relative symlink, a nested and an empty directory, and mtimes in the past.
pub fn write_sample_tree(dir: &Path, flavour: &str) {
    let file = |rel: &str, content: &[u8], mode: u32, mtime: u64| {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().expect("has parent")).expect("mkdir");
        std::fs::write(&path, content).expect("writing a sample file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        set_mtime(&path, mtime);
    };
    file(
        "README.txt",
        format!("volume {flavour}\n").as_bytes(),
        0o644,
        1_600_000_000,
    );
    file("bin/run.sh", b"#!/bin/sh\necho hi\n", 0o755, 1_600_000_100);
    file("secret/key", b"k3y", 0o600, 1_600_000_200);
    file(
        "data/deep/nested/blob.bin",
        &[flavour.len() as u8; 4096],
        0o640,
        1_600_000_300,
    );
    std::fs::create_dir_all(dir.join("empty")).expect("mkdir empty");
    std::os::unix::fs::symlink("../README.txt", dir.join("data/readme-link"))
        .expect("creating a symlink");
    for sub in ["data/deep/nested", "data/deep", "bin", "secret", "empty"] {
        set_mtime(&dir.join(sub), 1_600_001_000);
    }
}

/// What a restore must reproduce about one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: &'static str,
    pub mode: u32,
    pub size: u64,
    pub content_hash: u64,
    pub symlink_target: Option<PathBuf>,
    /// (seconds, nanoseconds); directories' own mtimes are left out when the caller asks.
    pub mtime: Option<(i64, i64)>,
}

/// Every entry under `dir` (not `dir` itself, not `.velero`), keyed by relative path.
/// `with_dir_mtimes` = false leaves directories' mtimes out.
pub fn manifest(dir: &Path, with_dir_mtimes: bool) -> BTreeMap<String, Entry> {
    let mut entries = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current).expect("reading a tree") {
            let entry = entry.expect("reading a dir entry");
            let path = entry.path();
            let rel = path
                .strip_prefix(dir)
                .expect("under the root")
                .to_string_lossy()
                .into_owned();
            if rel == ".velero" {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).expect("lstat");
            let mtime = Some((meta.mtime(), meta.mtime_nsec()));
            let item = if meta.file_type().is_symlink() {
                Entry {
                    kind: "symlink",
                    mode: 0,
                    size: 0,
                    content_hash: 0,
                    symlink_target: Some(std::fs::read_link(&path).expect("readlink")),
                    mtime: None,
                }
            } else if meta.is_dir() {
                stack.push(path.clone());
                Entry {
                    kind: "dir",
                    mode: meta.mode() & 0o7777,
                    size: 0,
                    content_hash: 0,
                    symlink_target: None,
                    mtime: if with_dir_mtimes { mtime } else { None },
                }
            } else {
                let content = std::fs::read(&path).expect("reading a file");
                let mut hasher = std::hash::DefaultHasher::new();
                hasher.write(&content);
                Entry {
                    kind: "file",
                    mode: meta.mode() & 0o7777,
                    size: meta.len(),
                    content_hash: hasher.finish(),
                    symlink_target: None,
                    mtime,
                }
            };
            entries.insert(rel, item);
        }
    }
    entries
}
