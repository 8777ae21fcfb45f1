//! Velero's log line format (logrus text: `time="…" level=info msg="…" key=value …`), so a
//! backup's `<name>-logs.gz` reads the same whoever wrote it. Lines in any other shape are kept
//! whole as the message rather than dropped.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};

/// One log line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogEntry {
    pub time: Option<DateTime<Utc>>,
    /// `info`, `warning`, `error`, `debug`, ...
    pub level: String,
    pub message: String,
    /// Every other `key=value` (`backup`, `namespace`, `pod`, `logSource`, ...), in key order.
    pub fields: BTreeMap<String, String>,
}

/// Splits `key=value` pairs; values may be Go-quoted (`"a \"b\""`). `None` when the line is
/// not in that shape.
fn parse_pairs(line: &str) -> Option<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    let mut chars = line.trim().chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        loop {
            match chars.next() {
                Some('=') => break,
                Some(c) if c != ' ' && c != '"' => key.push(c),
                _ => return None,
            }
        }
        if key.is_empty() {
            return None;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => match chars.next()? {
                        'n' => value.push('\n'),
                        't' => value.push('\t'),
                        'r' => value.push('\r'),
                        other => value.push(other),
                    },
                    c => value.push(c),
                }
            }
            if !matches!(chars.peek(), None | Some(' ')) {
                return None;
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ' ' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        pairs.push((key, value));
    }
    (!pairs.is_empty()).then_some(pairs)
}

/// Parses one line; a line that is not logrus text becomes an entry whose message is the line.
pub fn parse_log_line(line: &str) -> LogEntry {
    let whole = || LogEntry {
        message: line.to_string(),
        ..LogEntry::default()
    };
    let Some(pairs) = parse_pairs(line) else {
        return whole();
    };
    if !pairs.iter().any(|(key, _)| key == "msg" || key == "level") {
        return whole();
    }
    let mut entry = LogEntry::default();
    for (key, value) in pairs {
        match key.as_str() {
            "time" => {
                entry.time = DateTime::parse_from_rfc3339(&value)
                    .ok()
                    .map(|t| t.with_timezone(&Utc))
            }
            "level" => entry.level = value,
            "msg" => entry.message = value,
            _ => {
                entry.fields.insert(key, value);
            }
        }
    }
    entry
}

/// Parses every non-empty line.
pub fn parse_logs(text: &str) -> Vec<LogEntry> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(parse_log_line)
        .collect()
}

fn needs_quoting(value: &str) -> bool {
    value.is_empty()
        || value
            .chars()
            .any(|c| !(c.is_ascii_alphanumeric() || "-._/@^+:".contains(c)))
}

fn push_value(out: &mut String, value: &str) {
    if !needs_quoting(value) {
        out.push_str(value);
        return;
    }
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Formats one entry as logrus text, as Velero's server writes its backup logs.
pub fn format_log_line(entry: &LogEntry) -> String {
    let mut out = String::new();
    if let Some(time) = entry.time {
        let _ = write!(
            out,
            "time=\"{}\" ",
            time.to_rfc3339_opts(SecondsFormat::AutoSi, true)
        );
    }
    out.push_str("level=");
    push_value(
        &mut out,
        if entry.level.is_empty() {
            "info"
        } else {
            &entry.level
        },
    );
    out.push_str(" msg=");
    push_value(&mut out, &entry.message);
    for (key, value) in &entry.fields {
        out.push(' ');
        out.push_str(key);
        out.push('=');
        push_value(&mut out, value);
    }
    out
}

/// Formats entries as the text of a `<name>-logs.gz` (one line each, newline-terminated).
pub fn format_logs<'a>(entries: impl IntoIterator<Item = &'a LogEntry>) -> String {
    entries
        .into_iter()
        .map(|entry| format_log_line(entry) + "\n")
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_velero_backup_log_line() {
        let entry = parse_log_line(
            r#"time="2023-03-01T02:00:09Z" level=info msg="Completed pod volume backup" backup=velero/nightly logSource="pkg/podvolume/backupper.go:290" namespace=foo pod=sample"#,
        );
        assert_eq!(
            entry.time.unwrap().to_rfc3339(),
            "2023-03-01T02:00:09+00:00"
        );
        assert_eq!(entry.level, "info");
        assert_eq!(entry.message, "Completed pod volume backup");
        assert_eq!(entry.fields["backup"], "velero/nightly");
        assert_eq!(entry.fields["logSource"], "pkg/podvolume/backupper.go:290");
        assert_eq!(entry.fields["pod"], "sample");
    }

    #[test]
    fn quoted_values_with_escapes_round_trip() {
        let entry = LogEntry {
            time: DateTime::parse_from_rfc3339("2026-01-02T03:04:05.250Z")
                .ok()
                .map(|t| t.with_timezone(&Utc)),
            level: "error".into(),
            message: "restic failed: \"wrong password\"\nsee C:\\logs".into(),
            fields: BTreeMap::from([
                ("error".to_string(), "exit status 1".to_string()),
                ("volume".to_string(), "pvc-volume".to_string()),
                ("empty".to_string(), String::new()),
            ]),
        };
        let line = format_log_line(&entry);
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.starts_with("time=\"2026-01-02T03:04:05.250Z\" level=error msg=\"restic failed"),
            "{line}"
        );
        assert_eq!(parse_log_line(&line), entry);
        let text = format_logs([&entry, &entry]);
        assert_eq!(parse_logs(&text), vec![entry.clone(), entry]);
    }

    proptest::proptest! {
        #[test]
        fn any_entry_round_trips(
            level in "[a-z]{1,8}",
            message in "\\PC{0,40}",
            fields in proptest::collection::btree_map("[a-zA-Z][a-zA-Z0-9_.-]{0,10}", "\\PC{0,20}", 0..4),
        ) {
            let fields: BTreeMap<String, String> = fields
                .into_iter()
                .filter(|(key, _)| !matches!(key.as_str(), "time" | "level" | "msg"))
                .collect();
            let entry = LogEntry { time: None, level, message, fields };
            proptest::prop_assert_eq!(parse_log_line(&format_log_line(&entry)), entry);
        }
    }

    #[test]
    fn other_shapes_are_kept_whole() {
        for line in [
            "plain text without pairs",
            "2026-01-01T00:00:00Z info something happened",
            r#"key="unterminated"#,
            "a=b c=d",
        ] {
            let entry = parse_log_line(line);
            assert_eq!(entry.message, line);
            assert!(entry.time.is_none() && entry.level.is_empty() && entry.fields.is_empty());
        }
        assert!(parse_logs("\n  \n").is_empty());
    }
}
