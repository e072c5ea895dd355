//! Labels (`k=v` pairs on tasks and workers) and the constraints a task
//! puts on its worker's labels (Kubernetes' node selectors, Slurm's
//! `--constraint`, Nomad's constraints on node attributes).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::ValidationError;

/// Labels: a sorted map from key to value.
pub type Labels = BTreeMap<String, String>;

/// The most labels one task or worker may carry.
pub const MAX_LABELS: usize = 64;
/// The most constraints one task may carry.
pub const MAX_CONSTRAINTS: usize = 32;
/// Longest label key or value, in bytes.
const MAX_LABEL_BYTES: usize = 253;

/// Checks a label key: letters, digits and `-_./`, starting with a letter
/// or digit, at most 253 bytes.
pub fn check_label_key(key: &str, field: &'static str) -> Result<(), ValidationError> {
    if key.is_empty() {
        return Err(ValidationError::Empty { field });
    }
    if key.len() > MAX_LABEL_BYTES {
        return Err(ValidationError::too_large(
            field,
            format!("{} bytes", key.len()),
            MAX_LABEL_BYTES,
        ));
    }
    if let Some(found) = key
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_./".contains(*c)))
    {
        return Err(ValidationError::BadCharacter { field, found });
    }
    if !key.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(ValidationError::Invalid {
            field,
            reason: format!("{key:?} must start with a letter or digit"),
        });
    }
    Ok(())
}

/// Checks a label value: printable, without `,()` (which constraints use),
/// at most 253 bytes; it may be empty.
fn check_label_value(value: &str, field: &'static str) -> Result<(), ValidationError> {
    if value.len() > MAX_LABEL_BYTES {
        return Err(ValidationError::too_large(
            field,
            format!("{} bytes", value.len()),
            MAX_LABEL_BYTES,
        ));
    }
    if let Some(found) = value
        .chars()
        .find(|c| c.is_control() || c.is_whitespace() || ",()".contains(*c))
    {
        return Err(ValidationError::BadCharacter { field, found });
    }
    Ok(())
}

/// Checks a set of labels.
pub fn check_labels(labels: &Labels) -> Result<(), ValidationError> {
    if labels.len() > MAX_LABELS {
        return Err(ValidationError::too_large(
            "labels",
            labels.len(),
            MAX_LABELS,
        ));
    }
    for (k, v) in labels {
        check_label_key(k, "label key")?;
        check_label_value(v, "label value")?;
    }
    Ok(())
}

/// Parses `k=v` (the CLI's `--label`).
pub fn parse_label(s: &str) -> Result<(String, String), ValidationError> {
    let (k, v) = s.split_once('=').ok_or_else(|| ValidationError::Invalid {
        field: "label",
        reason: format!("{s:?} is not key=value"),
    })?;
    let (k, v) = (k.trim(), v.trim());
    check_label_key(k, "label key")?;
    check_label_value(v, "label value")?;
    Ok((k.to_owned(), v.to_owned()))
}

/// One requirement on a worker's labels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum Constraint {
    /// `k=v`: the label is present with this value.
    Equals {
        /// The label key.
        key: String,
        /// The value it must have.
        value: String,
    },
    /// `k!=v`: the label is absent or has another value.
    NotEquals {
        /// The label key.
        key: String,
        /// The value it must not have.
        value: String,
    },
    /// `k in (a,b)`: the label is present with one of these values.
    In {
        /// The label key.
        key: String,
        /// The values allowed, sorted.
        values: BTreeSet<String>,
    },
    /// `k`: the label is present.
    Present {
        /// The label key.
        key: String,
    },
    /// `!k`: the label is absent.
    Absent {
        /// The label key.
        key: String,
    },
}

impl Constraint {
    /// Whether a worker with `labels` satisfies it.
    pub fn admits(&self, labels: &Labels) -> bool {
        match self {
            Constraint::Equals { key, value } => labels.get(key) == Some(value),
            Constraint::NotEquals { key, value } => labels.get(key) != Some(value),
            Constraint::In { key, values } => labels.get(key).is_some_and(|v| values.contains(v)),
            Constraint::Present { key } => labels.contains_key(key),
            Constraint::Absent { key } => !labels.contains_key(key),
        }
    }

    /// Checks the key and values.
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self {
            Constraint::Equals { key, value } | Constraint::NotEquals { key, value } => {
                check_label_key(key, "constraint key")?;
                check_label_value(value, "constraint value")
            }
            Constraint::In { key, values } => {
                check_label_key(key, "constraint key")?;
                if values.is_empty() {
                    return Err(ValidationError::Empty {
                        field: "constraint values",
                    });
                }
                values
                    .iter()
                    .try_for_each(|v| check_label_value(v, "constraint value"))
            }
            Constraint::Present { key } | Constraint::Absent { key } => {
                check_label_key(key, "constraint key")
            }
        }
    }
}

/// Whether a worker with `labels` satisfies every constraint.
pub fn admits_all(constraints: &[Constraint], labels: &Labels) -> bool {
    constraints.iter().all(|c| c.admits(labels))
}

impl std::str::FromStr for Constraint {
    type Err = ValidationError;

    /// `k=v`, `k!=v`, `k in (a,b)`, `k`, `!k`.
    fn from_str(s: &str) -> Result<Self, ValidationError> {
        let s = s.trim();
        let c = if let Some((k, v)) = s.split_once("!=") {
            Constraint::NotEquals {
                key: k.trim().into(),
                value: v.trim().into(),
            }
        } else if let Some((k, v)) = s.split_once('=') {
            Constraint::Equals {
                key: k.trim().into(),
                value: v.trim().into(),
            }
        } else if let Some((k, rest)) = s.split_once(" in ") {
            let inner = rest
                .trim()
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| ValidationError::Invalid {
                    field: "constraint",
                    reason: format!("{s:?}: the values of `in` go in parentheses: k in (a,b)"),
                })?;
            Constraint::In {
                key: k.trim().into(),
                values: inner
                    .split(',')
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .map(str::to_owned)
                    .collect(),
            }
        } else if let Some(k) = s.strip_prefix('!') {
            Constraint::Absent {
                key: k.trim().into(),
            }
        } else {
            Constraint::Present { key: s.into() }
        };
        c.validate().map_err(|e| ValidationError::Invalid {
            field: "constraint",
            reason: format!("{s:?}: {e}"),
        })?;
        Ok(c)
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Constraint::Equals { key, value } => write!(f, "{key}={value}"),
            Constraint::NotEquals { key, value } => write!(f, "{key}!={value}"),
            Constraint::In { key, values } => {
                let v: Vec<&str> = values.iter().map(String::as_str).collect();
                write!(f, "{key} in ({})", v.join(","))
            }
            Constraint::Present { key } => f.write_str(key),
            Constraint::Absent { key } => write!(f, "!{key}"),
        }
    }
}

/// Checks a task's constraints: each valid, at most [`MAX_CONSTRAINTS`].
pub(super) fn check_constraints(constraints: &[Constraint]) -> Result<(), ValidationError> {
    if constraints.len() > MAX_CONSTRAINTS {
        return Err(ValidationError::too_large(
            "constraints",
            constraints.len(),
            MAX_CONSTRAINTS,
        ));
    }
    constraints.iter().try_for_each(Constraint::validate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn each_form_parses_and_matches() {
        let w = labels(&[("zone", "a"), ("gpu", "a100"), ("ssd", "")]);
        for (text, admits) in [
            ("zone=a", true),
            ("zone=b", false),
            ("zone!=b", true),
            ("zone!=a", false),
            ("rack!=1", true),
            ("gpu in (a100,h100)", true),
            ("gpu in (v100)", false),
            ("ssd", true),
            ("nvme", false),
            ("!nvme", true),
            ("!ssd", false),
        ] {
            let c: Constraint = text.parse().unwrap();
            assert_eq!(c.admits(&w), admits, "{text}");
            assert_eq!(c.to_string().parse::<Constraint>().unwrap(), c, "{text}");
        }
    }

    #[test]
    fn bad_constraints_and_labels_are_refused() {
        for bad in ["", "=a", "k in a,b", "k in ()", "a b", "k=(x)", "!"] {
            assert!(bad.parse::<Constraint>().is_err(), "{bad:?}");
        }
        for bad in ["k", "=v", "k=a b", "-k=v"] {
            assert!(parse_label(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_label("team = ml").unwrap(),
            ("team".into(), "ml".into())
        );
    }

    proptest! {
        /// `k!=v` admits exactly what `k=v` refuses, and `!k` what `k` refuses.
        #[test]
        fn negations_are_complements(
            has in proptest::option::of("[ab]"),
            value in "[ab]",
        ) {
            let w: Labels = has.into_iter().map(|v| ("k".to_owned(), v)).collect();
            let eq = Constraint::Equals { key: "k".into(), value: value.clone() };
            let ne = Constraint::NotEquals { key: "k".into(), value };
            prop_assert_ne!(eq.admits(&w), ne.admits(&w));
            let present = Constraint::Present { key: "k".into() };
            let absent = Constraint::Absent { key: "k".into() };
            prop_assert_ne!(present.admits(&w), absent.admits(&w));
        }
    }
}
