//! Storage outages as restic 0.17+ lives through them. restic retries a failed storage request
//! by itself, for up to 15 minutes and with no flag to shorten that, printing one stderr line
//! per retry (`Save(<data/1a2b…>) returned error, retrying after 1.3s: <reason>`). The runner
//! reads those lines so its caller sees an outage as it happens ([`StorageRetry`]), and bounds
//! it ([`OutageClock`]): restic that has been retrying for longer than the caller's timeout with
//! no progress in between is stopped, and the run fails as
//! [`crate::ResticError::StorageOutage`].

use std::time::Duration;

use tokio::time::Instant;

/// One retry restic announced on stderr.
#[derive(Clone, Debug, PartialEq)]
pub struct StorageRetry {
    /// The restic command that is retrying (`backup`, `restore`, …).
    pub command: String,
    /// The backend operation that failed, e.g. `Stat(<config/>)` or `Save(<data/1a2b3c4d5e>)`.
    pub operation: String,
    /// How long restic waits before it tries the request again.
    pub delay: Duration,
    /// restic's words for the failure (`dial tcp …: connect: connection refused`).
    pub reason: String,
}

const RETRYING: &str = " returned error, retrying after ";

/// Reads `line` as restic's retry announcement, `None` for any other line. Terminal control
/// sequences restic writes around its progress (`\x1b[2K`) are ignored.
pub fn parse_retry_line(command: &str, line: &str) -> Option<StorageRetry> {
    let (operation, rest) = line.split_once(RETRYING)?;
    let (delay, reason) = rest.split_once(": ")?;
    let delay = parse_go_duration(delay.trim())?;
    let operation = operation
        .rsplit('\x1b')
        .next()
        .map(|tail| tail.trim_start_matches("[2K"))
        .unwrap_or(operation)
        .trim();
    Some(StorageRetry {
        command: command.to_string(),
        operation: operation.to_string(),
        delay,
        reason: reason.trim().to_string(),
    })
}

/// Parses a Go `time.Duration` as Go prints it: `1.34050987s`, `1m2.5s`, `500ms`, `1h0m0s`,
/// `750µs`, `0s`.
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = 0f64;
    let mut any = false;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += number * seconds;
        any = true;
    }
    any.then(|| Duration::from_secs_f64(total))
}

/// The clock of one restic run's storage outage: it starts at the first retry restic announces
/// and stops when the run makes progress again. Pure bookkeeping over the instants it is
/// given; the runner asks it for the [`OutageClock::deadline`] to stop restic at.
#[derive(Clone, Debug, Default)]
pub struct OutageClock {
    /// When restic announced the first retry since the last progress; `None` while none.
    since: Option<Instant>,
    /// The most recent retry, for the error naming the outage.
    last: Option<StorageRetry>,
    /// The largest progress seen so far (bytes and files done together).
    progress: Option<(u64, u64)>,
}

impl OutageClock {
    pub fn new() -> Self {
        OutageClock::default()
    }

    /// restic announced `retry` at `now`; starts the clock unless it runs already.
    pub fn retried(&mut self, now: Instant, retry: StorageRetry) {
        self.since.get_or_insert(now);
        self.last = Some(retry);
    }

    /// restic reported `bytes` and `files` done; when either advanced since the last report,
    /// the outage (if any) is over. The first report only sets where counting starts: stdout
    /// and stderr are read apart, so it may tell of work done before the retry. Returns
    /// whether it ended an outage.
    pub fn progressed(&mut self, bytes: u64, files: u64) -> bool {
        let advanced = match self.progress {
            None => false,
            Some((seen_bytes, seen_files)) => bytes > seen_bytes || files > seen_files,
        };
        let (seen_bytes, seen_files) = self.progress.unwrap_or_default();
        self.progress = Some((bytes.max(seen_bytes), files.max(seen_files)));
        if advanced && self.since.is_some() {
            self.since = None;
            return true;
        }
        false
    }

    /// When an outage that lasts `timeout` ends the run; `None` while restic is not retrying.
    pub fn deadline(&self, timeout: Duration) -> Option<Instant> {
        self.since.map(|since| since + timeout)
    }

    /// How long the current outage has lasted at `now`; zero while there is none.
    pub fn lasted(&self, now: Instant) -> Duration {
        self.since
            .map(|since| now.saturating_duration_since(since))
            .unwrap_or_default()
    }

    /// The most recent retry restic announced in this run.
    pub fn last_retry(&self) -> Option<&StorageRetry> {
        self.last.as_ref()
    }
}

/// The `bytes` and `files` done of a `--json` status line of `backup` (`bytes_done`,
/// `files_done`) or `restore` (`bytes_restored`, `files_restored`); `None` for other lines.
pub fn status_progress(line: &str) -> Option<(u64, u64)> {
    let line = line.trim();
    if !line.starts_with('{') || !line.contains("\"status\"") {
        return None;
    }
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    if value.get("message_type")?.as_str()? != "status" {
        return None;
    }
    let field = |names: [&str; 2]| {
        names
            .iter()
            .filter_map(|name| value.get(*name).and_then(serde_json::Value::as_u64))
            .max()
            .unwrap_or(0)
    };
    Some((
        field(["bytes_done", "bytes_restored"]),
        field(["files_done", "files_restored"]),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// restic 0.18.0's words, printed while the S3 server it talks to was down.
    const STAT: &str = "Stat(<config/>) returned error, retrying after 1.34050987s: Stat: Get \"http://127.0.0.1:45991/bkt/?location=\": dial tcp 127.0.0.1:45991: connect: connection refused";

    fn retry(reason: &str) -> StorageRetry {
        StorageRetry {
            command: "backup".into(),
            operation: "Save(<data/1a2b3c4d5e>)".into(),
            delay: Duration::from_secs(1),
            reason: reason.into(),
        }
    }

    #[test]
    fn restics_retry_line_is_read() {
        let retry = parse_retry_line("backup", STAT).unwrap();
        assert_eq!(retry.command, "backup");
        assert_eq!(retry.operation, "Stat(<config/>)");
        assert_eq!(retry.delay, Duration::from_nanos(1_340_509_870));
        assert!(
            retry.reason.starts_with("Stat: Get")
                && retry.reason.ends_with("connect: connection refused"),
            "{}",
            retry.reason
        );
        let cleared = format!("\x1b[2K{STAT}");
        assert_eq!(
            parse_retry_line("backup", &cleared).unwrap().operation,
            "Stat(<config/>)"
        );
    }

    #[test]
    fn other_lines_are_not_retries() {
        assert_eq!(
            parse_retry_line("backup", "Fatal: unable to open config"),
            None
        );
        assert_eq!(
            parse_retry_line("backup", "x returned error, retrying after soon: y"),
            None
        );
        assert_eq!(parse_retry_line("backup", ""), None);
    }

    #[test]
    fn go_durations_parse() {
        let cases = [
            ("1.5s", Duration::from_millis(1500)),
            ("500ms", Duration::from_millis(500)),
            ("1m2.5s", Duration::from_millis(62_500)),
            ("1h0m0s", Duration::from_secs(3600)),
            ("750µs", Duration::from_micros(750)),
            ("0s", Duration::ZERO),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_go_duration(text), Some(expected), "{text}");
        }
        for bad in ["", "s", "1x", "1.2.3s", "-"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_clock_runs_from_the_first_retry_until_progress() {
        let start = Instant::now();
        let timeout = Duration::from_secs(10);
        let mut clock = OutageClock::new();
        assert_eq!(clock.deadline(timeout), None);
        assert!(!clock.progressed(100, 1), "no outage to end yet");
        clock.retried(start, retry("refused 1"));
        assert!(!clock.progressed(100, 1), "the same counts again");
        clock.retried(start + Duration::from_secs(4), retry("refused 2"));
        assert_eq!(
            clock.deadline(timeout),
            Some(start + timeout),
            "first retry"
        );
        assert_eq!(
            clock.lasted(start + Duration::from_secs(7)),
            Duration::from_secs(7)
        );
        assert_eq!(clock.last_retry().unwrap().reason, "refused 2");
        // Status lines that repeat the same counts are no progress.
        assert!(!clock.progressed(100, 1));
        assert_eq!(clock.deadline(timeout), Some(start + timeout));
        assert!(clock.progressed(200, 1), "bytes advanced");
        assert_eq!(clock.deadline(timeout), None);
        // A later outage counts from its own first retry.
        let later = start + Duration::from_secs(30);
        clock.retried(later, retry("refused 3"));
        assert_eq!(clock.deadline(timeout), Some(later + timeout));
        assert!(clock.progressed(200, 2), "files advanced");
        assert_eq!(clock.lasted(later + Duration::from_secs(1)), Duration::ZERO);
    }

    #[test]
    fn the_first_status_after_a_retry_only_sets_the_baseline() {
        let start = Instant::now();
        let timeout = Duration::from_secs(10);
        let mut clock = OutageClock::new();
        clock.retried(start, retry("refused"));
        assert!(!clock.progressed(500, 3), "work done before the retry");
        assert_eq!(clock.deadline(timeout), Some(start + timeout));
        assert!(clock.progressed(501, 3));
        assert_eq!(clock.deadline(timeout), None);
    }

    #[test]
    fn status_lines_of_backup_and_restore_give_progress() {
        let backup = r#"{"message_type":"status","total_bytes":10,"bytes_done":5,"files_done":2}"#;
        assert_eq!(status_progress(backup), Some((5, 2)));
        let restore = r#"{"message_type":"status","seconds_elapsed":1,"percent_done":0.5,"total_files":4,"files_restored":3,"total_bytes":9,"bytes_restored":7}"#;
        assert_eq!(status_progress(restore), Some((7, 3)));
        let summary = r#"{"message_type":"summary","bytes_done":5}"#;
        assert_eq!(status_progress(summary), None);
        assert_eq!(status_progress("restoring <Snapshot>"), None);
    }
}
