//! Scenario files: YAML documents that describe a run. This module reads the part every
//! consumer of a scenario shares, the traffic, which is a rate profile written either as
//! one string or as a list of segments:
//!
//! ```yaml
//! traffic: "10@60s,1000@5m,5000@10m,0"
//! # or
//! traffic:
//!   - 10@60s
//!   - 1000@5m
//!   - 0
//! ```

use crate::profile::RateProfile;

/// Why a scenario could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Not YAML, or not a mapping at the top.
    #[error("{origin}: not a valid scenario: {reason}")]
    Syntax {
        /// The file name (or "scenario") the text came from.
        origin: String,
        /// The YAML parser's message.
        reason: String,
    },
    /// A setting is missing or has the wrong type or value.
    #[error("{origin}: {setting}: {reason}")]
    Setting {
        /// The file name (or "scenario") the text came from.
        origin: String,
        /// The offending key.
        setting: String,
        /// What is wrong and what would be right.
        reason: String,
    },
}

/// Reads the `traffic` key of a scenario's YAML text; `origin` names the file in errors.
pub fn traffic_from_yaml(text: &str, origin: &str) -> Result<RateProfile, ScenarioError> {
    let document: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| ScenarioError::Syntax {
            origin: origin.into(),
            reason: e.to_string(),
        })?;
    let setting = |reason: String| ScenarioError::Setting {
        origin: origin.into(),
        setting: "traffic".into(),
        reason,
    };
    let traffic = document
        .get("traffic")
        .ok_or_else(|| setting("missing; give a rate profile such as \"1000@5m,0\"".into()))?;
    let text = match traffic {
        serde_yaml::Value::String(s) => s.clone(),
        serde_yaml::Value::Number(n) => n.to_string(),
        serde_yaml::Value::Sequence(items) => items
            .iter()
            .map(|item| match item {
                serde_yaml::Value::String(s) => Ok(s.clone()),
                serde_yaml::Value::Number(n) => Ok(n.to_string()),
                other => Err(setting(format!(
                    "list items must be segments like 1000@5m, not {other:?}"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?
            .join(","),
        _ => {
            return Err(setting(
                "must be a rate profile string or a list of segments".into(),
            ));
        }
    };
    text.parse()
        .map_err(|e: crate::ProfileError| setting(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn traffic_as_string_or_list() {
        let a = traffic_from_yaml("traffic: \"10@60s,0\"\n", "a.yaml").unwrap();
        let b = traffic_from_yaml("traffic:\n  - 10@60s\n  - 0\n", "b.yaml").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.rate_at(Duration::from_secs(61)), Some(0.0));
        let c = traffic_from_yaml("traffic: 250\n", "c.yaml").unwrap();
        assert_eq!(c.rate_at(Duration::ZERO), Some(250.0));
    }

    #[test]
    fn errors_name_the_file_and_setting() {
        let missing = traffic_from_yaml("partitions: 3\n", "s.yaml")
            .unwrap_err()
            .to_string();
        assert!(missing.starts_with("s.yaml: traffic: missing"), "{missing}");
        let bad = traffic_from_yaml("traffic: \"10@x\"\n", "s.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            bad.contains("s.yaml: traffic:") && bad.contains("10@x"),
            "{bad}"
        );
        let syntax = traffic_from_yaml("traffic: [\n", "s.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            syntax.starts_with("s.yaml: not a valid scenario"),
            "{syntax}"
        );
    }
}
