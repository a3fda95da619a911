//! Command-line clients of a running laneway (not the request path, not
//! the control plane): `laneway lane …` and `laneway explain …` talk to the
//! admin API.

pub mod explain;
pub mod lane;
