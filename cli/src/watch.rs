//! Following a backup or restore until it ends (`--wait`): an indicatif progress bar when the
//! output is a terminal, plain lines otherwise (CI logs, pipes), one per change.

use std::io::Write;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::table::human_bytes;

/// The part of a backup or restore the progress display shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub kind: &'static str,
    pub name: String,
    pub phase: String,
    pub volumes_total: u32,
    pub volumes_completed: u32,
    pub volumes_failed: u32,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Whether `bytes_total` is final; until then it is only what restic has counted so far
    /// (see [`crate::view::TotalsKnown`]) and is not shown.
    pub bytes_total_known: bool,
}

/// One line per state, for non-terminal output:
/// `backup demo: InProgress, 1/2 volumes done, 0 failed, 1.0 MiB of 2.0 MiB`.
pub fn plain_line(snapshot: &Snapshot) -> String {
    let mut line = format!(
        "{} {}: {}, {}/{} volumes done, {} failed",
        snapshot.kind,
        snapshot.name,
        snapshot.phase,
        snapshot.volumes_completed,
        snapshot.volumes_total,
        snapshot.volumes_failed
    );
    if !snapshot.bytes_total_known {
        if snapshot.bytes_done > 0 {
            line.push_str(&format!(", {} so far", human_bytes(snapshot.bytes_done)));
        }
    } else if snapshot.bytes_total > 0 || snapshot.bytes_done > 0 {
        line.push_str(&format!(
            ", {} of {}",
            human_bytes(snapshot.bytes_done),
            human_bytes(snapshot.bytes_total)
        ));
    }
    line
}

/// Where progress goes while waiting.
pub enum Display {
    Bar {
        bar: ProgressBar,
        /// Whether the byte bar is shown yet: until restic has counted the bytes (every
        /// volume's total is known), a full or empty bar would say something false, so only a
        /// spinner shows, with the bytes done so far.
        counting: bool,
        to_stderr: bool,
    },
    Lines {
        to_stderr: bool,
        last: Option<String>,
    },
}

impl Display {
    /// A bar when the chosen stream is a terminal, else plain lines on it. Progress goes to
    /// stderr when stdout carries `-o json|yaml`, so the document stays parseable.
    pub fn new(to_stderr: bool) -> Display {
        use std::io::IsTerminal;
        let terminal = if to_stderr {
            std::io::stderr().is_terminal()
        } else {
            std::io::stdout().is_terminal()
        };
        if !terminal {
            return Display::Lines {
                to_stderr,
                last: None,
            };
        }
        let target = if to_stderr {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::stdout()
        };
        let bar = ProgressBar::with_draw_target(Some(0), target);
        bar.set_style(spinner_style());
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        Display::Bar {
            bar,
            counting: false,
            to_stderr,
        }
    }

    pub fn show(&mut self, snapshot: &Snapshot) {
        match self {
            Display::Bar { bar, counting, .. } => {
                let known = snapshot.bytes_total_known && snapshot.bytes_total > 0;
                if known != *counting {
                    bar.set_style(if known { bar_style() } else { spinner_style() });
                    *counting = known;
                }
                bar.set_length(snapshot.bytes_total.max(snapshot.bytes_done));
                bar.set_position(snapshot.bytes_done);
                let so_far = if !known && snapshot.bytes_done > 0 {
                    format!(", {} so far", human_bytes(snapshot.bytes_done))
                } else {
                    String::new()
                };
                bar.set_message(format!(
                    "{} {}: {} {}/{} volumes{so_far}",
                    snapshot.kind,
                    snapshot.name,
                    snapshot.phase,
                    snapshot.volumes_completed + snapshot.volumes_failed,
                    snapshot.volumes_total
                ));
            }
            Display::Lines { to_stderr, last } => {
                let line = plain_line(snapshot);
                // Progress events come often; a log only needs the changes.
                if last.as_deref() != Some(line.as_str()) {
                    if *to_stderr {
                        eprintln!("{line}");
                    } else {
                        println!("{line}");
                        let _ = std::io::stdout().flush();
                    }
                    *last = Some(line);
                }
            }
        }
    }

    /// Draws the final state and ends its line, so what is printed next starts on its own.
    pub fn finish(&mut self) {
        if let Display::Bar { bar, to_stderr, .. } = self {
            bar.finish();
            end_line(*to_stderr);
        }
    }

    /// Leaves the bar as drawn and returns to plain output (on Ctrl-C or an error).
    pub fn abandon(&mut self) {
        if let Display::Bar { bar, to_stderr, .. } = self {
            bar.abandon();
            end_line(*to_stderr);
        }
    }
}

/// indicatif leaves the cursor at the end of the finished bar's line.
fn end_line(to_stderr: bool) {
    if to_stderr {
        eprintln!();
    } else {
        println!();
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} ({elapsed})")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_show_phase_counts_and_bytes() {
        let mut snapshot = Snapshot {
            kind: "backup",
            name: "demo".into(),
            phase: "InProgress".into(),
            volumes_total: 2,
            volumes_completed: 1,
            volumes_failed: 0,
            bytes_done: 1024 * 1024,
            bytes_total: 2 * 1024 * 1024,
            bytes_total_known: true,
        };
        assert_eq!(
            plain_line(&snapshot),
            "backup demo: InProgress, 1/2 volumes done, 0 failed, 1.0 MiB of 2.0 MiB"
        );
        // restic's running count is not printed as the total.
        snapshot.bytes_total_known = false;
        assert_eq!(
            plain_line(&snapshot),
            "backup demo: InProgress, 1/2 volumes done, 0 failed, 1.0 MiB so far"
        );
        snapshot.bytes_done = 0;
        snapshot.bytes_total = 0;
        assert_eq!(
            plain_line(&snapshot),
            "backup demo: InProgress, 1/2 volumes done, 0 failed"
        );
    }
}
