//! Every error the HTTP API answers: a status code and a JSON body saying what and where.

use axum::http::header;
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use serde::Serialize;
use tally_raft::ingress::SubmitError;
use tally_raft::node::ReadError;
use utoipa::ToSchema;

use crate::json::InputError;
use crate::limits::RETRY_AFTER_SECONDS;

/// The body of every 4xx and 5xx answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What is wrong, in one sentence.
    pub error: String,
    /// The index of the offending event in the request's array, when one is to blame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// The offending field or query parameter, when one is to blame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The leader's HTTP address, when this node is not the leader.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
    /// Sets `Retry-After`: nothing was accepted and the same request may be sent again.
    pub retry: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: ErrorBody {
                error: message.into(),
                index: None,
                field: None,
                leader: None,
            },
            retry: false,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    fn retryable(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            retry: true,
            ..ApiError::new(status, message)
        }
    }

    fn not_leader(leader_http_addr: Option<String>) -> ApiError {
        let mut error = ApiError::retryable(
            StatusCode::SERVICE_UNAVAILABLE,
            match &leader_http_addr {
                Some(address) => {
                    format!("this node is not the leader; send to the leader at {address}")
                }
                None => {
                    "this node is not the leader and knows no leader yet; retry later".to_owned()
                }
            },
        );
        error.body.leader = leader_http_addr;
        error
    }

    /// The node stopped serving because its state differs from the leader's: nothing was
    /// accepted here, and retrying on this node will not help.
    fn diverged() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node's state diverged from the leader's and it no longer serves; nothing was accepted: \
             send to another node",
        )
    }

    pub fn timed_out() -> ApiError {
        ApiError::retryable(
            StatusCode::GATEWAY_TIMEOUT,
            "no answer in time; the outcome is unknown: retrying with the same ids is safe",
        )
    }
}

impl From<InputError> for ApiError {
    fn from(error: InputError) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            body: ErrorBody {
                error: error.message,
                index: error.index,
                field: error.field,
                leader: None,
            },
            retry: false,
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(error: SubmitError) -> ApiError {
        match error {
            SubmitError::Busy => ApiError::retryable(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is busy; nothing was accepted, retry later",
            ),
            SubmitError::NotLeader { leader, .. } => ApiError::not_leader(leader.map(|info| info.http_addr)),
            SubmitError::Invalid(reason) => ApiError::bad_request(reason),
            SubmitError::Unknown(reason) => ApiError::retryable(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the outcome is unknown ({reason}); retrying with the same ids is safe"),
            ),
            SubmitError::Diverged => ApiError::diverged(),
            SubmitError::ShuttingDown => ApiError::retryable(
                StatusCode::SERVICE_UNAVAILABLE,
                "the node is shutting down; the outcome is unknown: retrying with the same ids is safe",
            ),
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(error: ReadError) -> ApiError {
        match error {
            ReadError::NotLeader { leader, .. } => {
                ApiError::not_leader(leader.map(|info| info.http_addr))
            }
            ReadError::Diverged => ApiError::diverged(),
            ReadError::Failed(reason) => ApiError::retryable(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("read failed: {reason}"),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body)).into_response();
        if self.retry {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (pipeline error, status, Retry-After expected, message substring)
    fn submit_cases() -> Vec<(SubmitError, u16, bool, &'static str)> {
        vec![
            (SubmitError::Busy, 503, true, "nothing was accepted"),
            (
                SubmitError::NotLeader {
                    leader_id: Some(2),
                    leader: Some(tally_raft::types::NodeInfo {
                        raft_addr: "10.0.0.2:4000".into(),
                        http_addr: "http://10.0.0.2:3000".into(),
                        region: "eu".into(),
                    }),
                },
                503,
                true,
                "send to the leader at http://10.0.0.2:3000",
            ),
            (
                SubmitError::Invalid("bad batch".into()),
                400,
                false,
                "bad batch",
            ),
            (
                SubmitError::Unknown("leader changed".into()),
                503,
                true,
                "retrying with the same ids is safe",
            ),
            (
                SubmitError::ShuttingDown,
                503,
                true,
                "retrying with the same ids is safe",
            ),
            (SubmitError::Diverged, 503, false, "no longer serves"),
        ]
    }

    #[test]
    fn pipeline_errors_map_to_statuses_and_retry_hints() {
        for (error, status, retry, message) in submit_cases() {
            let case = format!("{error:?}");
            let api_error = ApiError::from(error);
            assert!(
                api_error.body.error.contains(message),
                "{case}: {}",
                api_error.body.error
            );
            let response = api_error.into_response();
            assert_eq!(response.status().as_u16(), status, "{case}");
            assert_eq!(
                response.headers().contains_key(header::RETRY_AFTER),
                retry,
                "{case}"
            );
        }
    }
}
