//! `laneway_upstream_health`: one series per instance, read from the
//! instances' health states when `/metrics` is scraped.
//!
//! Why a collector of our own rather than an `IntGaugeVec`: a gauge child
//! per instance has to be made (three labels hashed, a child allocated) when
//! the instance is first seen, which at start means once per instance of the
//! whole catalog. With 200,000 instances that was most of a cold snapshot
//! build (~400 ms) and ~200 MiB of heap, for a value that is one relaxed
//! atomic load away in the instance's state. The `prometheus` crate has no
//! gauge whose value is computed at collection time per label set, so this
//! implements its `Collector` over whatever [`InstanceHealthSource`] is
//! attached (the upstream health registry).

use std::sync::{Arc, OnceLock, Weak};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};

/// Where the per-instance health values come from.
pub trait InstanceHealthSource: Send + Sync {
    /// Calls `f(service, version, instance, takes_traffic)` for every
    /// instance tracked.
    fn each_instance(&self, f: &mut dyn FnMut(&str, &str, &str, bool));
}

/// The `laneway_upstream_health` family; clones share the source.
#[derive(Clone)]
pub struct InstanceHealthGauge {
    desc: Arc<Desc>,
    source: Arc<OnceLock<Weak<dyn InstanceHealthSource>>>,
}

pub const NAME: &str = "laneway_upstream_health";
const HELP: &str =
    "1 when an instance takes traffic, 0 when a health check or an ejection holds it out";
const LABELS: [&str; 3] = ["service", "version", "instance"];

impl InstanceHealthGauge {
    pub fn new() -> InstanceHealthGauge {
        let desc = Desc::new(
            NAME.to_string(),
            HELP.to_string(),
            LABELS.iter().map(|l| l.to_string()).collect(),
            Default::default(),
        )
        .expect("metric definition");
        InstanceHealthGauge {
            desc: Arc::new(desc),
            source: Arc::new(OnceLock::new()),
        }
    }

    /// Reads values from `source` from now on (the first source attached
    /// stays: one per process).
    pub fn attach(&self, source: Weak<dyn InstanceHealthSource>) {
        let _ = self.source.set(source);
    }

    /// The series as `(service, version, instance, value)`, sorted.
    pub fn values(&self) -> Vec<(String, String, String, i64)> {
        let mut out = Vec::new();
        if let Some(source) = self.source.get().and_then(Weak::upgrade) {
            source.each_instance(&mut |service, version, instance, up| {
                out.push((
                    service.to_string(),
                    version.to_string(),
                    instance.to_string(),
                    i64::from(up),
                ));
            });
        }
        out.sort_unstable();
        out
    }
}

impl Default for InstanceHealthGauge {
    fn default() -> Self {
        InstanceHealthGauge::new()
    }
}

impl Collector for InstanceHealthGauge {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let metrics: Vec<proto::Metric> = self
            .values()
            .into_iter()
            .map(|(service, version, instance, value)| {
                // by label name, as the crate's own vectors order them
                let labels = [
                    ("instance", instance),
                    ("service", service),
                    ("version", version),
                ]
                .into_iter()
                .map(|(name, value)| {
                    let mut pair = proto::LabelPair::default();
                    pair.set_name(name.to_string());
                    pair.set_value(value);
                    pair
                })
                .collect::<Vec<_>>();
                let mut gauge = proto::Gauge::default();
                gauge.set_value(value as f64);
                let mut m = proto::Metric::default();
                m.set_label(labels);
                m.set_gauge(gauge);
                m
            })
            .collect();
        if metrics.is_empty() {
            // as a vector without children: the family is left out
            return Vec::new();
        }
        let mut family = MetricFamily::default();
        family.set_name(NAME.to_string());
        family.set_help(HELP.to_string());
        family.set_field_type(MetricType::GAUGE);
        family.set_metric(metrics);
        vec![family]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Vec<(&'static str, &'static str, &'static str, bool)>);

    impl InstanceHealthSource for Fixed {
        fn each_instance(&self, f: &mut dyn FnMut(&str, &str, &str, bool)) {
            for (s, v, i, up) in &self.0 {
                f(s, v, i, *up);
            }
        }
    }

    #[test]
    fn renders_one_series_per_instance_from_the_source() {
        let registry = prometheus::Registry::new();
        let gauge = InstanceHealthGauge::new();
        registry.register(Box::new(gauge.clone())).unwrap();
        let render = || {
            let mut out = Vec::new();
            prometheus::Encoder::encode(
                &prometheus::TextEncoder::new(),
                &registry.gather(),
                &mut out,
            )
            .unwrap();
            String::from_utf8(out).unwrap()
        };
        assert_eq!(render(), "", "no source, no family");
        let source: Arc<dyn InstanceHealthSource> = Arc::new(Fixed(vec![
            ("web", "v2", "web-2", false),
            ("web", "-", "web-1", true),
        ]));
        gauge.attach(Arc::downgrade(&source));
        let text = render();
        assert!(
            text.contains("# TYPE laneway_upstream_health gauge"),
            "{text}"
        );
        let series: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            series,
            [
                r#"laneway_upstream_health{instance="web-1",service="web",version="-"} 1"#,
                r#"laneway_upstream_health{instance="web-2",service="web",version="v2"} 0"#,
            ]
        );
        drop(source);
        assert_eq!(render(), "", "a dropped source reports nothing");
    }
}
