//! JSON error answers of the admin API: `{"error": "…"}` with the right status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::allocation::lanes::LaneError;
use crate::allocation::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

impl From<LaneError> for ApiError {
    fn from(e: LaneError) -> ApiError {
        let status = match &e {
            LaneError::Invalid(_) => StatusCode::BAD_REQUEST,
            LaneError::Conflict(_) => StatusCode::CONFLICT,
            LaneError::NotFound(_) => StatusCode::NOT_FOUND,
            LaneError::Allocation { source, .. } if source.is_conflict() => StatusCode::CONFLICT,
            LaneError::Allocation { .. } => StatusCode::BAD_REQUEST,
            LaneError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            LaneError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError {
            status,
            message: e.to_string(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        ApiError::internal(e.to_string())
    }
}
