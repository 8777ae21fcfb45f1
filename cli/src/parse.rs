//! Parsing of the values users type on the command line: durations (`720h`, `1h30m`),
//! label selectors (`app=db,tier=backend`) and namespace mappings (`old:new`). Pure functions,
//! used as clap value parsers so a bad value is reported against its flag.

use std::{collections::BTreeMap, time::Duration};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("`{0}` is not a duration: write it like 720h, 30m, 1h30m or 45s")]
    Duration(String),
    #[error("`{0}` is not a label selector term: write key=value (only equality is supported)")]
    Selector(String),
    #[error("label `{0}` is given twice in the selector")]
    DuplicateLabel(String),
    #[error("`{0}` is not a namespace mapping: write old:new")]
    Mapping(String),
    #[error("namespace `{0}` is mapped twice")]
    DuplicateMapping(String),
}

/// Parses a Go-style duration as Velero's `--ttl` takes it: one or more `<number><unit>`
/// with units `h`, `m`, `s` and `ms` (`720h`, `1h30m`, `90s`). A bare number is refused
/// because its unit would be a guess.
pub fn parse_duration(text: &str) -> Result<Duration, ParseError> {
    let error = || ParseError::Duration(text.to_string());
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(error());
    }
    if trimmed == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = trimmed;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(error)?;
        if digits == 0 {
            return Err(error());
        }
        let number: f64 = rest[..digits].parse().map_err(|_| error())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return Err(error()),
        };
        rest = &rest[unit_len..];
        total += Duration::try_from_secs_f64(number * seconds_per_unit).map_err(|_| error())?;
    }
    Ok(total)
}

/// Formats a duration the way [`parse_duration`] reads it, largest units first and zero parts
/// left out: `720h`, `1h30m`, `45s`, `1.5s`, `0s`.
pub fn format_duration(duration: Duration) -> String {
    let total_ms = duration.as_millis();
    if total_ms == 0 {
        return "0s".to_string();
    }
    let hours = total_ms / 3_600_000;
    let minutes = (total_ms / 60_000) % 60;
    let millis = total_ms % 60_000;
    let mut out = String::new();
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    if millis > 0 {
        if millis.is_multiple_of(1000) {
            out.push_str(&format!("{}s", millis / 1000));
        } else if total_ms < 1000 {
            out.push_str(&format!("{millis}ms"));
        } else {
            // Trailing zeros of the fraction say nothing.
            let seconds = format!("{:.3}", millis as f64 / 1000.0);
            out.push_str(seconds.trim_end_matches('0'));
            out.push('s');
        }
    }
    out
}

/// Parses `k=v[,k2=v2]` (Kubernetes equality-based selector; `==` is accepted as `=`). The
/// API matches labels by equality only, so `!=`, `in (...)` and bare keys are refused rather
/// than silently widened.
pub fn parse_selector(text: &str) -> Result<BTreeMap<String, String>, ParseError> {
    let mut labels = BTreeMap::new();
    for term in text
        .split(',')
        .map(str::trim)
        .filter(|term| !term.is_empty())
    {
        let (key, value) = term
            .split_once("==")
            .or_else(|| term.split_once('='))
            .ok_or_else(|| ParseError::Selector(term.to_string()))?;
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty() || key.ends_with('!') || value.contains('=') {
            return Err(ParseError::Selector(term.to_string()));
        }
        if labels.insert(key.to_string(), value.to_string()).is_some() {
            return Err(ParseError::DuplicateLabel(key.to_string()));
        }
    }
    Ok(labels)
}

/// Parses one `old:new` namespace mapping, as Velero's `--namespace-mappings` takes it.
pub fn parse_mapping(text: &str) -> Result<(String, String), ParseError> {
    let (old, new) = text
        .trim()
        .split_once(':')
        .ok_or_else(|| ParseError::Mapping(text.to_string()))?;
    let (old, new) = (old.trim(), new.trim());
    if old.is_empty() || new.is_empty() || new.contains(':') {
        return Err(ParseError::Mapping(text.to_string()));
    }
    Ok((old.to_string(), new.to_string()))
}

/// Collects mappings into one map, refusing a namespace mapped to two places.
pub fn collect_mappings(
    mappings: &[(String, String)],
) -> Result<BTreeMap<String, String>, ParseError> {
    let mut map = BTreeMap::new();
    for (old, new) in mappings {
        if map.insert(old.clone(), new.clone()).is_some() {
            return Err(ParseError::DuplicateMapping(old.clone()));
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_go_syntax_are_read() {
        assert_eq!(parse_duration("720h"), Ok(Duration::from_secs(720 * 3600)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("45s"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn durations_without_known_unit_are_refused() {
        for bad in ["", "720", "5x", "h", "1d", "-1h", "1h 30m", "1..5h", "m30"] {
            assert_eq!(
                parse_duration(bad),
                Err(ParseError::Duration(bad.to_string())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn durations_format_largest_units_first() {
        assert_eq!(format_duration(Duration::from_secs(720 * 3600)), "720h");
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(3601)), "1h1s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn formatted_durations_parse_back() {
        for seconds in [1, 59, 60, 61, 3599, 3600, 3661, 86_400, 2_592_000] {
            let duration = Duration::from_secs(seconds);
            assert_eq!(parse_duration(&format_duration(duration)), Ok(duration));
        }
    }

    #[test]
    fn selectors_are_equality_terms() {
        let labels = parse_selector("app=db, tier==backend").unwrap();
        assert_eq!(labels.get("app").map(String::as_str), Some("db"));
        assert_eq!(labels.get("tier").map(String::as_str), Some("backend"));
        assert_eq!(labels.len(), 2);
        assert_eq!(parse_selector("").unwrap().len(), 0);
        assert_eq!(parse_selector("empty=").unwrap()["empty"], "");
    }

    #[test]
    fn selectors_beyond_equality_are_refused() {
        assert_eq!(
            parse_selector("app!=db"),
            Err(ParseError::Selector("app!=db".into()))
        );
        assert_eq!(
            parse_selector("app"),
            Err(ParseError::Selector("app".into()))
        );
        assert_eq!(
            parse_selector("=db"),
            Err(ParseError::Selector("=db".into()))
        );
        assert_eq!(
            parse_selector("a=1,a=2"),
            Err(ParseError::DuplicateLabel("a".into()))
        );
    }

    #[test]
    fn mappings_are_old_colon_new() {
        assert_eq!(parse_mapping("foo:bar"), Ok(("foo".into(), "bar".into())));
        for bad in ["foo", "foo:", ":bar", "a:b:c"] {
            assert_eq!(parse_mapping(bad), Err(ParseError::Mapping(bad.into())));
        }
        let pairs = vec![("a".to_string(), "b".to_string()), ("a".into(), "c".into())];
        assert_eq!(
            collect_mappings(&pairs),
            Err(ParseError::DuplicateMapping("a".into()))
        );
    }
}
