//! Schedules: backups the orchestrator starts itself at the times of a cron expression. This
//! module owns the schedules' book (in memory, written through to the storage location so a
//! fresh orchestrator finds them) and the six API operations on it; `scheduler` fires them,
//! `retention` applies a backup's keep policy when it ends, `records` is the bucket's format.

pub mod records;
pub mod retention;
pub mod scheduler;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use chrono::{DateTime, Utc};
use stowage_proto::v1::{
    CreateScheduleRequest, Schedule, ScheduleSpec, ScheduleStatus, SkippedFiring,
};
use stowage_schedule::Schedule as Expression;
use stowage_velero_format as vf;
use tokio::sync::Notify;

use crate::{
    deps::Deps,
    error::{Error, Result, validate_name},
};

/// How many skipped firings a schedule's status keeps, newest first.
pub const SKIPPED_KEPT: usize = 10;

/// The longest schedule name: its backups are named `<schedule>-<yyyymmddhhmmss>`, and a
/// backup name is at most 63 characters (it is a label value).
pub const MAX_NAME: usize = stowage_contract::names::MAX_LABEL - 15;

/// Where schedules are kept: the storage location (`schedules/<name>/stowage-schedule.json`).
#[tonic::async_trait]
pub trait ScheduleStore: Send + Sync {
    async fn put_schedule(&self, record: &vf::ScheduleRecord) -> Result<()>;
    /// Every readable schedule; an unreadable one is logged and left out.
    async fn list_schedules(&self) -> Result<Vec<vf::ScheduleRecord>>;
    async fn delete_schedule(&self, name: &str) -> Result<()>;
}

/// The time schedules run by: the wall clock, or in tests one that moves with tokio's paused
/// time.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// One schedule: what is stored, and its parsed expression.
#[derive(Clone)]
struct Slot {
    schedule: Schedule,
    expression: Expression,
    /// When it was last resumed (stored).
    resumed: Option<DateTime<Utc>>,
}

impl Slot {
    /// The time its next firings are counted from: its last firing, or its creation, or its
    /// last resume, whichever is latest (a paused schedule's firings are not made up).
    fn anchor(&self) -> DateTime<Utc> {
        let status = self.schedule.status.clone().unwrap_or_default();
        [
            status.last_fired.as_ref().and_then(records::to_chrono),
            self.schedule.created.as_ref().and_then(records::to_chrono),
            self.resumed,
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(DateTime::UNIX_EPOCH)
    }

    fn paused(&self) -> bool {
        self.schedule.spec.as_ref().is_some_and(|s| s.paused)
    }

    fn from_record(record: &vf::ScheduleRecord) -> Result<Slot> {
        let (schedule, resumed) = records::from_record(record);
        let expression = parse(&schedule.name, &schedule.spec.clone().unwrap_or_default())?;
        Ok(Slot {
            schedule,
            expression,
            resumed,
        })
    }
}

/// The schedules this orchestrator knows, written through to the store.
pub struct Book {
    store: Option<Arc<dyn ScheduleStore>>,
    clock: Arc<dyn Clock>,
    slots: Mutex<BTreeMap<String, Slot>>,
    /// One change (slot and its record) at a time, so records are written in the order the
    /// changes were made.
    writing: tokio::sync::Mutex<()>,
    /// Wakes the scheduler when a schedule is created, changed or deleted.
    pub(crate) changed: Notify,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn parse(name: &str, spec: &ScheduleSpec) -> Result<Expression> {
    Expression::parse(&spec.schedule, name).map_err(|error| match error {
        stowage_schedule::ScheduleError::Invalid { expression, reason } => Error::InvalidArgument {
            what: "schedule",
            value: expression,
            reason,
        },
    })
}

/// Checks a schedule's name: a backup name, short enough for its backups' names.
pub fn validate_schedule_name(name: &str) -> Result<()> {
    validate_name("schedule name", name)?;
    if name.len() > MAX_NAME {
        return Err(Error::InvalidArgument {
            what: "schedule name",
            value: name.to_string(),
            reason: format!(
                "must be at most {MAX_NAME} characters, so that its backups' names \
                 (`<schedule>-<yyyymmddhhmmss>`) are at most 63"
            ),
        });
    }
    Ok(())
}

impl Book {
    pub fn new(store: Option<Arc<dyn ScheduleStore>>, clock: Arc<dyn Clock>) -> Book {
        Book {
            store,
            clock,
            slots: Mutex::new(BTreeMap::new()),
            writing: tokio::sync::Mutex::new(()),
            changed: Notify::new(),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Reads the schedules in the store; those already known keep their in-memory state. A
    /// record whose expression no longer parses is logged and left out.
    pub async fn load(&self) -> Result<usize> {
        let Some(store) = &self.store else {
            return Ok(0);
        };
        let records = store.list_schedules().await?;
        let mut slots = lock(&self.slots);
        let mut added = 0;
        for record in records {
            if slots.contains_key(record.name()) {
                continue;
            }
            match Slot::from_record(&record) {
                Ok(slot) => {
                    slots.insert(record.name().to_string(), slot);
                    added += 1;
                }
                Err(error) => {
                    tracing::warn!(schedule = %record.name(), %error, "schedule left out")
                }
            }
        }
        drop(slots);
        if added > 0 {
            self.changed.notify_one();
        }
        Ok(added)
    }

    async fn write(&self, slot: &Slot) -> Result<()> {
        match &self.store {
            Some(store) => {
                store
                    .put_schedule(&records::to_record(&slot.schedule, slot.resumed))
                    .await
            }
            None => Ok(()),
        }
    }

    /// Changes schedule `name` with `change` and writes it; `None` when there is no such
    /// schedule. The write failing is returned, the change kept in memory.
    async fn change(
        &self,
        name: &str,
        change: impl FnOnce(&mut Slot),
    ) -> Option<(Schedule, Result<()>)> {
        let _writing = self.writing.lock().await;
        let slot = {
            let mut slots = lock(&self.slots);
            let slot = slots.get_mut(name)?;
            change(slot);
            slot.clone()
        };
        let written = self.write(&slot).await;
        self.changed.notify_one();
        Some((slot.schedule, written))
    }

    fn slot(&self, name: &str) -> Result<Slot> {
        lock(&self.slots)
            .get(name)
            .cloned()
            .ok_or_else(|| Error::ScheduleNotFound(name.to_string()))
    }

    fn slots(&self) -> Vec<Slot> {
        lock(&self.slots).values().cloned().collect()
    }
}

/// Validates the request (name, expression, and the template as CreateBackup validates a
/// backup's spec) and stores the new schedule.
pub async fn create(deps: &Deps, request: CreateScheduleRequest) -> Result<Schedule> {
    let book = &deps.schedules;
    validate_schedule_name(&request.name)?;
    let mut spec = request.spec.unwrap_or_default();
    let expression = parse(&request.name, &spec)?;
    let template = spec.template.get_or_insert_with(Default::default);
    crate::backup::validate_spec(template)?;
    let schedule = Schedule {
        name: request.name.clone(),
        uid: uuid::Uuid::new_v4().to_string(),
        spec: Some(spec),
        status: Some(ScheduleStatus::default()),
        created: Some(records::to_timestamp(&book.now())),
    };
    let slot = Slot {
        schedule,
        expression,
        resumed: None,
    };
    let _writing = book.writing.lock().await;
    if lock(&book.slots).contains_key(&request.name) {
        return Err(Error::ScheduleExists(request.name));
    }
    // Stored first: a schedule the API reported created is one a restart finds.
    book.write(&slot).await?;
    lock(&book.slots).insert(request.name.clone(), slot.clone());
    book.changed.notify_one();
    tracing::info!(schedule = %request.name, expression = %slot.expression.expression(), "schedule created");
    Ok(shown(deps, &slot))
}

pub fn get(deps: &Deps, name: &str) -> Result<Schedule> {
    validate_name("schedule name", name)?;
    Ok(shown(deps, &deps.schedules.slot(name)?))
}

pub fn list(deps: &Deps) -> Vec<Schedule> {
    deps.schedules
        .slots()
        .iter()
        .map(|slot| shown(deps, slot))
        .collect()
}

/// Pauses or resumes schedule `name`. A resumed schedule fires next at its first time after
/// now: the firings it missed while paused are not made up.
pub async fn set_paused(deps: &Deps, name: &str, paused: bool) -> Result<Schedule> {
    validate_name("schedule name", name)?;
    let now = deps.schedules.now();
    let (_, written) = deps
        .schedules
        .change(name, |slot| {
            let was_paused = slot.paused();
            slot.schedule
                .spec
                .get_or_insert_with(Default::default)
                .paused = paused;
            if was_paused && !paused {
                slot.resumed = Some(now);
            }
        })
        .await
        .ok_or_else(|| Error::ScheduleNotFound(name.to_string()))?;
    written?;
    get(deps, name)
}

/// Deletes schedule `name` from the store and the book. Its backups stay (as Velero's do); a
/// backup it is running runs to its end.
pub async fn delete(deps: &Deps, name: &str) -> Result<()> {
    validate_name("schedule name", name)?;
    let book = &deps.schedules;
    let _writing = book.writing.lock().await;
    if !lock(&book.slots).contains_key(name) {
        return Err(Error::ScheduleNotFound(name.to_string()));
    }
    if let Some(store) = &book.store {
        store.delete_schedule(name).await?;
    }
    lock(&book.slots).remove(name);
    book.changed.notify_one();
    tracing::info!(schedule = %name, "schedule deleted");
    Ok(())
}

/// The schedule as the API shows it: its stored fields plus the next firing and what its
/// retention policy would delete after its next backup.
fn shown(deps: &Deps, slot: &Slot) -> Schedule {
    let mut schedule = slot.schedule.clone();
    let now = deps.schedules.now();
    let template = schedule
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    let status = schedule.status.get_or_insert_with(Default::default);
    if !slot.paused() {
        status.next_firing = match slot.expression.decide(slot.anchor(), now, false) {
            stowage_schedule::Decision::Wait { next } => Some(next),
            stowage_schedule::Decision::Fire { scheduled, .. }
            | stowage_schedule::Decision::SkipOverlap { scheduled, .. } => Some(scheduled),
        }
        .filter(|next| *next < DateTime::<Utc>::MAX_UTC)
        .map(|next| records::to_timestamp(&next));
    }
    status.would_delete = retention::would_delete(deps, &schedule.name, &template, now);
    schedule
}

/// Adds `firing` to the front of `skipped`, keeping the newest [`SKIPPED_KEPT`].
fn push_skipped(skipped: &mut Vec<SkippedFiring>, firing: SkippedFiring) {
    skipped.insert(0, firing);
    skipped.truncate(SKIPPED_KEPT);
}

/// The schedule label of backup labels `labels`, if a schedule made it.
pub fn schedule_of(labels: &HashMap<String, String>) -> Option<&str> {
    labels
        .get(stowage_schedule::SCHEDULE_LABEL)
        .map(String::as_str)
}
