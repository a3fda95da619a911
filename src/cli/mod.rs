//! Command-line clients of a running laneway (not the request path, not
//! the control plane): `laneway lane …` talks to the admin API.

pub mod lane;
