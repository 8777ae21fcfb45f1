//! Path patterns inside a pod volume, written once for the orchestrator (which refuses a bad
//! one before anything runs) and the agent (which checks again before restic sees it): backup
//! excludes (`backup.stowage.io/exclude-paths`, `BackupSpec.exclude_paths`) and a restore's
//! include and exclude paths. A pattern is restic's glob syntax (`*`, `?`, `[…]`, `**`),
//! relative to the volume root and anchored there: `cache` is the volume's top-level `cache`
//! (and everything in it), `*.tmp` the top-level `.tmp` files, `**/*.tmp` those at any depth.
//! Patterns are kept normalised (no `.`, no empty or trailing components, `..` resolved), and
//! turned into restic's absolute patterns only where restic runs ([`anchored`]).

use crate::{ContractError, error::shown, names};

/// One `[<volume>:]<glob>`: the pattern applies to the named volume, or to every volume when
/// none is named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScopedPattern {
    pub volume: Option<String>,
    /// Normalised, relative to the volume root ([`pattern`]).
    pub pattern: String,
}

impl std::fmt::Display for ScopedPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.volume {
            Some(volume) => write!(f, "{volume}:{}", self.pattern),
            None => f.write_str(&self.pattern),
        }
    }
}

fn invalid(field: &str, pattern: &str, reason: impl Into<String>) -> ContractError {
    ContractError::InvalidPathPattern {
        field: field.to_string(),
        pattern: shown(pattern),
        reason: reason.into(),
    }
}

/// Checks one pattern and returns it normalised. Refused, naming `field` and the pattern: an
/// empty one, one with control characters, an absolute one (patterns are relative to the
/// volume root; restic would read `/x` as the node's `/x`), a negated one (`!x`: restic's
/// negation would not survive anchoring), one whose `..` climbs out of the volume, and one
/// that names the volume root itself (`.`), which would leave nothing.
pub fn pattern(field: &str, text: &str) -> Result<String, ContractError> {
    if text.is_empty() {
        return Err(invalid(field, text, "is empty"));
    }
    if text.chars().any(char::is_control) {
        return Err(invalid(field, text, "holds control characters"));
    }
    if text.starts_with('/') {
        return Err(invalid(
            field,
            text,
            format!(
                "is absolute; patterns are relative to the volume root (write `{}`)",
                shown(text.trim_start_matches('/'))
            ),
        ));
    }
    if text.starts_with('!') {
        return Err(invalid(
            field,
            text,
            "is negated; `!` patterns are not supported",
        ));
    }
    let parts = normalised(field, text, text)?;
    if parts.is_empty() {
        return Err(invalid(
            field,
            text,
            "names the volume root itself; name what is inside it",
        ));
    }
    Ok(parts.join("/"))
}

/// One `[<volume>:]<glob>`. The text before the first `:` is a volume name when it is a
/// DNS-1123 label (what a pod's volume names are); otherwise the whole text is the pattern. A
/// pattern holding a `:` after a label-like start is given its volume explicitly
/// (`data:a:b` is `a:b` in volume `data`).
pub fn scoped(field: &str, text: &str) -> Result<ScopedPattern, ContractError> {
    if let Some((volume, rest)) = text.split_once(':')
        && names::dns_label(field, volume).is_ok()
    {
        return Ok(ScopedPattern {
            volume: Some(volume.to_string()),
            pattern: pattern(field, rest).map_err(|error| match error {
                // The message names what the user wrote, volume and all.
                ContractError::InvalidPathPattern { field, reason, .. } => {
                    ContractError::InvalidPathPattern {
                        field,
                        pattern: shown(text),
                        reason,
                    }
                }
                other => other,
            })?,
        });
    }
    Ok(ScopedPattern {
        volume: None,
        pattern: pattern(field, text)?,
    })
}

/// A comma-separated list of `[<volume>:]<glob>` (the annotation's value); blanks around each
/// are ignored, an empty item is refused.
pub fn scoped_list(field: &str, text: &str) -> Result<Vec<ScopedPattern>, ContractError> {
    text.split(',')
        .map(|item| scoped(field, item.trim()))
        .collect()
}

/// Each of `texts` as [`scoped`].
pub fn scoped_all<'a>(
    field: &str,
    texts: impl IntoIterator<Item = &'a String>,
) -> Result<Vec<ScopedPattern>, ContractError> {
    texts.into_iter().map(|text| scoped(field, text)).collect()
}

/// The patterns that apply to `volume`: those naming it and those naming no volume, in their
/// order, each once.
pub fn for_volume(patterns: &[ScopedPattern], volume: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for scoped in patterns {
        if scoped.volume.as_deref().is_none_or(|named| named == volume)
            && !found.contains(&scoped.pattern)
        {
            found.push(scoped.pattern.clone());
        }
    }
    found
}

/// The first volume a pattern names that is not among `volumes`, with its pattern.
pub fn unknown_volume<'a>(
    patterns: &'a [ScopedPattern],
    volumes: &[&str],
) -> Option<&'a ScopedPattern> {
    patterns.iter().find(|scoped| {
        scoped
            .volume
            .as_deref()
            .is_some_and(|named| !volumes.contains(&named))
    })
}

/// restic's pattern for a checked relative `pattern` under `root`, the directory restic sees
/// as the volume: the volume's directory on the node for `restic backup --exclude` (restic
/// matches excludes against the absolute paths it reads), `/` for `restic restore
/// --include/--exclude` (a snapshot of `.` stores the volume at its root). Glob characters in
/// `root` are escaped, so only the pattern's own ones match.
pub fn anchored(root: &str, pattern: &str) -> String {
    let mut out = String::with_capacity(root.len() + pattern.len() + 1);
    for c in root.trim_end_matches('/').chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('/');
    out.push_str(pattern);
    out
}

/// A directory inside the volume as restic's snapshot names it: `/` for the root (empty or
/// `/`), else `/` and the normalised relative path; `..` may not climb out of the root.
pub fn snapshot_dir(field: &str, path: &str) -> Result<String, ContractError> {
    let relative = path.trim_start_matches('/');
    if relative.is_empty()
        || relative
            .split('/')
            .all(|part| part.is_empty() || part == ".")
    {
        return Ok("/".to_string());
    }
    if relative.chars().any(char::is_control) {
        return Err(invalid(field, path, "holds control characters"));
    }
    let parts = normalised(field, path, relative)?;
    Ok(format!("/{}", parts.join("/")))
}

/// The parts of `relative` (a path under the volume root) with empty and `.` parts dropped and
/// each `..` taking away the part before it; a `..` with nothing before it climbs out of the
/// root and is refused, naming `value`, the text the caller was given.
fn normalised<'a>(
    field: &str,
    value: &str,
    relative: &'a str,
) -> Result<Vec<&'a str>, ContractError> {
    let mut parts: Vec<&str> = Vec::new();
    for part in relative.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(invalid(
                        field,
                        value,
                        "climbs out of the volume root with `..`",
                    ));
                }
            }
            part => parts.push(part),
        }
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_normalised_relative_to_the_volume_root() {
        assert_eq!(pattern("p", "cache/").unwrap(), "cache");
        assert_eq!(pattern("p", "./cache//sub/").unwrap(), "cache/sub");
        assert_eq!(pattern("p", "a/../b/*.tmp").unwrap(), "b/*.tmp");
        assert_eq!(pattern("p", "**/*.tmp").unwrap(), "**/*.tmp");
        assert_eq!(pattern("p", "data/2024/**").unwrap(), "data/2024/**");
    }

    #[test]
    fn bad_patterns_are_refused_naming_the_field_and_the_pattern() {
        let cases = [
            ("", "is empty"),
            (
                "/etc",
                "is absolute; patterns are relative to the volume root (write `etc`)",
            ),
            ("..", "climbs out of the volume root"),
            ("a/../../etc", "climbs out of the volume root"),
            (".", "names the volume root itself"),
            ("a/..", "names the volume root itself"),
            ("!keep", "is negated"),
            ("a\nb", "control characters"),
        ];
        for (text, reason) in cases {
            let error = pattern("exclude_paths", text).unwrap_err().to_string();
            assert!(
                error.starts_with("exclude_paths: path pattern `"),
                "{text:?}: {error}"
            );
            assert!(error.contains(reason), "{text:?}: {error}");
        }
        assert_eq!(
            pattern("exclude_paths", "../x").unwrap_err().to_string(),
            "exclude_paths: path pattern `../x` climbs out of the volume root with `..`"
        );
    }

    #[test]
    fn a_label_before_the_first_colon_names_the_volume() {
        assert_eq!(
            scoped("p", "data:cache/").unwrap(),
            ScopedPattern {
                volume: Some("data".into()),
                pattern: "cache".into()
            }
        );
        assert_eq!(scoped("p", "*.tmp").unwrap().volume, None);
        // Not a label: the colon is part of the file name.
        assert_eq!(
            scoped("p", "Logs:old").unwrap(),
            ScopedPattern {
                volume: None,
                pattern: "Logs:old".into()
            }
        );
        assert_eq!(scoped("p", "data:a:b").unwrap().pattern, "a:b");
        assert_eq!(scoped("p", "data:cache").unwrap().to_string(), "data:cache");
        let error = scoped("p", "data:/etc").unwrap_err().to_string();
        assert!(error.contains("`data:/etc` is absolute"), "{error}");
        assert!(
            scoped("p", "data:")
                .unwrap_err()
                .to_string()
                .contains("`data:` is empty")
        );
    }

    #[test]
    fn annotation_lists_split_on_commas_and_refuse_empty_items() {
        let list = scoped_list("annotation", " data:cache , logs:*.tmp").unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].volume.as_deref(), Some("logs"));
        assert!(scoped_list("annotation", "data:cache,,x").is_err());
    }

    #[test]
    fn a_volume_gets_its_own_patterns_and_the_unscoped_ones_once() {
        let patterns = scoped_all(
            "p",
            &[
                "*.tmp".to_string(),
                "data:cache".to_string(),
                "logs:old".to_string(),
                "data:*.tmp".to_string(),
            ],
        )
        .unwrap();
        assert_eq!(for_volume(&patterns, "data"), ["*.tmp", "cache"]);
        assert_eq!(for_volume(&patterns, "logs"), ["*.tmp", "old"]);
        assert_eq!(for_volume(&patterns, "other"), ["*.tmp"]);
        assert_eq!(
            unknown_volume(&patterns, &["data"]).map(ToString::to_string),
            Some("logs:old".to_string())
        );
        assert_eq!(unknown_volume(&patterns, &["data", "logs"]), None);
    }

    #[test]
    fn anchoring_escapes_the_roots_glob_characters() {
        assert_eq!(
            anchored("/var/lib/kubelet/pods/u/volumes/x/data/", "cache"),
            "/var/lib/kubelet/pods/u/volumes/x/data/cache"
        );
        assert_eq!(anchored("/odd[1]*/v", "*.tmp"), "/odd\\[1\\]\\*/v/*.tmp");
        assert_eq!(anchored("", "data/2024/**"), "/data/2024/**");
        assert_eq!(anchored("/", "a"), "/a");
    }

    #[test]
    fn snapshot_dirs_are_absolute_inside_the_volume() {
        assert_eq!(snapshot_dir("path", "").unwrap(), "/");
        assert_eq!(snapshot_dir("path", "/").unwrap(), "/");
        assert_eq!(snapshot_dir("path", "./").unwrap(), "/");
        assert_eq!(snapshot_dir("path", "data/2024/").unwrap(), "/data/2024");
        assert_eq!(snapshot_dir("path", "/data/./x/..").unwrap(), "/data");
        assert!(snapshot_dir("path", "../etc").is_err());
    }
}
