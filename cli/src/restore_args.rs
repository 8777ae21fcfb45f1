//! `stowage restore create`'s flags for the backup's resources (Velero's spellings): which
//! resources and labels to restore, and what to do with an object that already exists.

use clap::{Args, ValueEnum};
use stowage_proto::v1;

use crate::parse;

/// Velero's `--existing-resource-policy` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExistingResourcePolicy {
    /// Leave an existing object as it is and report it (the default).
    None,
    /// Replace an existing object by the backed-up content.
    Update,
}

#[derive(Debug, Clone, Default, Args)]
pub struct ResourceArgs {
    /// Resources to restore from the backup's tarball (comma-separated, Velero's spelling:
    /// `deployments.apps,configmaps`, `*`); all when not given. The server refuses a bad
    /// entry, naming it.
    #[arg(long, value_delimiter = ',')]
    pub include_resources: Vec<String>,
    /// Resources not to restore (comma-separated, as above).
    #[arg(long, value_delimiter = ',')]
    pub exclude_resources: Vec<String>,
    /// Restore only objects whose labels meet this selector (Kubernetes' syntax, every term
    /// must hold): `key=value`, `key!=value`, `key in (a,b)`, `key notin (a,b)`, `key`, `!key`,
    /// comma-separated, e.g. `app=shop,tier in (web,api),!legacy`.
    #[arg(long, short = 'l', value_parser = parse::parse_label_selector)]
    pub selector: Option<parse::Selector>,
    /// What to do with an object that already exists: `none` leaves it (and the restore
    /// reports it), `update` replaces it by the backed-up content.
    #[arg(long, value_enum)]
    pub existing_resource_policy: Option<ExistingResourcePolicy>,
}

impl ResourceArgs {
    /// Writes these flags into the restore's spec.
    pub fn apply(self, spec: &mut v1::RestoreSpec) {
        spec.include_resources = self.include_resources;
        spec.exclude_resources = self.exclude_resources;
        let selector = self.selector.unwrap_or_default();
        spec.label_selector = selector.labels.into_iter().collect();
        spec.label_selector_expressions = selector
            .expressions
            .into_iter()
            .map(|requirement| v1::LabelSelectorRequirement {
                key: requirement.key,
                operator: requirement.operator.to_string(),
                values: requirement.values,
            })
            .collect();
        spec.existing_resource_policy = match self.existing_resource_policy {
            Some(ExistingResourcePolicy::None) => "none".to_string(),
            Some(ExistingResourcePolicy::Update) => "update".to_string(),
            None => String::new(),
        };
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Probe {
        #[command(flatten)]
        resources: ResourceArgs,
    }

    #[test]
    fn velero_spelled_flags_fill_the_spec() {
        let probe = Probe::try_parse_from([
            "probe",
            "--include-resources",
            "deployments.apps,configmaps",
            "--exclude-resources",
            "secrets",
            "--selector",
            "app=web,tier=front,track notin (canary,beta)",
            "--existing-resource-policy",
            "update",
        ])
        .unwrap();
        let mut spec = v1::RestoreSpec::default();
        probe.resources.apply(&mut spec);
        assert_eq!(spec.include_resources, ["deployments.apps", "configmaps"]);
        assert_eq!(spec.exclude_resources, ["secrets"]);
        assert_eq!(spec.label_selector["tier"], "front");
        assert_eq!(
            spec.label_selector_expressions,
            [v1::LabelSelectorRequirement {
                key: "track".into(),
                operator: "NotIn".into(),
                values: vec!["canary".into(), "beta".into()],
            }]
        );
        assert_eq!(spec.existing_resource_policy, "update");

        let mut spec = v1::RestoreSpec::default();
        Probe::try_parse_from(["probe"])
            .unwrap()
            .resources
            .apply(&mut spec);
        assert_eq!(spec.existing_resource_policy, "");
        assert!(spec.label_selector.is_empty());
    }

    #[test]
    fn an_unknown_policy_is_a_usage_error_naming_the_choices() {
        let error = Probe::try_parse_from(["probe", "--existing-resource-policy", "overwrite"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("overwrite"), "{error}");
        assert!(
            error.contains("none") && error.contains("update"),
            "{error}"
        );
    }
}
