//! What a restore did with each object of the backup's resource tarball, as `restore describe`
//! and `-o yaml|json` show it: counts per outcome, the objects that failed or were skipped
//! (each with its reason), and with `--details` every object.

use std::fmt::Write as _;

use serde::Serialize;
use stowage_proto::v1;

use crate::table::render_table;

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestoredResourceView {
    pub resource: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    pub name: String,
    /// `Created`, `Updated`, `SkippedExists`, `Skipped`, `Failed`.
    pub outcome: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
}

impl From<&v1::RestoredResource> for RestoredResourceView {
    fn from(resource: &v1::RestoredResource) -> Self {
        RestoredResourceView {
            resource: resource.resource.clone(),
            namespace: resource.namespace.clone(),
            name: resource.name.clone(),
            outcome: outcome_word(resource.outcome).to_string(),
            message: resource.message.clone(),
        }
    }
}

pub fn outcome_word(outcome: i32) -> &'static str {
    match v1::ResourceOutcome::try_from(outcome).unwrap_or_default() {
        v1::ResourceOutcome::Created => "Created",
        v1::ResourceOutcome::Updated => "Updated",
        v1::ResourceOutcome::SkippedExists => "SkippedExists",
        v1::ResourceOutcome::Skipped => "Skipped",
        v1::ResourceOutcome::Failed => "Failed",
        v1::ResourceOutcome::Unspecified => "Unknown",
    }
}

impl RestoredResourceView {
    /// `configmaps/shop/cfg` or `persistentvolumes/pv-1`.
    pub fn path(&self) -> String {
        if self.namespace.is_empty() {
            format!("{}/{}", self.resource, self.name)
        } else {
            format!("{}/{}/{}", self.resource, self.namespace, self.name)
        }
    }
}

/// The `Resources:` section of `restore describe`: nothing for a restore that handled no
/// object (one made before resources were restored).
pub fn describe(out: &mut String, resources: &[RestoredResourceView], details: bool) {
    if resources.is_empty() {
        return;
    }
    const OUTCOMES: [&str; 5] = ["Created", "Updated", "SkippedExists", "Skipped", "Failed"];
    let counts: Vec<String> = OUTCOMES
        .iter()
        .map(|outcome| {
            let count = resources.iter().filter(|r| r.outcome == *outcome).count();
            format!("{count} {outcome}")
        })
        .collect();
    out.push('\n');
    let _ = writeln!(
        out,
        "Resources:    {} objects: {}",
        resources.len(),
        counts.join(", ")
    );
    let shown: Vec<&RestoredResourceView> = resources
        .iter()
        .filter(|r| details || !matches!(r.outcome.as_str(), "Created" | "Updated"))
        .collect();
    if shown.is_empty() {
        return;
    }
    let rows: Vec<Vec<String>> = shown
        .iter()
        .map(|r| vec![r.path(), r.outcome.clone(), r.message.clone()])
        .collect();
    for line in render_table(&["RESOURCE", "OUTCOME", "MESSAGE"], &rows).lines() {
        let _ = writeln!(out, "  {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(
        resource: &str,
        namespace: &str,
        name: &str,
        outcome: &str,
        message: &str,
    ) -> RestoredResourceView {
        RestoredResourceView {
            resource: resource.into(),
            namespace: namespace.into(),
            name: name.into(),
            outcome: outcome.into(),
            message: message.into(),
        }
    }

    #[test]
    fn describe_counts_outcomes_and_lists_what_was_not_restored() {
        let resources = [
            view("configmaps", "shop", "cfg", "Created", ""),
            view("deployments.apps", "shop", "web", "Created", ""),
            view(
                "secrets",
                "shop",
                "creds",
                "Failed",
                "forbidden (403 Forbidden)",
            ),
            view(
                "pods",
                "shop",
                "web-1",
                "Skipped",
                "owned by ReplicaSet web-1a",
            ),
            view("services", "shop", "web", "SkippedExists", "already exists"),
        ];
        let mut out = String::new();
        describe(&mut out, &resources, false);
        assert!(
            out.contains("Resources:    5 objects: 2 Created, 0 Updated, 1 SkippedExists, 1 Skipped, 1 Failed"),
            "{out}"
        );
        assert!(
            out.contains("secrets/shop/creds") && out.contains("403 Forbidden"),
            "{out}"
        );
        assert!(
            out.contains("pods/shop/web-1") && out.contains("services/shop/web"),
            "{out}"
        );
        assert!(!out.contains("configmaps/shop/cfg"), "{out}");
        let mut all = String::new();
        describe(&mut all, &resources, true);
        assert!(all.contains("configmaps/shop/cfg"), "{all}");
        let mut none = String::new();
        describe(&mut none, &[], true);
        assert!(none.is_empty());
    }

    #[test]
    fn outcomes_read_from_the_proto() {
        let resource = v1::RestoredResource {
            resource: "persistentvolumes".into(),
            namespace: String::new(),
            name: "pv-1".into(),
            outcome: v1::ResourceOutcome::SkippedExists as i32,
            message: "already exists".into(),
        };
        let view = RestoredResourceView::from(&resource);
        assert_eq!(view.outcome, "SkippedExists");
        assert_eq!(view.path(), "persistentvolumes/pv-1");
        let json = serde_json::to_value(&view).unwrap();
        assert!(json.get("namespace").is_none());
    }
}
