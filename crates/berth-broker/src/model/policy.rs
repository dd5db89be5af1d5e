//! Policies: queue and exchange arguments applied by name pattern (RabbitMQ's
//! `rabbitmqctl set_policy`). Arguments given at declare win over a policy.
use regex::Regex;

use super::args;
use crate::definitions::{JsonMap, PolicyDef};

/// What a policy applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyTo {
    Queues,
    Exchanges,
    All,
}

impl ApplyTo {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "queues" => Some(ApplyTo::Queues),
            "exchanges" => Some(ApplyTo::Exchanges),
            "all" => Some(ApplyTo::All),
            _ => None,
        }
    }
}

/// A validated policy with its compiled pattern.
#[derive(Debug, Clone)]
pub struct Policy {
    pub def: PolicyDef,
    pattern: Regex,
    apply_to: ApplyTo,
}

impl Policy {
    /// Validates the pattern, apply-to and the keys the model understands;
    /// `Err` text names the policy.
    pub fn new(def: PolicyDef) -> Result<Self, String> {
        let pattern = Regex::new(&def.pattern).map_err(|e| {
            format!(
                "policy '{}': invalid pattern '{}': {e}",
                def.name, def.pattern
            )
        })?;
        let apply_to = ApplyTo::parse(&def.apply_to).ok_or_else(|| {
            format!(
                "policy '{}': invalid apply-to '{}' (queues, exchanges or all)",
                def.name, def.apply_to
            )
        })?;
        args::validate_policy(&def.definition)
            .map_err(|e| format!("policy '{}': {e}", def.name))?;
        Ok(Self {
            def,
            pattern,
            apply_to,
        })
    }

    /// Whether it applies to a queue (`queue` true) or an exchange of this name.
    pub fn applies(&self, name: &str, queue: bool) -> bool {
        let kind_ok = match self.apply_to {
            ApplyTo::All => true,
            ApplyTo::Queues => queue,
            ApplyTo::Exchanges => !queue,
        };
        kind_ok && self.pattern.is_match(name)
    }
}

/// The definition of the highest-priority policy that applies (ties: the
/// first by name, so the choice does not depend on insertion order).
pub fn effective<'a>(
    policies: impl IntoIterator<Item = &'a Policy>,
    name: &str,
    queue: bool,
) -> Option<&'a JsonMap> {
    let mut best: Option<&Policy> = None;
    for p in policies {
        if !p.applies(name, queue) {
            continue;
        }
        best = match best {
            Some(b) if b.def.priority > p.def.priority => Some(b),
            Some(b) if b.def.priority == p.def.priority && b.def.name <= p.def.name => Some(b),
            _ => Some(p),
        };
    }
    best.map(|p| &p.def.definition)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pol(name: &str, pattern: &str, apply_to: &str, priority: i64, def: &str) -> Policy {
        Policy::new(PolicyDef {
            vhost: "/".into(),
            name: name.into(),
            pattern: pattern.into(),
            apply_to: apply_to.into(),
            definition: serde_json::from_str(def).unwrap(),
            priority,
        })
        .unwrap()
    }

    #[test]
    fn highest_priority_matching_policy_wins() {
        let ps = [
            pol("a", "^q", "queues", 1, r#"{"max-length": 1}"#),
            pol("b", "q", "all", 5, r#"{"max-length": 2}"#),
            pol("c", "^q", "exchanges", 9, r#"{"alternate-exchange": "ae"}"#),
        ];
        let d = effective(&ps, "q1", true).unwrap();
        assert_eq!(d["max-length"], 2);
        let d = effective(&ps, "q1", false).unwrap();
        assert_eq!(d["alternate-exchange"], "ae");
        assert!(effective(&ps, "x", true).is_none());
        // unanchored search
        assert!(effective(&ps, "aq", true).is_some());
    }

    #[test]
    fn invalid_policies_are_refused() {
        let base = PolicyDef {
            vhost: "/".into(),
            name: "p".into(),
            pattern: "(".into(),
            apply_to: "all".into(),
            definition: JsonMap::new(),
            priority: 0,
        };
        assert!(Policy::new(base.clone()).is_err());
        assert!(Policy::new(PolicyDef {
            pattern: ".*".into(),
            apply_to: "nothing".into(),
            ..base.clone()
        })
        .is_err());
        let def = serde_json::from_str(r#"{"overflow": "sideways"}"#).unwrap();
        assert!(Policy::new(PolicyDef {
            pattern: ".*".into(),
            definition: def,
            ..base
        })
        .is_err());
    }
}
