//! Routing rules: which providers a message goes through, in which order. A route's conditions
//! must all hold; the first enabled matching route (lowest `priority`) wins; without one the
//! project's default provider is used. Targets with the same `priority` form a group that spreads
//! messages by `weight`; later groups are the failover order.

use courierx_domain::{DomainName, ProviderId, ValidationErrors};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Mutex;
use utoipa::ToSchema;

const MAX_TARGETS: usize = 20;
const MAX_LIST: usize = 50;
const MAX_WEIGHT: u32 = 10_000;

/// All conditions must hold; an absent or empty condition always holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Conditions {
    /// The sender's domain is one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_domain: Vec<String>,
    /// Every recipient's domain (to, cc and bcc) is one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipient_domain: Vec<String>,
    /// The message carries at least one of these tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags_any: Vec<String>,
    /// The message carries all of these tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags_all: Vec<String>,
    /// Each key of the message's metadata equals the given JSON value.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub provider_id: String,
    /// Lower goes first; targets with equal priority share messages by weight (default 1).
    #[serde(default = "default_priority")]
    pub priority: i64,
    /// Relative share within the priority group, 0 to 10000 (0 drains the target; default 1).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_priority() -> i64 {
    1
}
fn default_weight() -> u32 {
    1
}

/// Normalises conditions in place (domains lower-cased) and reports every problem under `prefix`.
pub fn check_conditions(c: &mut Conditions, prefix: &str, errs: &mut ValidationErrors) {
    for (name, list) in [
        ("from_domain", &mut c.from_domain),
        ("recipient_domain", &mut c.recipient_domain),
    ] {
        if list.len() > MAX_LIST {
            errs.add(
                format!("{prefix}.{name}"),
                format!("at most {MAX_LIST} domains"),
            );
        }
        for (i, d) in list.iter_mut().enumerate() {
            match DomainName::parse(d) {
                Ok(dn) => *d = dn.as_str().to_string(),
                Err(e) => errs.add(format!("{prefix}.{name}[{i}]"), e.to_string()),
            }
        }
    }
    for (name, list) in [("tags_any", &c.tags_any), ("tags_all", &c.tags_all)] {
        if list.len() > MAX_LIST {
            errs.add(
                format!("{prefix}.{name}"),
                format!("at most {MAX_LIST} tags"),
            );
        }
        for (i, t) in list.iter().enumerate() {
            if t.is_empty() || t.len() > 64 || t.chars().any(char::is_control) {
                errs.add(
                    format!("{prefix}.{name}[{i}]"),
                    "must be 1 to 64 characters without control characters",
                );
            }
        }
    }
    if c.metadata.len() > MAX_LIST {
        errs.add(
            format!("{prefix}.metadata"),
            format!("at most {MAX_LIST} keys"),
        );
    }
}

/// Checks targets: 1 to 20, known provider ids (`known`), no provider twice, weights in range
/// and at least one positive weight per priority group.
pub fn check_targets(
    targets: &[Target],
    known: &dyn Fn(&ProviderId) -> bool,
    errs: &mut ValidationErrors,
) {
    if targets.is_empty() || targets.len() > MAX_TARGETS {
        errs.add("targets", format!("1 to {MAX_TARGETS} targets"));
    }
    let mut seen = std::collections::HashSet::new();
    let mut group_weight: HashMap<i64, u64> = HashMap::new();
    for (i, t) in targets.iter().enumerate() {
        match t.provider_id.parse::<ProviderId>() {
            Ok(id) if known(&id) => {
                if !seen.insert(id) {
                    errs.add(
                        format!("targets[{i}].provider_id"),
                        "is already a target of this route",
                    );
                }
            }
            _ => errs.add(
                format!("targets[{i}].provider_id"),
                "is not a provider of this tenant",
            ),
        }
        if !(0..=1000).contains(&t.priority) {
            errs.add(format!("targets[{i}].priority"), "must be 0 to 1000");
        }
        if t.weight > MAX_WEIGHT {
            errs.add(
                format!("targets[{i}].weight"),
                format!("must be 0 to {MAX_WEIGHT}"),
            );
        }
        *group_weight.entry(t.priority).or_default() += u64::from(t.weight);
    }
    let mut empty: Vec<i64> = group_weight
        .into_iter()
        .filter(|(_, w)| *w == 0)
        .map(|(p, _)| p)
        .collect();
    empty.sort_unstable();
    for p in empty {
        errs.add(
            "targets",
            format!("priority group {p} has no target with a weight above 0"),
        );
    }
}

/// A stored route, parsed.
#[derive(Debug, Clone)]
pub struct Route {
    pub id: String,
    pub name: String,
    pub priority: i64,
    pub enabled: bool,
    pub conditions: Conditions,
    pub targets: Vec<Target>,
}

/// What routing looks at in a message.
#[derive(Debug, Clone)]
pub struct RoutingInput<'a> {
    pub from_domain: &'a str,
    pub recipient_domains: Vec<&'a str>,
    pub tags: &'a [String],
    pub metadata: &'a Map<String, Value>,
}

impl Conditions {
    /// `Ok` when every condition holds, else the first one that does not, in words.
    pub fn check(&self, m: &RoutingInput<'_>) -> Result<(), String> {
        if !self.from_domain.is_empty() && !self.from_domain.iter().any(|d| d == m.from_domain) {
            return Err(format!(
                "from_domain: {} is not one of {}",
                m.from_domain,
                self.from_domain.join(", ")
            ));
        }
        if !self.recipient_domain.is_empty()
            && let Some(other) = m
                .recipient_domains
                .iter()
                .find(|d| !self.recipient_domain.iter().any(|x| x == *d))
        {
            return Err(format!(
                "recipient_domain: {other} is not one of {}",
                self.recipient_domain.join(", ")
            ));
        }
        if !self.tags_any.is_empty() && !self.tags_any.iter().any(|t| m.tags.contains(t)) {
            return Err(format!(
                "tags_any: the message has none of {}",
                self.tags_any.join(", ")
            ));
        }
        if let Some(missing) = self.tags_all.iter().find(|t| !m.tags.contains(t)) {
            return Err(format!("tags_all: the message lacks tag {missing}"));
        }
        for (k, v) in &self.metadata {
            if m.metadata.get(k) != Some(v) {
                return Err(format!("metadata: {k} is not {v}"));
            }
        }
        Ok(())
    }
}

/// One provider in a priority group.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct PlanTarget {
    pub provider_id: String,
    pub weight: u32,
}

/// Targets of equal priority; a message goes to one of them, chosen by weight.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct PlanGroup {
    pub priority: i64,
    pub targets: Vec<PlanTarget>,
}

/// Why a route was or was not used.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RouteCheck {
    pub route_id: String,
    pub name: String,
    pub matched: bool,
    pub reason: String,
}

/// The providers a message would go through, in failover order, and why.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Plan {
    /// The route used; absent when the project's default provider is used.
    pub route_id: Option<String>,
    pub route_name: Option<String>,
    /// Balancer key: the route id, or `default`.
    #[serde(skip)]
    pub key: String,
    pub groups: Vec<PlanGroup>,
    pub reason: String,
    pub evaluated: Vec<RouteCheck>,
}

/// Picks the route and builds the failover groups. Targets whose provider no longer exists
/// (`exists` is false) are left out.
pub fn plan(
    routes: &[Route],
    default_provider: Option<&str>,
    m: &RoutingInput<'_>,
    exists: &dyn Fn(&str) -> bool,
) -> Plan {
    let mut evaluated = Vec::new();
    for r in routes {
        if !r.enabled {
            evaluated.push(RouteCheck {
                route_id: r.id.clone(),
                name: r.name.clone(),
                matched: false,
                reason: "disabled".into(),
            });
            continue;
        }
        match r.conditions.check(m) {
            Err(why) => evaluated.push(RouteCheck {
                route_id: r.id.clone(),
                name: r.name.clone(),
                matched: false,
                reason: why,
            }),
            Ok(()) => {
                evaluated.push(RouteCheck {
                    route_id: r.id.clone(),
                    name: r.name.clone(),
                    matched: true,
                    reason: "all conditions hold".into(),
                });
                let mut by_priority: Vec<PlanGroup> = Vec::new();
                let mut sorted: Vec<&Target> = r
                    .targets
                    .iter()
                    .filter(|t| t.weight > 0 && exists(&t.provider_id))
                    .collect();
                sorted.sort_by_key(|t| t.priority);
                for t in sorted {
                    let pt = PlanTarget {
                        provider_id: t.provider_id.clone(),
                        weight: t.weight,
                    };
                    match by_priority.last_mut() {
                        Some(g) if g.priority == t.priority => g.targets.push(pt),
                        _ => by_priority.push(PlanGroup {
                            priority: t.priority,
                            targets: vec![pt],
                        }),
                    }
                }
                return Plan {
                    route_id: Some(r.id.clone()),
                    route_name: Some(r.name.clone()),
                    key: r.id.clone(),
                    groups: by_priority,
                    reason: format!("route {:?} (priority {}) matched", r.name, r.priority),
                    evaluated,
                };
            }
        }
    }
    let (groups, reason) = match default_provider.filter(|p| exists(p)) {
        Some(p) => (
            vec![PlanGroup {
                priority: 0,
                targets: vec![PlanTarget {
                    provider_id: p.to_string(),
                    weight: 1,
                }],
            }],
            "no route matched; the project's default provider is used".to_string(),
        ),
        None => (
            Vec::new(),
            "no route matched and the project has no default provider".to_string(),
        ),
    };
    Plan {
        route_id: None,
        route_name: None,
        key: "default".into(),
        groups,
        reason,
        evaluated,
    }
}

/// Smooth weighted round-robin per priority group: over any window the split follows the
/// weights exactly (no random drift), and consecutive picks interleave rather than burst.
#[derive(Default)]
pub struct Balancer {
    state: Mutex<HashMap<(String, i64), HashMap<String, i64>>>,
}

impl Balancer {
    /// Picks one of `candidates` (the group's targets whose circuit lets a message through).
    pub fn pick<'a>(
        &self,
        key: &str,
        group: &PlanGroup,
        candidates: &[&'a PlanTarget],
    ) -> Option<&'a PlanTarget> {
        match candidates {
            [] => None,
            [only] => Some(only),
            _ => {
                let mut map = self.state.lock().ok()?;
                let current = map.entry((key.to_string(), group.priority)).or_default();
                let total: i64 = candidates.iter().map(|t| i64::from(t.weight)).sum();
                let mut best: Option<(&'a PlanTarget, i64)> = None;
                for t in candidates {
                    let cw = current.entry(t.provider_id.clone()).or_default();
                    *cw += i64::from(t.weight);
                    if best.is_none_or(|(_, w)| *cw > w) {
                        best = Some((t, *cw));
                    }
                }
                let (chosen, _) = best?;
                if let Some(cw) = current.get_mut(&chosen.provider_id) {
                    *cw -= total;
                }
                Some(chosen)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(tags: &'a [String], meta: &'a Map<String, Value>) -> RoutingInput<'a> {
        RoutingInput {
            from_domain: "acme.test",
            recipient_domains: vec!["gmail.com", "gmail.com"],
            tags,
            metadata: meta,
        }
    }

    #[test]
    fn conditions_all_must_hold() {
        let tags = vec!["billing".to_string()];
        let meta: Map<String, Value> = serde_json::from_str(r#"{"tier":"gold"}"#).unwrap();
        let m = input(&tags, &meta);
        let mut c = Conditions {
            from_domain: vec!["acme.test".into()],
            recipient_domain: vec!["gmail.com".into()],
            tags_any: vec!["billing".into(), "x".into()],
            tags_all: vec!["billing".into()],
            metadata: meta.clone(),
        };
        assert!(c.check(&m).is_ok());
        c.tags_all.push("other".into());
        assert_eq!(
            c.check(&m).unwrap_err(),
            "tags_all: the message lacks tag other"
        );
        c.tags_all.pop();
        c.recipient_domain = vec!["yahoo.com".into()];
        assert!(c.check(&m).unwrap_err().starts_with("recipient_domain"));
    }

    #[test]
    fn smooth_weights_split_exactly() {
        let b = Balancer::default();
        let g = PlanGroup {
            priority: 1,
            targets: vec![
                PlanTarget {
                    provider_id: "a".into(),
                    weight: 7,
                },
                PlanTarget {
                    provider_id: "b".into(),
                    weight: 3,
                },
            ],
        };
        let c: Vec<&PlanTarget> = g.targets.iter().collect();
        let mut a = 0;
        for _ in 0..1000 {
            if b.pick("r", &g, &c).unwrap().provider_id == "a" {
                a += 1;
            }
        }
        assert_eq!(a, 700);
    }
}
