//! Plain-text building blocks: kubectl-style aligned tables, byte sizes and relative times.
//! Pure functions, so every rendering is checked by unit tests without a server.

use chrono::{DateTime, Utc};

/// Renders `rows` under `headers` in left-aligned columns separated by three spaces, as
/// kubectl and velero print lists. Empty cells print as `<none>` so columns never collapse.
/// Trailing spaces are trimmed from every line.
pub fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let cell = |text: &str| -> String {
        if text.is_empty() {
            "<none>".to_string()
        } else {
            // A newline inside a cell would break the layout for `grep`/`awk` users.
            text.replace(['\n', '\r'], " ")
        }
    };
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|text| cell(text)).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (index, text) in row.iter().enumerate() {
            let width = text.chars().count();
            match widths.get_mut(index) {
                Some(current) => *current = (*current).max(width),
                None => widths.push(width),
            }
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows.iter()) {
        let mut line = String::new();
        for (index, text) in row.iter().enumerate() {
            line.push_str(text);
            if index + 1 < row.len() {
                let pad = widths[index] - text.chars().count() + 3;
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Bytes in binary units with one decimal (`0 B`, `512 B`, `1.5 KiB`, `10.0 MiB`).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// How far `then` lies from `now`, in the largest whole unit, as kubectl prints ages:
/// `45s`, `12m`, `5h`, `29d`. Negative spans print as `0s`.
pub fn short_span(now: DateTime<Utc>, then: DateTime<Utc>) -> String {
    let seconds = (then - now).num_seconds().max(0);
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Time left until `expiration` (Velero's EXPIRES column): `29d`, or `expired`.
pub fn expires_in(now: DateTime<Utc>, expiration: Option<DateTime<Utc>>) -> String {
    match expiration {
        None => String::new(),
        Some(at) if at <= now => "expired".to_string(),
        Some(at) => short_span(now, at),
    }
}

/// Seconds as a short duration: `0.4s`, `12s`, `3m20s`, `1h2m`.
pub fn human_seconds(seconds: f64) -> String {
    if !seconds.is_finite() || seconds <= 0.0 {
        return "0s".to_string();
    }
    if seconds < 10.0 {
        return format!("{seconds:.1}s");
    }
    let whole = seconds.round() as u64;
    match whole {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

/// `a, b, c`, or `<none>` for an empty list (Velero's describe style).
pub fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "<none>".to_string()
    } else {
        items.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_columns_align_on_the_widest_cell() {
        let table = render_table(
            &["NAME", "STATUS"],
            &[
                vec!["nightly-2026".into(), "Completed".into()],
                vec!["a".into(), "InProgress".into()],
            ],
        );
        assert_eq!(
            table,
            "NAME           STATUS\n\
             nightly-2026   Completed\n\
             a              InProgress\n"
        );
    }

    #[test]
    fn empty_cells_print_none_and_newlines_are_flattened() {
        let table = render_table(
            &["A", "B", "C"],
            &[vec!["".into(), "two\nlines".into(), "x".into()]],
        );
        assert_eq!(table, "A        B           C\n<none>   two lines   x\n");
    }

    #[test]
    fn a_table_without_rows_is_its_header() {
        assert_eq!(render_table(&["NAME", "STATUS"], &[]), "NAME   STATUS\n");
    }

    #[test]
    fn bytes_use_binary_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(10 * 1024 * 1024), "10.0 MiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }

    #[test]
    fn spans_use_the_largest_whole_unit() {
        let now = DateTime::from_timestamp(1_000_000_000, 0).unwrap();
        let later = |s: i64| now + chrono::Duration::seconds(s);
        assert_eq!(short_span(now, later(45)), "45s");
        assert_eq!(short_span(now, later(600)), "10m");
        assert_eq!(short_span(now, later(5 * 3600)), "5h");
        assert_eq!(short_span(now, later(29 * 86_400 + 100)), "29d");
        assert_eq!(expires_in(now, Some(later(-1))), "expired");
        assert_eq!(expires_in(now, Some(later(720 * 3600))), "30d");
        assert_eq!(expires_in(now, None), "");
    }

    #[test]
    fn seconds_print_short() {
        assert_eq!(human_seconds(0.0), "0s");
        assert_eq!(human_seconds(0.42), "0.4s");
        assert_eq!(human_seconds(12.3), "12s");
        assert_eq!(human_seconds(200.0), "3m20s");
        assert_eq!(human_seconds(3720.0), "1h2m");
        assert_eq!(human_seconds(f64::NAN), "0s");
    }
}
