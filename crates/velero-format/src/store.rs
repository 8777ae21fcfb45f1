//! Reading and writing a whole backup's (or restore's) files over any
//! `object_store::ObjectStore`. Keys are relative to the location root: wrap the store in
//! `object_store::prefix::PrefixStore` when the location has a prefix. Listing tolerates broken
//! backups and restores: each one that cannot be read is reported with its reason instead of
//! failing the whole list.

use std::collections::BTreeMap;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, path::Path};

use crate::backup::Backup;
use crate::codec::{
    decode_json, decode_json_gz, decode_logs, encode_json, encode_json_gz, encode_logs,
};
use crate::error::{FormatError, Result};
use crate::layout;
use crate::pod_volume_backup::PodVolumeBackup;
use crate::resources::BackupResources;
use crate::restore::{RestoreResults, StowageRestoreRecord};
use crate::schedule::ScheduleRecord;
use crate::stowage::{Origin, StowageBackupInfo};

/// How many backups `list_backups` reads at once.
const LIST_CONCURRENCY: usize = 8;

/// Every file of one backup.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupFiles {
    pub backup: Backup,
    pub pod_volume_backups: Vec<PodVolumeBackup>,
    /// The resources tarball; `None` when absent.
    pub resources: Option<BackupResources>,
    /// The log text; `None` when absent (or not read).
    pub logs: Option<String>,
    /// stowage's own file; `None` for backups Velero wrote.
    pub stowage: Option<StowageBackupInfo>,
}

impl BackupFiles {
    pub fn name(&self) -> &str {
        self.backup.name()
    }

    pub fn origin(&self) -> Origin {
        origin_of(self.stowage.as_ref())
    }
}

fn origin_of(stowage: Option<&StowageBackupInfo>) -> Origin {
    stowage.map_or(Origin::Velero, |info| info.origin)
}

async fn get(store: &dyn ObjectStore, key: &str) -> Result<Bytes> {
    let path = Path::from(key);
    let result = store
        .get(&path)
        .await
        .map_err(|error| FormatError::from_store(key, error))?;
    result
        .bytes()
        .await
        .map_err(|error| FormatError::from_store(key, error))
}

/// `Ok(None)` when the object does not exist.
async fn get_optional(store: &dyn ObjectStore, key: &str) -> Result<Option<Bytes>> {
    match get(store, key).await {
        Ok(bytes) => Ok(Some(bytes)),
        Err(FormatError::NotFound { .. }) => Ok(None),
        Err(error) => Err(error),
    }
}

async fn put(store: &dyn ObjectStore, key: &str, data: Vec<u8>) -> Result<()> {
    store
        .put(&Path::from(key), PutPayload::from(data))
        .await
        .map(|_| ())
        .map_err(|error| FormatError::from_store(key, error))
}

/// Reads `backups/<name>/velero-backup.json`.
pub async fn read_backup_record(store: &dyn ObjectStore, name: &str) -> Result<Backup> {
    let key = layout::backup_record_key(name);
    decode_json(&get(store, &key).await?, &key, "Backup record")
}

/// Reads `backups/<name>/<name>-podvolumebackups.json.gz`; an absent file (or a `null` array,
/// which Go writes for an empty list) means no pod volumes.
pub async fn read_pod_volume_backups(
    store: &dyn ObjectStore,
    name: &str,
) -> Result<Vec<PodVolumeBackup>> {
    let key = layout::pod_volume_backups_key(name);
    match get_optional(store, &key).await? {
        None => Ok(Vec::new()),
        Some(data) => Ok(decode_json_gz::<Option<Vec<PodVolumeBackup>>>(
            &data,
            &key,
            "PodVolumeBackup list",
        )?
        .unwrap_or_default()),
    }
}

/// Reads the resources tarball; `None` when absent.
pub async fn read_resources(
    store: &dyn ObjectStore,
    name: &str,
) -> Result<Option<BackupResources>> {
    let key = layout::resources_key(name);
    get_optional(store, &key)
        .await?
        .map(|data| BackupResources::from_tar_gz(&data, &key))
        .transpose()
}

/// Reads `<name>-resource-list.json.gz`; `None` when absent (stowage and Velero before 1.5
/// may not have written one).
pub async fn read_resource_list(
    store: &dyn ObjectStore,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<String>>>> {
    let key = layout::resource_list_key(name);
    get_optional(store, &key)
        .await?
        .map(|data| decode_json_gz(&data, &key, "resource list"))
        .transpose()
}

/// Reads the backup's log text; `None` when absent.
pub async fn read_logs(store: &dyn ObjectStore, name: &str) -> Result<Option<String>> {
    let key = layout::logs_key(name);
    get_optional(store, &key)
        .await?
        .map(|data| decode_logs(&data, &key))
        .transpose()
}

/// Reads stowage's own file; `None` for a backup Velero wrote.
pub async fn read_stowage_info(
    store: &dyn ObjectStore,
    name: &str,
) -> Result<Option<StowageBackupInfo>> {
    let key = layout::stowage_info_key(name);
    get_optional(store, &key)
        .await?
        .map(|data| decode_json(&data, &key, "stowage backup info"))
        .transpose()
}

/// Reads every file of backup `name` (logs included); the first file that is present but
/// does not parse fails the read with an error naming it.
#[tracing::instrument(level = "debug", skip(store), fields(backup = %name))]
pub async fn read_backup(store: &dyn ObjectStore, name: &str) -> Result<BackupFiles> {
    layout::validate_backup_name(name)?;
    let backup = read_backup_record(store, name).await?;
    let stowage = read_stowage_info(store, name).await?;
    let pod_volume_backups = read_pod_volume_backups(store, name).await?;
    let resources = read_resources(store, name).await?;
    let logs = read_logs(store, name).await?;
    Ok(BackupFiles {
        backup,
        pod_volume_backups,
        resources,
        logs,
        stowage,
    })
}

/// Every reason backup `name` cannot be restored as far as its files go (each file is tried,
/// not only up to the first failure). Empty when all files parse and the record, tarball and
/// PodVolumeBackup list are present.
#[tracing::instrument(level = "debug", skip(store), fields(backup = %name))]
pub async fn check_backup(store: &dyn ObjectStore, name: &str) -> Vec<FormatError> {
    let mut problems = Vec::new();
    if let Err(error) = read_backup_record(store, name).await {
        problems.push(error);
    }
    if let Err(error) = read_stowage_info(store, name).await {
        problems.push(error);
    }
    let pvb_key = layout::pod_volume_backups_key(name);
    match get_optional(store, &pvb_key).await {
        Ok(None) => problems.push(FormatError::NotFound { key: pvb_key }),
        Ok(Some(_)) => {
            if let Err(error) = read_pod_volume_backups(store, name).await {
                problems.push(error);
            }
        }
        Err(error) => problems.push(error),
    }
    match read_resources(store, name).await {
        Ok(Some(_)) => {}
        Ok(None) => problems.push(FormatError::NotFound {
            key: layout::resources_key(name),
        }),
        Err(error) => problems.push(error),
    }
    if let Err(error) = read_resource_list(store, name).await {
        problems.push(error);
    }
    if let Err(error) = read_logs(store, name).await {
        problems.push(error);
    }
    problems
}

pub async fn write_backup_record(store: &dyn ObjectStore, backup: &Backup) -> Result<()> {
    let name = backup.name();
    layout::validate_backup_name(name)?;
    put(
        store,
        &layout::backup_record_key(name),
        encode_json(backup)?,
    )
    .await
}

pub async fn write_pod_volume_backups(
    store: &dyn ObjectStore,
    name: &str,
    pod_volume_backups: &[PodVolumeBackup],
) -> Result<()> {
    layout::validate_backup_name(name)?;
    put(
        store,
        &layout::pod_volume_backups_key(name),
        encode_json_gz(&pod_volume_backups)?,
    )
    .await
}

pub async fn write_resources(
    store: &dyn ObjectStore,
    name: &str,
    resources: &BackupResources,
) -> Result<()> {
    layout::validate_backup_name(name)?;
    put(store, &layout::resources_key(name), resources.to_tar_gz()?).await
}

/// Writes the tarball's resource list (see [`BackupResources::resource_list`]).
pub async fn write_resource_list(
    store: &dyn ObjectStore,
    name: &str,
    resources: &BackupResources,
) -> Result<()> {
    layout::validate_backup_name(name)?;
    put(
        store,
        &layout::resource_list_key(name),
        encode_json_gz(&resources.resource_list())?,
    )
    .await
}

pub async fn write_logs(store: &dyn ObjectStore, name: &str, logs: &str) -> Result<()> {
    layout::validate_backup_name(name)?;
    put(store, &layout::logs_key(name), encode_logs(logs)).await
}

pub async fn write_stowage_info(
    store: &dyn ObjectStore,
    name: &str,
    info: &StowageBackupInfo,
) -> Result<()> {
    layout::validate_backup_name(name)?;
    put(store, &layout::stowage_info_key(name), encode_json(info)?).await
}

/// Fails with [`FormatError::ReadOnly`] when `backups/<name>/` holds a backup Velero wrote
/// (a record and no readable stowage file). Call it before writing any single file of an
/// existing backup; [`write_backup`] does.
pub async fn ensure_writable(store: &dyn ObjectStore, name: &str) -> Result<()> {
    layout::validate_backup_name(name)?;
    let record_exists = get_optional(store, &layout::backup_record_key(name))
        .await?
        .is_some();
    // An unreadable stowage file counts as absent: when in doubt, do not write.
    if record_exists
        && read_stowage_info(store, name)
            .await
            .ok()
            .flatten()
            .is_none()
    {
        return Err(FormatError::ReadOnly {
            name: name.to_string(),
        });
    }
    Ok(())
}

/// Writes every file present in `files`. The Backup record goes last, so a listing never shows
/// a backup whose other files are not there yet.
///
/// Refuses to overwrite a backup Velero wrote (one with a record but no stowage file): those
/// are read-only to stowage.
#[tracing::instrument(level = "debug", skip_all, fields(backup = %files.name()))]
pub async fn write_backup(store: &dyn ObjectStore, files: &BackupFiles) -> Result<()> {
    let name = files.name();
    layout::validate_backup_name(name)?;
    if files.stowage.is_none() {
        return Err(FormatError::Invalid(format!(
            "backup {name}: stowage writes its backups with their stowage file"
        )));
    }
    ensure_writable(store, name).await?;
    if let Some(info) = &files.stowage {
        write_stowage_info(store, name, info).await?;
    }
    write_pod_volume_backups(store, name, &files.pod_volume_backups).await?;
    if let Some(resources) = &files.resources {
        write_resources(store, name, resources).await?;
        write_resource_list(store, name, resources).await?;
    }
    if let Some(logs) = &files.logs {
        write_logs(store, name, logs).await?;
    }
    write_backup_record(store, &files.backup).await
}

/// A backup that `list_backups` could read.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedBackup {
    pub name: String,
    pub backup: Backup,
    pub stowage: Option<StowageBackupInfo>,
}

impl ListedBackup {
    pub fn origin(&self) -> Origin {
        origin_of(self.stowage.as_ref())
    }
}

/// A backup directory that `list_backups` could not read, and why.
#[derive(Debug)]
pub struct ListFailure {
    pub name: String,
    pub error: FormatError,
}

/// The result of listing a location: readable backups and unreadable ones, both by name.
#[derive(Debug, Default)]
pub struct BackupListing {
    pub backups: Vec<ListedBackup>,
    pub failures: Vec<ListFailure>,
}

/// Lists the backups of a location: every `backups/<name>/` directory, reading its
/// `velero-backup.json` (and stowage file). Only a failure to list the location at all is an
/// error; a backup whose record is missing or does not parse is reported in `failures`.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn list_backups(store: &dyn ObjectStore) -> Result<BackupListing> {
    let (backups, failures) = read_each_directory(store, layout::BACKUPS_DIR, |name| async move {
        let backup = read_backup_record(store, &name).await?;
        let stowage = read_stowage_info(store, &name).await?;
        Ok(ListedBackup {
            name,
            backup,
            stowage,
        })
    })
    .await?;
    for failure in &failures {
        tracing::warn!(backup = %failure.name, error = %failure.error, "backup cannot be read");
    }
    Ok(BackupListing { backups, failures })
}

/// Reads every `<dir>/<name>/` directory of the location with `read`, a few at once: what was
/// read and what could not be (with why), each sorted by directory name. Only a failure to
/// list `<dir>/` at all is an error.
async fn read_each_directory<T, F, Fut>(
    store: &dyn ObjectStore,
    dir: &str,
    read: F,
) -> Result<(Vec<T>, Vec<ListFailure>)>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let listing = store
        .list_with_delimiter(Some(&Path::from(dir)))
        .await
        .map_err(|error| FormatError::from_store(&format!("{dir}/"), error))?;
    let mut names: Vec<String> = listing
        .common_prefixes
        .iter()
        .filter_map(|path| path.filename().map(str::to_string))
        .collect();
    // Read in name order so both lists come out sorted without keeping names beside values.
    names.sort();
    let results: Vec<(String, Result<T>)> = futures::stream::iter(names)
        .map(|name| {
            let read = &read;
            async move { (name.clone(), read(name).await) }
        })
        .buffered(LIST_CONCURRENCY)
        .collect()
        .await;
    let (mut read_ok, mut failures) = (Vec::new(), Vec::new());
    for (name, result) in results {
        match result {
            Ok(value) => read_ok.push(value),
            Err(error) => failures.push(ListFailure { name, error }),
        }
    }
    Ok((read_ok, failures))
}

/// Every object key under `backups/<name>/`, for deleting a stowage backup or proving that
/// nothing of a Velero backup changed.
pub async fn list_backup_keys(store: &dyn ObjectStore, name: &str) -> Result<Vec<String>> {
    layout::validate_backup_name(name)?;
    keys_under(store, &layout::backup_dir(name)).await
}

/// Every object key under `dir` (ending in `/`), sorted.
async fn keys_under(store: &dyn ObjectStore, dir: &str) -> Result<Vec<String>> {
    let prefix = Path::from(dir.trim_end_matches('/'));
    let mut keys: Vec<String> = store
        .list(Some(&prefix))
        .map_ok(|meta| meta.location.to_string())
        .try_collect()
        .await
        .map_err(|error| FormatError::from_store(dir, error))?;
    keys.sort();
    Ok(keys)
}

/// Whether `restic/<namespace>` holds a restic repository (its `config` object exists). Only
/// looks: nothing under `restic/` is ever written by this crate. A restore checks this before
/// asking for the repository, so a missing one is reported instead of initialised afresh.
pub async fn restic_repository_exists(store: &dyn ObjectStore, namespace: &str) -> Result<bool> {
    let key = format!("{}/config", layout::restic_repository_key(namespace));
    match store.head(&Path::from(key.as_str())).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(error) => Err(FormatError::from_store(&key, error)),
    }
}

/// Reads `restores/<name>/stowage-restore.json`. A record whose `name` is not its directory's
/// is refused, so a copied or hand-edited file cannot pass for another restore.
pub async fn read_restore_record(
    store: &dyn ObjectStore,
    name: &str,
) -> Result<StowageRestoreRecord> {
    layout::validate_restore_name(name)?;
    let key = layout::restore_record_key(name);
    let record: StowageRestoreRecord =
        decode_json(&get(store, &key).await?, &key, "restore record")?;
    if record.name != name {
        return Err(FormatError::Invalid(format!(
            "{key}: the record names restore {:?}, not {name:?}",
            record.name
        )));
    }
    Ok(record)
}

/// Reads a restore's log text; `None` when absent.
pub async fn read_restore_logs(store: &dyn ObjectStore, name: &str) -> Result<Option<String>> {
    layout::validate_restore_name(name)?;
    let key = layout::restore_logs_key(name);
    get_optional(store, &key)
        .await?
        .map(|data| decode_logs(&data, &key))
        .transpose()
}

/// Reads a restore's results (Velero's or stowage's); `None` when absent.
pub async fn read_restore_results(
    store: &dyn ObjectStore,
    name: &str,
) -> Result<Option<RestoreResults>> {
    layout::validate_restore_name(name)?;
    let key = layout::restore_results_key(name);
    get_optional(store, &key)
        .await?
        .map(|data| decode_json_gz(&data, &key, "restore results"))
        .transpose()
}

/// Writes every file of restore `record.name`: its results (derived from the record, see
/// [`RestoreResults::of_record`]), its logs, and its record last, so a listing never shows a
/// restore whose other files are not there yet. Each file is one whole-object put: a reader
/// sees the previous version or the new one, never a part.
#[tracing::instrument(level = "debug", skip_all, fields(restore = %record.name))]
pub async fn write_restore(
    store: &dyn ObjectStore,
    record: &StowageRestoreRecord,
    logs: &str,
) -> Result<()> {
    let name = record.name.as_str();
    layout::validate_restore_name(name)?;
    let record_data = encode_json(record)?;
    let results_data = encode_json_gz(&RestoreResults::of_record(record))?;
    put(store, &layout::restore_results_key(name), results_data).await?;
    put(store, &layout::restore_logs_key(name), encode_logs(logs)).await?;
    put(store, &layout::restore_record_key(name), record_data).await
}

/// The result of listing a location's restores: readable records and unreadable ones.
#[derive(Debug, Default)]
pub struct RestoreListing {
    pub restores: Vec<StowageRestoreRecord>,
    /// Each `restores/<name>/` whose record is missing or does not parse, with why. A missing
    /// record is a restore Velero ran (it writes only logs and results there), one still being
    /// written, or what a partial delete left.
    pub failures: Vec<ListFailure>,
}

/// Lists the restores of a location: every `restores/<name>/` directory, reading its record.
/// Only a failure to list the location at all is an error.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn list_restores(store: &dyn ObjectStore) -> Result<RestoreListing> {
    let (restores, failures) =
        read_each_directory(store, layout::RESTORES_DIR, |name| async move {
            read_restore_record(store, &name).await
        })
        .await?;
    Ok(RestoreListing { restores, failures })
}

/// Every object key under `restores/<name>/`.
pub async fn list_restore_keys(store: &dyn ObjectStore, name: &str) -> Result<Vec<String>> {
    layout::validate_restore_name(name)?;
    keys_under(store, &layout::restore_dir(name)).await
}

/// Deletes every object under `restores/<name>/`, the record first: a delete stopped halfway
/// leaves a directory without a record, which listings skip, never a record whose logs are
/// gone. Deleting an absent restore is not an error.
#[tracing::instrument(level = "debug", skip(store), fields(restore = %name))]
pub async fn delete_restore(store: &dyn ObjectStore, name: &str) -> Result<()> {
    let record_key = layout::restore_record_key(name);
    let mut keys = list_restore_keys(store, name).await?;
    keys.sort_by_key(|key| *key != record_key);
    for key in keys {
        match store.delete(&Path::from(key.as_str())).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(error) => return Err(FormatError::from_store(&key, error)),
        }
    }
    Ok(())
}

/// Reads `schedules/<name>/stowage-schedule.json`; `None` when there is none. A record whose
/// name is not its directory's is refused, as for restores.
pub async fn read_schedule(store: &dyn ObjectStore, name: &str) -> Result<Option<ScheduleRecord>> {
    layout::validate_schedule_name(name)?;
    let key = layout::schedule_record_key(name);
    let Some(data) = get_optional(store, &key).await? else {
        return Ok(None);
    };
    let record: ScheduleRecord = decode_json(&data, &key, "schedule record")?;
    if record.name() != name {
        return Err(FormatError::Invalid(format!(
            "{key}: the record names schedule {:?}, not {name:?}",
            record.name()
        )));
    }
    Ok(Some(record))
}

/// Writes schedule `record`'s file in one whole-object put: a reader sees the previous version
/// or the new one, never a part.
#[tracing::instrument(level = "debug", skip_all, fields(schedule = %record.name()))]
pub async fn write_schedule(store: &dyn ObjectStore, record: &ScheduleRecord) -> Result<()> {
    layout::validate_schedule_name(record.name())?;
    put(
        store,
        &layout::schedule_record_key(record.name()),
        encode_json(record)?,
    )
    .await
}

/// Every schedule of the location (sorted by name) and each `schedules/<name>/` whose record
/// is missing or does not parse, with why. Only a failure to list the location is an error.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn list_schedules(
    store: &dyn ObjectStore,
) -> Result<(Vec<ScheduleRecord>, Vec<ListFailure>)> {
    read_each_directory(store, layout::SCHEDULES_DIR, |name| async move {
        read_schedule(store, &name)
            .await?
            .ok_or_else(|| FormatError::NotFound {
                key: layout::schedule_record_key(&name),
            })
    })
    .await
}

/// Deletes every object under `schedules/<name>/`; deleting an absent schedule is not an error.
#[tracing::instrument(level = "debug", skip(store), fields(schedule = %name))]
pub async fn delete_schedule(store: &dyn ObjectStore, name: &str) -> Result<()> {
    layout::validate_schedule_name(name)?;
    for key in keys_under(store, &format!("{}/{name}/", layout::SCHEDULES_DIR)).await? {
        match store.delete(&Path::from(key.as_str())).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(error) => return Err(FormatError::from_store(&key, error)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::BackupPhase;
    use crate::pod_volume_backup::{PodVolumeBackupPhase, tags};
    use object_store::memory::InMemory;
    use serde_json::json;

    fn stowage_backup(name: &str) -> BackupFiles {
        let mut backup = Backup::new(name, "stowage");
        backup.metadata.uid = Some(format!("uid-{name}"));
        backup.spec.included_namespaces = vec!["foo".into()];
        backup.status.phase = Some(BackupPhase::Completed);
        let mut pvb = PodVolumeBackup::new(format!("{name}-abcde"), "stowage");
        pvb.spec.pod.namespace = "foo".into();
        pvb.spec.pod.name = "sample".into();
        pvb.spec.volume = "pvc-volume".into();
        pvb.spec.tags.insert(tags::BACKUP.into(), name.into());
        pvb.status.phase = Some(PodVolumeBackupPhase::Completed);
        pvb.status.snapshot_id = "0123abcd".into();
        let mut resources = BackupResources::new();
        resources
            .insert_object(json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "sample", "namespace": "foo"}}))
            .unwrap();
        BackupFiles {
            backup,
            pod_volume_backups: vec![pvb],
            resources: Some(resources),
            logs: Some("line one\nline two\n".into()),
            stowage: Some(StowageBackupInfo::new(format!("id-{name}"))),
        }
    }

    #[tokio::test]
    async fn a_written_backup_reads_back_identically() {
        let store = InMemory::new();
        let files = stowage_backup("b1");
        write_backup(&store, &files).await.unwrap();
        let back = read_backup(&store, "b1").await.unwrap();
        assert_eq!(back, files);
        assert_eq!(back.origin(), Origin::Stowage);
        assert!(check_backup(&store, "b1").await.is_empty());
        let list = read_resource_list(&store, "b1").await.unwrap().unwrap();
        assert_eq!(list["v1/Pod"], ["foo/sample"]);
        assert_eq!(
            list_backup_keys(&store, "b1").await.unwrap(),
            [
                "backups/b1/b1-logs.gz",
                "backups/b1/b1-podvolumebackups.json.gz",
                "backups/b1/b1-resource-list.json.gz",
                "backups/b1/b1-stowage.json",
                "backups/b1/b1.tar.gz",
                "backups/b1/velero-backup.json",
            ]
        );
    }

    #[tokio::test]
    async fn listing_reports_broken_backups_beside_good_ones() {
        let store = InMemory::new();
        write_backup(&store, &stowage_backup("good")).await.unwrap();
        // A Velero backup: record only, no stowage file.
        put(
            &store,
            "backups/velero-one/velero-backup.json",
            encode_json(&Backup::new("velero-one", "velero")).unwrap(),
        )
        .await
        .unwrap();
        put(
            &store,
            "backups/bad-json/velero-backup.json",
            b"{\"kind\": ".to_vec(),
        )
        .await
        .unwrap();
        put(&store, "backups/no-record/no-record.tar.gz", vec![1, 2, 3])
            .await
            .unwrap();
        put(&store, "restic/foo/config", vec![0]).await.unwrap();

        let listing = list_backups(&store).await.unwrap();
        let names: Vec<(&str, Origin)> = listing
            .backups
            .iter()
            .map(|listed| (listed.name.as_str(), listed.origin()))
            .collect();
        assert_eq!(
            names,
            [("good", Origin::Stowage), ("velero-one", Origin::Velero)]
        );
        let failures: Vec<String> = listing
            .failures
            .iter()
            .map(|failure| format!("{}: {}", failure.name, failure.error))
            .collect();
        assert_eq!(failures.len(), 2, "{failures:?}");
        assert!(
            failures[0].starts_with(
                "bad-json: backups/bad-json/velero-backup.json: not a valid Backup record"
            ),
            "{failures:?}"
        );
        assert_eq!(
            failures[1],
            "no-record: backups/no-record/velero-backup.json: not found"
        );
    }

    #[tokio::test]
    async fn restic_repository_is_found_by_its_config_object() {
        let store = InMemory::new();
        assert!(!restic_repository_exists(&store, "foo").await.unwrap());
        store
            .put(
                &Path::from("restic/foo/config"),
                PutPayload::from_static(b"x"),
            )
            .await
            .unwrap();
        assert!(restic_repository_exists(&store, "foo").await.unwrap());
        assert!(!restic_repository_exists(&store, "fo").await.unwrap());
    }

    #[tokio::test]
    async fn empty_location_lists_nothing() {
        let listing = list_backups(&InMemory::new()).await.unwrap();
        assert!(listing.backups.is_empty() && listing.failures.is_empty());
        // A fresh local directory has no `backups/` at all.
        let dir = tempfile::tempdir().unwrap();
        let local = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        let listing = list_backups(&local).await.unwrap();
        assert!(listing.backups.is_empty() && listing.failures.is_empty());
        assert!(list_backup_keys(&local, "absent").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn local_directory_store_round_trips_a_backup() {
        let dir = tempfile::tempdir().unwrap();
        let local = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        let files = stowage_backup("b1");
        write_backup(&local, &files).await.unwrap();
        assert!(
            dir.path()
                .join("backups/b1/b1-podvolumebackups.json.gz")
                .is_file()
        );
        assert_eq!(read_backup(&local, "b1").await.unwrap(), files);
        let listing = list_backups(&local).await.unwrap();
        assert_eq!(listing.backups.len(), 1);
        assert_eq!(listing.backups[0].name, "b1");
    }

    #[tokio::test]
    async fn velero_backups_are_never_overwritten() {
        let store = InMemory::new();
        put(
            &store,
            "backups/b1/velero-backup.json",
            encode_json(&Backup::new("b1", "velero")).unwrap(),
        )
        .await
        .unwrap();
        let error = write_backup(&store, &stowage_backup("b1"))
            .await
            .unwrap_err();
        assert!(matches!(error, FormatError::ReadOnly { .. }), "{error}");
        assert!(error.to_string().contains("written by Velero"), "{error}");
        assert!(ensure_writable(&store, "b1").await.is_err());
        // New names and stowage's own backups are writable.
        assert!(ensure_writable(&store, "new-one").await.is_ok());
        write_backup(&store, &stowage_backup("mine")).await.unwrap();
        assert!(ensure_writable(&store, "mine").await.is_ok());
        write_backup(&store, &stowage_backup("mine")).await.unwrap();
        assert_eq!(
            list_backup_keys(&store, "b1").await.unwrap(),
            ["backups/b1/velero-backup.json"]
        );
        let mut files = stowage_backup("b2");
        files.stowage = None;
        assert!(write_backup(&store, &files).await.is_err());
    }

    #[tokio::test]
    async fn check_collects_every_broken_file() {
        let store = InMemory::new();
        write_backup(&store, &stowage_backup("b1")).await.unwrap();
        put(
            &store,
            "backups/b1/b1.tar.gz",
            crate::codec::gzip(&[7u8; 2048]),
        )
        .await
        .unwrap();
        put(&store, "backups/b1/b1-logs.gz", b"plain".to_vec())
            .await
            .unwrap();
        let problems = check_backup(&store, "b1").await;
        let keys: Vec<&str> = problems.iter().filter_map(FormatError::key).collect();
        assert_eq!(
            keys,
            ["backups/b1/b1.tar.gz", "backups/b1/b1-logs.gz"],
            "{problems:?}"
        );
        assert!(matches!(problems[0], FormatError::Tar { .. }));
        assert!(matches!(problems[1], FormatError::Gzip { .. }));
        let error = read_backup(&store, "b1").await.unwrap_err();
        assert_eq!(error.key(), Some("backups/b1/b1.tar.gz"));
    }

    #[tokio::test]
    async fn null_pod_volume_backup_list_is_empty() {
        let store = InMemory::new();
        put(
            &store,
            "backups/b1/b1-podvolumebackups.json.gz",
            crate::codec::gzip(b"null"),
        )
        .await
        .unwrap();
        assert!(
            read_pod_volume_backups(&store, "b1")
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            read_pod_volume_backups(&store, "absent")
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn invalid_names_are_refused_before_any_io() {
        let error = read_backup(&InMemory::new(), "../etc").await.unwrap_err();
        assert!(matches!(error, FormatError::InvalidName { .. }));
    }

    fn restore_record(name: &str) -> StowageRestoreRecord {
        use crate::restore::RestoreVolumeRecord;
        let mut record = StowageRestoreRecord::new(name);
        record.uid = format!("uid-{name}");
        record.spec.backup_name = "nightly".into();
        record.status.phase = "PartiallyFailed".into();
        record.status.volumes = vec![
            RestoreVolumeRecord {
                namespace: "foo".into(),
                pod: "sample".into(),
                volume: "data".into(),
                phase: "Completed".into(),
                ..Default::default()
            },
            RestoreVolumeRecord {
                namespace: "foo".into(),
                pod: "sample".into(),
                volume: "cache".into(),
                phase: "Failed".into(),
                message: "no agent on node node-b".into(),
                ..Default::default()
            },
        ];
        record
    }

    #[tokio::test]
    async fn local_directory_store_round_trips_a_restore_in_velero_s_layout() {
        let dir = tempfile::tempdir().unwrap();
        let local = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        let record = restore_record("r1");
        let logs = "2026-01-01T00:00:00.000Z info restore r1 started\n";
        write_restore(&local, &record, logs).await.unwrap();
        assert_eq!(
            list_restore_keys(&local, "r1").await.unwrap(),
            [
                "restores/r1/restore-r1-logs.gz",
                "restores/r1/restore-r1-results.gz",
                "restores/r1/stowage-restore.json",
            ]
        );
        assert_eq!(read_restore_record(&local, "r1").await.unwrap(), record);
        assert_eq!(
            read_restore_logs(&local, "r1").await.unwrap().as_deref(),
            Some(logs)
        );
        // The results file is gzipped JSON in Velero's shape, read as Velero's decoder would.
        let raw = std::fs::read(dir.path().join("restores/r1/restore-r1-results.gz")).unwrap();
        let results: serde_json::Value =
            decode_json_gz(&raw, "restore-r1-results.gz", "results").unwrap();
        assert_eq!(
            results,
            json!({
                "errors": {"namespaces": {"foo": ["pod volume sample/cache: restore failed: no agent on node node-b"]}},
                "warnings": {},
            })
        );
        assert_eq!(
            read_restore_results(&local, "r1").await.unwrap().unwrap(),
            RestoreResults::of_record(&record)
        );

        // Written again (a later state of the same restore): the files are replaced whole.
        let mut later = record.clone();
        later.status.phase = "Failed".into();
        write_restore(&local, &later, "").await.unwrap();
        assert_eq!(read_restore_record(&local, "r1").await.unwrap(), later);
        assert_eq!(
            read_restore_logs(&local, "r1").await.unwrap().as_deref(),
            Some("")
        );
        assert!(read_restore_logs(&local, "absent").await.unwrap().is_none());
        assert!(
            read_restore_results(&local, "absent")
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn restore_listing_reports_garbage_beside_good_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        assert!(list_restores(&store).await.unwrap().restores.is_empty());
        write_restore(&store, &restore_record("good"), "")
            .await
            .unwrap();
        write_restore(&store, &restore_record("also-good"), "")
            .await
            .unwrap();
        put(
            &store,
            "restores/bad-json/stowage-restore.json",
            b"{\"name\": ".to_vec(),
        )
        .await
        .unwrap();
        let mut other = restore_record("other");
        other.name = "other".into();
        put(
            &store,
            "restores/renamed/stowage-restore.json",
            encode_json(&other).unwrap(),
        )
        .await
        .unwrap();
        // What a Velero restore leaves: logs and results, no stowage record.
        put(
            &store,
            "restores/velero-restore/restore-velero-restore-logs.gz",
            encode_logs("x"),
        )
        .await
        .unwrap();
        // A backup is not a restore.
        write_backup(&store, &stowage_backup("b1")).await.unwrap();

        let listing = list_restores(&store).await.unwrap();
        let names: Vec<&str> = listing.restores.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["also-good", "good"]);
        let failures: Vec<String> = listing
            .failures
            .iter()
            .map(|failure| format!("{}: {}", failure.name, failure.error))
            .collect();
        assert_eq!(failures.len(), 3, "{failures:?}");
        assert!(
            failures[0].starts_with(
                "bad-json: restores/bad-json/stowage-restore.json: not a valid restore record"
            ),
            "{failures:?}"
        );
        assert!(
            failures[1].contains(
                "restores/renamed/stowage-restore.json: the record names restore \"other\""
            ),
            "{failures:?}"
        );
        assert_eq!(
            failures[2],
            "velero-restore: restores/velero-restore/stowage-restore.json: not found"
        );
        assert!(matches!(
            listing.failures[2].error,
            FormatError::NotFound { .. }
        ));
    }

    #[tokio::test]
    async fn deleting_a_restore_removes_its_directory_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        write_restore(&store, &restore_record("r1"), "log")
            .await
            .unwrap();
        write_restore(&store, &restore_record("r10"), "log")
            .await
            .unwrap();
        write_backup(&store, &stowage_backup("r1")).await.unwrap();
        delete_restore(&store, "r1").await.unwrap();
        assert!(list_restore_keys(&store, "r1").await.unwrap().is_empty());
        assert!(matches!(
            read_restore_record(&store, "r1").await.unwrap_err(),
            FormatError::NotFound { .. }
        ));
        let names: Vec<String> = list_restores(&store)
            .await
            .unwrap()
            .restores
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names, ["r10"]);
        assert_eq!(list_backup_keys(&store, "r1").await.unwrap().len(), 6);
        // Absent already: nothing to do, no error.
        delete_restore(&store, "r1").await.unwrap();
        let error = delete_restore(&store, "../backups").await.unwrap_err();
        assert!(
            matches!(error, FormatError::InvalidRestoreName { .. }),
            "{error}"
        );
    }
}

#[cfg(test)]
mod schedule_tests {
    use super::*;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn schedules_are_written_listed_and_deleted_under_their_directory() {
        let store = InMemory::new();
        let mut record = ScheduleRecord::new("nightly");
        record.spec.schedule = "0 2 * * *".into();
        write_schedule(&store, &record).await.unwrap();
        write_schedule(&store, &ScheduleRecord::new("hourly"))
            .await
            .unwrap();
        // A directory whose record does not parse is reported, not fatal to the listing.
        put(
            &store,
            "schedules/broken/stowage-schedule.json",
            b"{".to_vec(),
        )
        .await
        .unwrap();
        let (schedules, failures) = list_schedules(&store).await.unwrap();
        let names: Vec<&str> = schedules.iter().map(|s| s.name()).collect();
        assert_eq!(names, ["hourly", "nightly"]);
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].name, "broken");
        assert_eq!(
            read_schedule(&store, "nightly").await.unwrap().unwrap(),
            record
        );
        delete_schedule(&store, "nightly").await.unwrap();
        assert!(read_schedule(&store, "nightly").await.unwrap().is_none());
        delete_schedule(&store, "nightly").await.unwrap();
        assert!(
            write_schedule(&store, &ScheduleRecord::new("../x"))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_record_under_another_name_is_refused() {
        let store = InMemory::new();
        let record = ScheduleRecord::new("other");
        put(
            &store,
            &layout::schedule_record_key("nightly"),
            encode_json(&record).unwrap(),
        )
        .await
        .unwrap();
        let error = read_schedule(&store, "nightly").await.unwrap_err();
        assert!(error.to_string().contains("names schedule"), "{error}");
    }
}
