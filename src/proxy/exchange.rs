//! The exchange core both HTTP engines share: what a failed upstream
//! exchange answers (status, body, metric label), the answers laneway gives
//! itself (LVS health, 413), and the retry decisions. Request path, no I/O:
//! an engine only reads and writes bytes and asks this module what to do,
//! so a request gets the same answer whichever engine carries it.

use std::net::SocketAddr;

use super::plan::LocalResponse;
use super::ProxySettings;
use crate::routing::snapshot::Target;

/// Why an upstream exchange failed, named the same way by both engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// Every instance of the version was tried and none accepted.
    NoInstanceConnected,
    ConnectFailed,
    ConnectTimedOut,
    /// Writing the request head failed.
    SendFailed,
    /// Streaming the request body upstream failed.
    SendBodyFailed,
    /// The upstream closed the connection before any byte of an answer.
    ClosedBeforeAnswer,
    /// The upstream reset the connection before any byte of an answer.
    ResetBeforeAnswer,
    /// Reading the response failed after some of it arrived.
    ReadFailed,
    /// `read_timeout` or `write_timeout` passed.
    TimedOut,
    /// The response head breaks HTTP/1.1 framing (RFC 9112): conflicting
    /// lengths, an invalid status line, a forbidden field.
    MalformedResponse,
    /// A 101 to a request that asked for no upgrade.
    UnexpectedSwitch,
    /// The request body grew past `[proxy] max_body_size`.
    BodyTooLarge,
    /// The request's chunked body broke its grammar.
    MalformedRequestBody,
    /// The client went away; nothing can be answered.
    ClientGone,
}

impl UpstreamFailure {
    /// The status sent to the client (`0`: nothing is sent).
    pub fn status(self) -> u16 {
        use UpstreamFailure::*;
        match self {
            ConnectTimedOut | TimedOut => 504,
            BodyTooLarge => 413,
            MalformedRequestBody => 400,
            ClientGone => 0,
            NoInstanceConnected | ConnectFailed | SendFailed | SendBodyFailed
            | ClosedBeforeAnswer | ResetBeforeAnswer | ReadFailed | MalformedResponse
            | UnexpectedSwitch => 502,
        }
    }

    /// What failed, as the error body and the access log say it.
    pub fn what(self) -> &'static str {
        use UpstreamFailure::*;
        match self {
            NoInstanceConnected => "every instance failed to connect",
            ConnectFailed => "connect failed",
            ConnectTimedOut => "connect timed out",
            SendFailed => "sending the request failed",
            SendBodyFailed => "sending the request body failed",
            ClosedBeforeAnswer => "upstream closed the connection before answering",
            ResetBeforeAnswer => "upstream reset the connection before answering",
            ReadFailed => "reading the response failed",
            TimedOut => "upstream timed out",
            MalformedResponse => "malformed response head",
            UnexpectedSwitch => "unexpected 101 response",
            BodyTooLarge => "request body too large",
            MalformedRequestBody => "malformed chunked request body",
            ClientGone => "client closed the connection",
        }
    }

    /// Whether the instance is to blame (counted for passive ejection).
    pub fn upstream_fault(self) -> bool {
        use UpstreamFailure::*;
        !matches!(self, BodyTooLarge | MalformedRequestBody | ClientGone)
    }

    /// The local answer for this failure, naming lane, service, version and
    /// upstream; `None` when nothing is to be sent.
    pub fn response(
        self,
        settings: &ProxySettings,
        lane: &str,
        target: Option<&Target>,
        upstream: Option<SocketAddr>,
    ) -> Option<LocalResponse> {
        match self {
            UpstreamFailure::ClientGone => None,
            UpstreamFailure::BodyTooLarge => Some(too_large(settings)),
            _ => Some(LocalResponse::text(
                self.status(),
                "upstream_error",
                upstream_error_body(lane, target, upstream, self.what()),
            )),
        }
    }
}

/// The answer to the LVS health path.
pub fn health_response(settings: &ProxySettings) -> LocalResponse {
    match settings.health.health() {
        Ok(()) => LocalResponse::text(200, "health", "ok\n".to_string()),
        Err(why) => LocalResponse::text(503, "health", format!("{why}\n")),
    }
}

/// The 413 for a body larger than `[proxy] max_body_size`.
pub fn too_large(settings: &ProxySettings) -> LocalResponse {
    LocalResponse::text(
        413,
        "body_too_large",
        body_too_large(settings.max_body_size.unwrap_or(0)),
    )
}

/// The 413 when a request announces a body larger than `[proxy]
/// max_body_size` (`Content-Length`); `None` when it may go on.
pub fn announced_too_large(settings: &ProxySettings, length: Option<u64>) -> Option<LocalResponse> {
    match (settings.max_body_size, length) {
        (Some(max), Some(n)) if n > max => Some(too_large(settings)),
        _ => None,
    }
}

/// The body of a 413.
pub fn body_too_large(max: u64) -> String {
    format!("laneway: request body larger than [proxy] max_body_size ({max} bytes)\n")
}

/// The body of a 502/504 naming lane, service, version and upstream.
pub fn upstream_error_body(
    lane: &str,
    target: Option<&Target>,
    upstream: Option<SocketAddr>,
    what: &str,
) -> String {
    match target {
        Some(t) => format!(
            "laneway: lane \"{lane}\": service \"{}\" version \"{}\": upstream {} failed: {what}\n",
            t.service,
            t.version,
            upstream.map_or_else(|| "-".to_string(), |a| a.to_string()),
        ),
        None => format!("laneway: {what}\n"),
    }
}

/// Whether a failed connect is tried again on another instance: while
/// instances are left untried and `[proxy] connect_retries` allows.
pub fn retry_connect(
    settings: &ProxySettings,
    connect_failures: usize,
    tries: usize,
    instances: usize,
) -> bool {
    connect_failures <= settings.connect_retries && tries < instances
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_names_itself_and_maps_to_one_status() {
        use UpstreamFailure::*;
        for f in [
            NoInstanceConnected,
            ConnectFailed,
            ConnectTimedOut,
            SendFailed,
            SendBodyFailed,
            ClosedBeforeAnswer,
            ResetBeforeAnswer,
            ReadFailed,
            TimedOut,
            MalformedResponse,
            UnexpectedSwitch,
            BodyTooLarge,
            MalformedRequestBody,
        ] {
            assert!(!f.what().is_empty());
            assert!(matches!(f.status(), 400 | 413 | 502 | 504), "{f:?}");
        }
        assert_eq!(TimedOut.status(), 504);
        assert!(TimedOut.what().contains("timed out"));
        assert_eq!(ClientGone.status(), 0);
        assert!(!BodyTooLarge.upstream_fault());
        assert!(ClosedBeforeAnswer.upstream_fault());
    }
}
