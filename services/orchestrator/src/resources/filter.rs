//! `--include-resources` / `--exclude-resources` in Velero's spelling: `configmaps`,
//! `deployments.apps`, a short or singular name (`deploy`, `deployment`), or a glob (`*`,
//! `*.example.com`). The rule is Velero's: an excluded resource is never taken; with no
//! includes (or `*`) everything else is, otherwise only what an include names. Names are
//! resolved against discovery to `<plural>.<group>`; an entry discovery does not know stays as
//! written (so it matches nothing rather than widening the backup).
//!
//! The lists themselves are checked when a backup is created ([`validate_resource_lists`]).

use super::api::{ApiResource, ResourceError};

/// Checks each entry's spelling and Velero's rules for the two lists: `*` only alone among the
/// includes, never among the excludes, and no entry in both. The error names the entry.
pub fn validate_resource_lists(
    includes: &[String],
    excludes: &[String],
) -> Result<(), ResourceError> {
    let invalid = |entry: &str, reason: &str| ResourceError::InvalidEntry {
        entry: entry.to_string(),
        reason: reason.to_string(),
    };
    for entry in includes.iter().chain(excludes) {
        if entry.is_empty() {
            return Err(invalid(entry, "an empty resource name"));
        }
        if let Some(bad) = entry.chars().find(|c| {
            !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '*' | '?'))
        }) {
            return Err(invalid(
                entry,
                &format!(
                    "`{bad}` is not allowed: write a lowercase resource name, optionally with its \
                     group (`deployments.apps`), or a glob with `*`"
                ),
            ));
        }
        if entry.starts_with('.') || entry.ends_with('.') || entry.contains("..") {
            return Err(invalid(entry, "a resource or group name part is empty"));
        }
    }
    if includes.len() > 1 && includes.iter().any(|e| e == "*") {
        return Err(invalid(
            "*",
            "the includes must be either `*` alone or a list of resources",
        ));
    }
    if excludes.iter().any(|e| e == "*") {
        return Err(invalid("*", "the excludes cannot contain `*`"));
    }
    if let Some(both) = excludes.iter().find(|e| includes.contains(e)) {
        return Err(invalid(both, "it is both included and excluded"));
    }
    Ok(())
}

/// The resolved include/exclude lists of one backup.
#[derive(Debug, Clone, Default)]
pub struct ResourceFilter {
    includes: Vec<String>,
    excludes: Vec<String>,
}

impl ResourceFilter {
    /// Resolves each entry against `served` (see the module comment).
    pub fn new(includes: &[String], excludes: &[String], served: &[ApiResource]) -> ResourceFilter {
        ResourceFilter {
            includes: includes.iter().map(|e| resolve(e, served)).collect(),
            excludes: excludes.iter().map(|e| resolve(e, served)).collect(),
        }
    }

    /// Whether `group_resource` (`deployments.apps`) is taken.
    pub fn includes(&self, group_resource: &str) -> bool {
        if self.excludes(group_resource) {
            return false;
        }
        self.includes.is_empty()
            || self.includes.iter().any(|i| i == "*")
            || self.includes.iter().any(|i| glob_match(i, group_resource))
    }

    /// Whether an exclude names `group_resource`.
    pub fn excludes(&self, group_resource: &str) -> bool {
        self.excludes.iter().any(|e| glob_match(e, group_resource))
    }
}

/// `deploy`, `deployment`, `deployments` or `deployments.apps` → `deployments.apps`. The part
/// before the first dot is the resource, the rest its group; without a group, the first
/// served resource of that name wins (discovery lists the core group first).
fn resolve(entry: &str, served: &[ApiResource]) -> String {
    if entry.contains(['*', '?']) {
        return entry.to_string();
    }
    let (name, group) = match entry.split_once('.') {
        Some((name, group)) => (name, Some(group)),
        None => (entry, None),
    };
    served
        .iter()
        .find(|r| {
            group.is_none_or(|g| r.group == g)
                && (r.plural == name
                    || r.singular == name
                    || r.short_names.iter().any(|s| s == name))
        })
        .map(ApiResource::group_resource)
        .unwrap_or_else(|| entry.to_string())
}

/// Shell-style glob: `*` any run of characters, `?` one character.
fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((star_p, star_t)) = star {
            pi = star_p + 1;
            ti = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served() -> Vec<ApiResource> {
        let resource = |group: &str, plural: &str, singular: &str, short: &[&str]| ApiResource {
            group: group.to_string(),
            version: "v1".to_string(),
            plural: plural.to_string(),
            singular: singular.to_string(),
            short_names: short.iter().map(|s| s.to_string()).collect(),
            kind: String::new(),
            namespaced: true,
            verbs: vec!["list".to_string()],
        };
        vec![
            resource("", "configmaps", "configmap", &["cm"]),
            resource("", "pods", "pod", &["po"]),
            resource("apps", "deployments", "deployment", &["deploy"]),
            resource("example.com", "widgets", "widget", &[]),
        ]
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn velero_spellings_resolve_to_group_resources() {
        let served = served();
        for spelling in ["deployments.apps", "deployments", "deployment", "deploy"] {
            let filter = ResourceFilter::new(&strings(&[spelling]), &[], &served);
            assert!(filter.includes("deployments.apps"), "{spelling}");
            assert!(!filter.includes("configmaps"), "{spelling}");
        }
        let filter = ResourceFilter::new(&strings(&["cm"]), &[], &served);
        assert!(filter.includes("configmaps"));
    }

    #[test]
    fn excludes_win_and_an_empty_include_list_takes_everything() {
        let served = served();
        let filter = ResourceFilter::new(&[], &strings(&["pods", "*.example.com"]), &served);
        assert!(filter.includes("configmaps"));
        assert!(filter.includes("deployments.apps"));
        assert!(!filter.includes("pods"));
        assert!(!filter.includes("widgets.example.com"));
        let filter = ResourceFilter::new(&strings(&["*"]), &[], &served);
        assert!(filter.includes("widgets.example.com") && filter.includes("pods"));
    }

    #[test]
    fn an_unknown_entry_matches_nothing_else() {
        let filter = ResourceFilter::new(&strings(&["gadgets"]), &[], &served());
        assert!(!filter.includes("configmaps"));
        assert!(filter.includes("gadgets"));
    }

    #[test]
    fn globs_match_like_velero() {
        assert!(glob_match("*", "deployments.apps"));
        assert!(glob_match("*.apps", "deployments.apps"));
        assert!(glob_match("config?aps", "configmaps"));
        assert!(!glob_match("*.apps", "configmaps"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
    }

    #[test]
    fn bad_lists_are_refused_naming_the_entry() {
        let error = |includes: &[&str], excludes: &[&str]| {
            validate_resource_lists(&strings(includes), &strings(excludes))
                .unwrap_err()
                .to_string()
        };
        assert!(
            validate_resource_lists(
                &strings(&["deployments.apps", "configmaps"]),
                &strings(&["secrets"])
            )
            .is_ok()
        );
        assert!(validate_resource_lists(&strings(&["*"]), &[]).is_ok());
        assert!(error(&["Deployments"], &[]).contains("`Deployments`"));
        assert!(error(&["config maps"], &[]).contains("`config maps`"));
        assert!(error(&["apps."], &[]).contains("`apps.`"));
        assert!(error(&[""], &[]).contains("empty"));
        assert!(error(&["*", "pods"], &[]).contains("alone"));
        assert!(error(&[], &["*"]).contains("cannot contain"));
        let both = error(&["pods"], &["pods"]);
        assert!(both.contains("`pods`") && both.contains("both"), "{both}");
    }
}
