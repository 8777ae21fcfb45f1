//! Parsing of the values users type on the command line: durations (`720h`, `1h30m`),
//! label selectors (`app=db,tier in (api,web),!legacy`) and namespace mappings (`old:new`).
//! Pure functions, used as clap value parsers so a bad value is reported against its flag.

use std::{collections::BTreeMap, time::Duration};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("`{0}` is not a duration: write it like 720h, 30m, 1h30m or 45s")]
    Duration(String),
    #[error(
        "`{0}` is not a label selector term: write key=value, key!=value, key in (a,b), \
         key notin (a,b), key or !key"
    )]
    Selector(String),
    #[error("`{0}` is a set-based selector term; this flag takes key=value terms only")]
    SetBased(String),
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

/// A label selector as Kubernetes writes it: equality terms (`key=value`, `key==value`) and
/// set-based requirements (the API's matchExpressions).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    pub labels: BTreeMap<String, String>,
    pub expressions: Vec<Requirement>,
}

/// One set-based term: `key in (a,b)` (`In`), `key notin (a,b)` and `key!=a` (`NotIn`), `key`
/// (`Exists`), `!key` (`DoesNotExist`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub operator: &'static str,
    pub values: Vec<String>,
    /// The term as given, for errors that name it.
    pub term: String,
}

/// The terms of a selector: split at the commas outside parentheses.
fn selector_terms(text: &str) -> Result<Vec<String>, ParseError> {
    let mut terms = Vec::new();
    let mut current = String::new();
    let mut open = false;
    for c in text.chars() {
        match c {
            '(' if open => return Err(ParseError::Selector(text.trim().to_string())),
            '(' => open = true,
            ')' if !open => return Err(ParseError::Selector(text.trim().to_string())),
            ')' => open = false,
            ',' if !open => {
                terms.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    if open {
        return Err(ParseError::Selector(current.trim().to_string()));
    }
    terms.push(current);
    Ok(terms
        .into_iter()
        .map(|term| term.trim().to_string())
        .filter(|term| !term.is_empty())
        .collect())
}

/// A label key or value as a selector may spell it: no blanks and none of the selector's own
/// characters (the API server checks the rest of the label rules and names what it refuses).
fn selector_word(word: &str, may_be_empty: bool) -> bool {
    (may_be_empty || !word.is_empty())
        && !word
            .chars()
            .any(|c| c.is_whitespace() || "=!(),".contains(c))
}

/// Parses a Kubernetes label selector (`labels.Parse`'s syntax): comma-separated terms, each
/// `key=value` (or `==`), `key!=value`, `key in (v1,v2)`, `key notin (v1,v2)`, `key` or `!key`.
/// A term that is none of these is refused naming it; so is a label given twice by equality.
pub fn parse_label_selector(text: &str) -> Result<Selector, ParseError> {
    let mut selector = Selector::default();
    for term in selector_terms(text)? {
        let bad = || ParseError::Selector(term.clone());
        let requirement = |key: &str, operator, values: Vec<String>| Requirement {
            key: key.to_string(),
            operator,
            values,
            term: term.clone(),
        };
        if let Some(key) = term.strip_prefix('!') {
            let key = key.trim();
            if !selector_word(key, false) {
                return Err(bad());
            }
            selector
                .expressions
                .push(requirement(key, "DoesNotExist", Vec::new()));
        } else if let Some((head, list)) = term.split_once('(') {
            let list = list.strip_suffix(')').ok_or_else(bad)?;
            let words: Vec<&str> = head.split_whitespace().collect();
            let (key, operator) = match words[..] {
                [key, "in"] => (key, "In"),
                [key, "notin"] => (key, "NotIn"),
                _ => return Err(bad()),
            };
            let values: Vec<String> = list.split(',').map(|v| v.trim().to_string()).collect();
            if !selector_word(key, false) || values.iter().any(|v| !selector_word(v, false)) {
                return Err(bad());
            }
            selector
                .expressions
                .push(requirement(key, operator, values));
        } else if let Some((key, value)) = term.split_once("!=") {
            let (key, value) = (key.trim(), value.trim());
            if !selector_word(key, false) || !selector_word(value, true) {
                return Err(bad());
            }
            selector
                .expressions
                .push(requirement(key, "NotIn", vec![value.to_string()]));
        } else if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
            let (key, value) = (key.trim(), value.trim());
            if !selector_word(key, false) || !selector_word(value, true) {
                return Err(bad());
            }
            if selector
                .labels
                .insert(key.to_string(), value.to_string())
                .is_some()
            {
                return Err(ParseError::DuplicateLabel(key.to_string()));
            }
        } else if selector_word(&term, false) {
            selector
                .expressions
                .push(requirement(&term, "Exists", Vec::new()));
        } else {
            return Err(bad());
        }
    }
    Ok(selector)
}

/// Parses a selector of `key=value` terms only, for the flags whose API takes labels to match
/// by equality (a backup's pods, the backups listed); a set-based term is refused naming it
/// rather than silently widened.
pub fn parse_selector(text: &str) -> Result<BTreeMap<String, String>, ParseError> {
    let selector = parse_label_selector(text)?;
    if let Some(requirement) = selector.expressions.first() {
        return Err(ParseError::SetBased(requirement.term.clone()));
    }
    Ok(selector.labels)
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
    fn set_based_terms_are_parsed_as_the_api_s_requirements() {
        let selector = parse_label_selector(
            "app=shop, tier in (web, api),track notin (canary),owner,!legacy,zone!=b",
        )
        .unwrap();
        assert_eq!(selector.labels["app"], "shop");
        let terms: Vec<(&str, &str, Vec<&str>)> = selector
            .expressions
            .iter()
            .map(|r| {
                (
                    r.key.as_str(),
                    r.operator,
                    r.values.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            terms,
            [
                ("tier", "In", vec!["web", "api"]),
                ("track", "NotIn", vec!["canary"]),
                ("owner", "Exists", vec![]),
                ("legacy", "DoesNotExist", vec![]),
                ("zone", "NotIn", vec!["b"]),
            ]
        );
        assert_eq!(parse_label_selector("").unwrap(), Selector::default());
    }

    #[test]
    fn bad_selector_terms_are_refused_naming_them() {
        for (text, term) in [
            ("app=web,tier in ()", "tier in ()"),
            ("tier in (a,b", "tier in (a,b"),
            ("tier between (a,b)", "tier between (a,b)"),
            ("tier in (a,,b)", "tier in (a,,b)"),
            ("app=web,!", "!"),
            ("a b", "a b"),
            ("tier in a,b)", "tier in a,b)"),
            ("=db", "=db"),
        ] {
            assert_eq!(
                parse_label_selector(text),
                Err(ParseError::Selector(term.into())),
                "{text}"
            );
        }
    }

    #[test]
    fn equality_only_flags_refuse_set_based_terms() {
        assert_eq!(
            parse_selector("app=web,tier!=db"),
            Err(ParseError::SetBased("tier!=db".into()))
        );
        assert_eq!(
            parse_selector("app"),
            Err(ParseError::SetBased("app".into()))
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
