//! Velero's exec hooks for stowage: the pod annotations that declare them, read into typed
//! hooks with Velero's defaults ([`annotations`]), running one in a pod's container with a
//! timeout and a cancellation token ([`exec`]) through the Kubernetes API's `pods/exec`
//! ([`KubePodExec`]), a pod's pre and post hooks around the backup of its volumes
//! ([`pod`]), the hooks a backup's spec declares for the pods it selects ([`spec`]), and a
//! restored pod's post-restore hook once its container runs ([`restore`]).

pub mod annotations;
pub mod exec;
mod kube_exec;
pub mod pod;
pub mod restore;
pub mod spec;
#[cfg(test)]
mod testing;

pub use annotations::{
    AnnotationError, BackupHooks, ExecHook, HookPhase, InitContainerHook, OnError, backup_hooks,
    declares_restore_exec_hook, restore_exec_hook, restore_init_hook,
};
pub use exec::{
    Capture, DEFAULT_OUTPUT_LIMIT, ExecError, ExecTarget, HookResult, HookRun, Output, PodExec,
    TargetError, run_hook, target,
};
pub use kube_exec::{KubePodExec, exit_code};
pub use pod::{HookedBackup, around_pod_volumes, container_up};
pub use restore::{Wait, post_restore};
pub use spec::{
    RawExecHook, RawResourceHook, ResourceHook, SpecHookError, pod_backup_hooks, resource_hooks,
};
