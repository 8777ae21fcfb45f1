//! The real restore helper, run as a recreated pod's init container would run it: it waits
//! for a restored volume's done file (or failure marker) and exits with what it found.

use std::{
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use crate::binary;

/// Starts the restore helper of restore `uid` on `volume` with its default timeout (hours),
/// its output in `log`.
pub fn start(uid: &str, volume: &Path, log: &Path) -> Child {
    let file = std::fs::File::create(log).expect("creating the helper log");
    Command::new(binary("stowage-restore-helper"))
        .arg(uid)
        .arg(volume)
        .args(["--poll-millis", "100"])
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("cloning the helper log handle"))
        .stderr(file)
        .spawn()
        .expect("starting the restore helper")
}

/// The helper's exit status once it exited, or panics with its log if it still waits at
/// `deadline`.
pub fn exit(helper: &mut Child, deadline: Instant, log: &Path) -> ExitStatus {
    loop {
        if let Some(status) = helper.try_wait().expect("polling the restore helper") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = helper.kill();
            let _ = helper.wait();
            panic!(
                "the restore helper still waits; its log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
