//! Responses laneway writes itself (returns, redirects, 404, 503, upstream
//! errors), on the request path.

use bytes::Bytes;
use http::header::{HeaderName, CONTENT_LENGTH, CONTENT_TYPE};
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use super::{Ctx, ProxySettings, X_LANEWAY_VERSION};

/// A response produced by laneway rather than an upstream.
pub struct LocalResponse {
    pub status: u16,
    /// Metric label: why laneway answered.
    pub reason: &'static str,
    pub body: Bytes,
    pub headers: Vec<(HeaderName, String)>,
}

impl LocalResponse {
    pub fn text(status: u16, reason: &'static str, body: String) -> LocalResponse {
        LocalResponse {
            status,
            reason,
            body: Bytes::from(body),
            headers: vec![(CONTENT_TYPE, "text/plain; charset=utf-8".to_string())],
        }
    }

    pub async fn send(
        self,
        session: &mut Session,
        ctx: &Ctx,
        settings: &ProxySettings,
    ) -> Result<()> {
        let mut resp = ResponseHeader::build(self.status, Some(self.headers.len() + 4))?;
        for (name, value) in self.headers {
            resp.append_header(name, value)?;
        }
        if settings.response_headers {
            if let Some(lane) = &ctx.lane {
                resp.insert_header(settings.lanes.header.clone(), &*lane.name)?;
            }
            if let Some(t) = &ctx.target {
                resp.insert_header(X_LANEWAY_VERSION.clone(), &*t.version)?;
            }
        }
        resp.insert_header(CONTENT_LENGTH, self.body.len())?;
        let head_only = session.req_header().method == http::Method::HEAD;
        let empty = self.body.is_empty() || head_only;
        session.write_response_header(Box::new(resp), empty).await?;
        if !empty {
            session.write_response_body(Some(self.body), true).await?;
        }
        Ok(())
    }
}
