//! A lane's warnings: the overrides that will not serve as asked (a
//! service no rule routes to, a version with no registered instance, a
//! version whose instances are all unhealthy), computed from the serving
//! snapshot for the lane API's answers and the dashboard. Control plane.

use crate::allocation::lanes::Lane;
use crate::routing::snapshot::Snapshot;

/// One sentence per problem, naming the service and version, in service
/// order. Empty when every override can serve.
pub fn lane_warnings(snap: &Snapshot, lane: &Lane) -> Vec<String> {
    let routed = snap.rules.services();
    let instead = if lane.strict {
        "requests to it answer 503 (strict lane)".to_string()
    } else {
        format!(
            "requests to it fall back to lane {}",
            lane.parent
                .as_deref()
                .unwrap_or(crate::routing::snapshot::BASELINE)
        )
    };
    let mut out = Vec::new();
    for (service, version) in &lane.services {
        if !routed.iter().any(|s| **s == **service) {
            out.push(format!(
                "service \"{service}\" (version \"{version}\"): no rule routes to it, so no request through laneway reaches it; check the service name against the rules' locations"
            ));
            continue;
        }
        let registered = snap
            .service_members(service)
            .iter()
            .filter(|i| i.version.as_deref() == Some(version.as_str()))
            .count();
        if registered == 0 {
            out.push(format!(
                "version \"{version}\" of service \"{service}\" has no registered instance; {instead} until one registers"
            ));
        } else if !snap.version_available(service, version) {
            out.push(format!(
                "version \"{version}\" of service \"{service}\" has {registered} instance{} but none is healthy; {instead}",
                if registered == 1 { "" } else { "s" }
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::discovery::{Catalog, Health, Instance};
    use crate::routing::rules::RuleSet;
    use crate::routing::snapshot::BuildInput;
    use crate::telemetry::Metrics;

    fn inst(id: &str, service: &str, version: &str, health: Health) -> Arc<Instance> {
        Arc::new(Instance {
            id: id.into(),
            service: service.into(),
            address: "127.0.0.1".into(),
            port: 9,
            version: Some(version.into()),
            lane: None,
            tags: vec![],
            meta: Default::default(),
            weight_passing: 1,
            weight_warning: 1,
            health,
            checks: vec![],
        })
    }

    fn snapshot(instances: Vec<Arc<Instance>>, m: &Metrics) -> Snapshot {
        let rules = RuleSet::compile(
            "[[server]]\nnames = [\"shop.example.com\"]\n[[server.location]]\nmatch = \"/\"\nservice = \"web\"\n",
            Path::new("routes.toml"),
        )
        .expect("rules compile");
        Snapshot::build(BuildInput {
            generation: 1,
            rules: Arc::new(rules),
            lanes: &[],
            catalog: &Catalog { instances },
            baseline_versions: &[],
            metrics: m,
            previous: None,
            states: None,
        })
    }

    fn lane(services: &[(&str, &str)], strict: bool) -> Lane {
        Lane {
            name: "t-1".into(),
            services: services
                .iter()
                .map(|(s, v)| (s.to_string(), v.to_string()))
                .collect(),
            parent: Some("baseline".into()),
            strict,
            ..Lane::default()
        }
    }

    #[test]
    fn each_problem_is_named_with_its_service_and_version() {
        let m = Metrics::new();
        let snap = snapshot(
            vec![
                inst("web-1", "web", "v1", Health::Passing),
                inst("web-2", "web", "v2", Health::Critical),
                inst("web-3", "web", "v2", Health::Critical),
            ],
            &m,
        );
        assert!(lane_warnings(&snap, &lane(&[("web", "v1")], false)).is_empty());

        let w = lane_warnings(&snap, &lane(&[("payments", "v1")], false));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("service \"payments\"") && w[0].contains("no rule routes to it"),
            "{w:?}"
        );

        let w = lane_warnings(&snap, &lane(&[("web", "v9")], false));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("version \"v9\" of service \"web\" has no registered instance")
                && w[0].contains("fall back to lane baseline"),
            "{w:?}"
        );

        let w = lane_warnings(&snap, &lane(&[("web", "v2")], true));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("version \"v2\" of service \"web\" has 2 instances but none is healthy")
                && w[0].contains("503 (strict lane)"),
            "{w:?}"
        );
    }
}
