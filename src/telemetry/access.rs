//! The access log as JSON lines (`[log] access_format = "json"`): a
//! `tracing` layer that takes the events of target `laneway::access` and
//! writes one JSON object per request to stderr, with the fields listed in
//! `[log] access_fields`, in that order. Runs on the request path only when
//! the access log is on, after the response is sent.
//!
//! Why a layer of our own: tracing-subscriber's JSON formatter writes every
//! field of an event plus its own keys (`timestamp`, `level`, `target`,
//! `fields`), with no way to choose or order them per target.

use std::fmt;
use std::io::Write;

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

use super::ACCESS_LOG_TARGET;

/// Every field an access-log line can have.
pub const ACCESS_FIELDS: [&str; 15] = [
    "ts",
    "client",
    "method",
    "host",
    "uri",
    "lane",
    "lane_source",
    "service",
    "version",
    "upstream",
    "tries",
    "local",
    "status",
    "duration_ms",
    "upstream_ms",
];

/// The fields written when `[log] access_fields` is not set.
pub const ACCESS_FIELDS_DEFAULT: [&str; 13] = [
    "ts",
    "client",
    "method",
    "host",
    "uri",
    "lane",
    "lane_source",
    "service",
    "version",
    "upstream",
    "status",
    "duration_ms",
    "upstream_ms",
];

/// Writes access-log events as JSON lines of the chosen fields.
pub struct JsonAccessLayer {
    fields: Box<[Box<str>]>,
    with_ts: bool,
}

impl JsonAccessLayer {
    pub fn new(fields: &[String]) -> JsonAccessLayer {
        JsonAccessLayer {
            fields: fields.iter().map(|f| Box::from(f.as_str())).collect(),
            with_ts: fields.iter().any(|f| f == "ts"),
        }
    }
}

struct Collect<'a> {
    names: &'a [Box<str>],
    values: Vec<Option<Value>>,
}

impl Collect<'_> {
    fn put(&mut self, field: &Field, value: impl FnOnce() -> Value) {
        if let Some(i) = self.names.iter().position(|n| **n == *field.name()) {
            self.values[i] = Some(value());
        }
    }
}

impl Visit for Collect<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        // three decimals are enough for milliseconds
        self.put(field, || {
            serde_json::Number::from_f64((value * 1000.0).round() / 1000.0)
                .map_or(Value::Null, Value::Number)
        });
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, || Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, || Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, || Value::from(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, || Value::from(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, || Value::from(format!("{value:?}")));
    }
}

impl<S: Subscriber> Layer<S> for JsonAccessLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != ACCESS_LOG_TARGET {
            return;
        }
        let mut c = Collect {
            names: &self.fields,
            values: vec![None; self.fields.len()],
        };
        event.record(&mut c);
        // written by hand: a serde_json map would sort the keys
        let mut line = String::with_capacity(64 * self.fields.len());
        line.push('{');
        for (i, (name, value)) in self.fields.iter().zip(c.values).enumerate() {
            let value = match value {
                Some(v) => v,
                None if self.with_ts && &**name == "ts" => Value::from(
                    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
                ),
                None => Value::Null,
            };
            if i > 0 {
                line.push(',');
            }
            line.push_str(&Value::from(&**name).to_string());
            line.push(':');
            line.push_str(&value.to_string());
        }
        line.push_str("}\n");
        // one write per line, so lines of two workers never interleave
        let _ = std::io::stderr().lock().write_all(line.as_bytes()); // stderr gone: nowhere to report it
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    /// Records what the visitor collected for the fields `status`, `lane`
    /// and `missing`.
    struct Probe(Arc<Mutex<Vec<Option<Value>>>>);

    impl<S: Subscriber> Layer<S> for Probe {
        fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
            let names: Vec<Box<str>> = vec!["status".into(), "lane".into(), "missing".into()];
            let mut c = Collect {
                names: &names,
                values: vec![None; 3],
            };
            event.record(&mut c);
            *self.0.lock().unwrap() = c.values;
        }
    }

    #[test]
    fn the_chosen_fields_are_collected_in_their_order() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(Probe(seen.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: ACCESS_LOG_TARGET, lane = "t-1", status = 200u64, method = "GET");
        });
        assert_eq!(
            *seen.lock().unwrap(),
            vec![Some(Value::from(200)), Some(Value::from("t-1")), None]
        );
    }
}
