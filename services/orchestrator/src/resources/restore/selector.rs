//! The restore's label selector: equality terms (`label_selector`) and set-based requirements
//! (`label_selector_expressions`, Kubernetes' matchExpressions), checked when the restore is
//! created and matched against each backed-up object's labels as the API server would.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
};

use serde_json::Value;
use stowage_proto::v1::{LabelSelectorRequirement, RestoreSpec};

use crate::error::{Error, validate_label_selector};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    /// Sorted and without repeats (one value or more for In and NotIn, none otherwise).
    pub values: Vec<String>,
}

/// Every term must hold (an empty selector selects everything).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
    pub expressions: Vec<Requirement>,
}

impl Requirement {
    fn matches(&self, labels: Option<&serde_json::Map<String, Value>>) -> bool {
        let value = labels
            .and_then(|labels| labels.get(&self.key))
            .and_then(Value::as_str);
        let listed = |value: &str| self.values.iter().any(|v| v == value);
        match self.operator {
            Operator::In => value.is_some_and(listed),
            Operator::NotIn => !value.is_some_and(listed),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

impl LabelSelector {
    /// The selector of a restore's spec; `InvalidArgument` naming the bad term (a label key or
    /// value Kubernetes would refuse, an unknown operator, values where none belong or none
    /// where some must).
    pub fn from_spec(spec: &RestoreSpec) -> Result<LabelSelector, Error> {
        validate_label_selector(&spec.label_selector)?;
        let expressions = spec
            .label_selector_expressions
            .iter()
            .map(requirement)
            .collect::<Result<_, _>>()?;
        Ok(LabelSelector {
            match_labels: spec.label_selector.clone().into_iter().collect(),
            expressions,
        })
    }

    /// Whether `object`'s labels meet every term.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = object
            .pointer("/metadata/labels")
            .and_then(Value::as_object);
        self.match_labels.iter().all(|(key, value)| {
            labels
                .and_then(|labels| labels.get(key))
                .and_then(Value::as_str)
                == Some(value.as_str())
        }) && self
            .expressions
            .iter()
            .all(|requirement| requirement.matches(labels))
    }
}

fn requirement(given: &LabelSelectorRequirement) -> Result<Requirement, Error> {
    let text = || {
        format!(
            "{} {} ({})",
            given.key,
            given.operator,
            given.values.join(",")
        )
    };
    let invalid = |reason: String| Error::InvalidArgument {
        what: "label selector requirement",
        value: text(),
        reason,
    };
    let operator = match given.operator.as_str() {
        "In" => Operator::In,
        "NotIn" => Operator::NotIn,
        "Exists" => Operator::Exists,
        "DoesNotExist" => Operator::DoesNotExist,
        other => {
            return Err(invalid(format!(
                "unknown operator `{other}`: use In, NotIn, Exists or DoesNotExist"
            )));
        }
    };
    let mut values = given.values.clone();
    values.sort();
    values.dedup();
    match operator {
        Operator::In | Operator::NotIn if values.is_empty() => {
            return Err(invalid(format!(
                "{} needs one value or more",
                given.operator
            )));
        }
        Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
            return Err(invalid(format!("{} takes no values", given.operator)));
        }
        _ => {}
    }
    // The key and every value checked as label keys and values are.
    validate_label_selector(&HashMap::from([(given.key.clone(), String::new())]))?;
    for value in &values {
        validate_label_selector(&HashMap::from([(given.key.clone(), value.clone())]))?;
    }
    Ok(Requirement {
        key: given.key.clone(),
        operator,
        values,
    })
}

/// Kubernetes' selector syntax: `app=web,tier in (api,db),!legacy`.
impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut terms: Vec<String> = self
            .match_labels
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        for requirement in &self.expressions {
            let (key, values) = (&requirement.key, requirement.values.join(","));
            terms.push(match requirement.operator {
                Operator::In => format!("{key} in ({values})"),
                Operator::NotIn => format!("{key} notin ({values})"),
                Operator::Exists => key.clone(),
                Operator::DoesNotExist => format!("!{key}"),
            });
        }
        f.write_str(&terms.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn requirement(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    fn selector(
        labels: &[(&str, &str)],
        expressions: Vec<LabelSelectorRequirement>,
    ) -> Result<LabelSelector, Error> {
        LabelSelector::from_spec(&RestoreSpec {
            label_selector: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            label_selector_expressions: expressions,
            ..Default::default()
        })
    }

    fn labelled(labels: Value) -> Value {
        json!({"metadata": {"name": "x", "labels": labels}})
    }

    #[test]
    fn set_based_requirements_match_as_the_api_server_s() {
        let selector = selector(
            &[("app", "shop")],
            vec![
                requirement("tier", "In", &["web", "api"]),
                requirement("track", "NotIn", &["canary"]),
                requirement("owner", "Exists", &[]),
                requirement("legacy", "DoesNotExist", &[]),
            ],
        )
        .unwrap();
        let all = json!({"app": "shop", "tier": "web", "owner": "a", "track": "stable"});
        assert!(selector.matches(&labelled(all.clone())));
        // NotIn also selects an object without the label.
        let mut untracked = all.clone();
        untracked.as_object_mut().unwrap().remove("track");
        assert!(selector.matches(&labelled(untracked)));
        for (key, value) in [
            ("app", json!("other")),
            ("tier", json!("db")),
            ("track", json!("canary")),
            ("legacy", json!("yes")),
        ] {
            let mut labels = all.clone();
            labels[key] = value;
            assert!(!selector.matches(&labelled(labels)), "{key}");
        }
        let mut ownerless = all.clone();
        ownerless.as_object_mut().unwrap().remove("owner");
        assert!(!selector.matches(&labelled(ownerless)));
        assert!(!selector.matches(&json!({"metadata": {"name": "bare"}})));
        assert_eq!(
            selector.to_string(),
            "app=shop,tier in (api,web),track notin (canary),owner,!legacy"
        );
        assert!(LabelSelector::default().matches(&json!({"metadata": {}})));
    }

    #[test]
    fn bad_requirements_are_refused_naming_them() {
        let refused = |expressions| match selector(&[], expressions) {
            Err(Error::InvalidArgument { value, reason, .. }) => format!("{value}: {reason}"),
            other => panic!("not refused: {other:?}"),
        };
        let message = refused(vec![requirement("tier", "Gt", &["1"])]);
        assert!(message.contains("tier Gt (1)") && message.contains("unknown operator `Gt`"));
        let message = refused(vec![requirement("tier", "In", &[])]);
        assert!(message.contains("In needs one value or more"), "{message}");
        let message = refused(vec![requirement("tier", "Exists", &["web"])]);
        assert!(message.contains("Exists takes no values"), "{message}");
        let message = refused(vec![requirement("bad key!", "Exists", &[])]);
        assert!(message.contains("bad key!"), "{message}");
        let message = refused(vec![requirement("tier", "In", &["-web"])]);
        assert!(message.contains("-web"), "{message}");
    }
}
