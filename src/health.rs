//! The life of a laneway instance as LVS sees it: ready once the first
//! snapshot serves, out of the pool while in maintenance or draining after
//! SIGTERM, and the count of requests in flight that a shutdown waits for.
//! Read on the request path (atomics only), written by the control plane.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Shared health state of this instance.
#[derive(Debug, Default)]
pub struct InstanceHealth {
    ready: AtomicBool,
    maintenance: AtomicBool,
    draining: AtomicBool,
    in_flight: AtomicUsize,
}

impl InstanceHealth {
    pub fn new() -> InstanceHealth {
        InstanceHealth::default()
    }

    /// `Ok` when LVS should send traffic here, else the reason it should not.
    pub fn health(&self) -> Result<(), &'static str> {
        if self.draining.load(Ordering::Relaxed) {
            Err("draining: shutting down")
        } else if self.maintenance.load(Ordering::Relaxed) {
            Err("maintenance")
        } else if !self.ready.load(Ordering::Relaxed) {
            Err("not ready: no snapshot built yet")
        } else {
            Ok(())
        }
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn set_maintenance(&self, on: bool) {
        self.maintenance.store(on, Ordering::Relaxed);
    }

    pub fn maintenance(&self) -> bool {
        self.maintenance.load(Ordering::Relaxed)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard drops.
    pub fn request(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// A request in flight; see [`InstanceHealth::request`].
pub struct InFlight<'a>(&'a InstanceHealth);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request in flight that owns its reference to the health, for
/// per-request state that must be `'static` (the Pingora engine's context).
pub struct InFlightOwned(std::sync::Arc<InstanceHealth>);

impl InFlightOwned {
    pub fn new(health: &std::sync::Arc<InstanceHealth>) -> InFlightOwned {
        health.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightOwned(health.clone())
    }
}

impl Drop for InFlightOwned {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_reasons_in_order_of_importance() {
        let l = InstanceHealth::new();
        assert_eq!(l.health(), Err("not ready: no snapshot built yet"));
        l.set_ready();
        assert_eq!(l.health(), Ok(()));
        l.set_maintenance(true);
        assert_eq!(l.health(), Err("maintenance"));
        l.start_draining();
        assert_eq!(l.health(), Err("draining: shutting down"));
    }

    #[test]
    fn in_flight_counts_guards() {
        let l = InstanceHealth::new();
        let a = l.request();
        let b = l.request();
        assert_eq!(l.in_flight(), 2);
        drop(a);
        assert_eq!(l.in_flight(), 1);
        drop(b);
        assert_eq!(l.in_flight(), 0);
    }
}
