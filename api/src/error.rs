//! Every error the HTTP API answers: a status code and a JSON body saying what and where.

use axum::http::header;
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use serde::Serialize;
use tally_raft::ingress::SubmitError;
use tally_raft::node::AdminError;
use tally_raft::node::ReadError;
use tally_raft::types::NodeInfo;
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
    /// The leader's node id, when this node is not the leader and knows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader_id: Option<u64>,
}

/// Set on a redirect answer: the leader's base URL. The `/v1` router's `redirect_to_leader`
/// layer turns it into `Location: <base><path and query of the request>`.
#[derive(Clone, Debug)]
pub struct LeaderRedirect(pub String);

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// Boxed: an `ApiError` travels in every handler's `Result`.
    pub body: Box<ErrorBody>,
    /// Sets `Retry-After`: nothing was accepted and the same request may be sent again.
    pub retry: bool,
    /// 307 to the leader named in `body.leader` (the request's path and query are appended).
    pub redirect: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: Box::new(ErrorBody {
                error: message.into(),
                index: None,
                field: None,
                leader: None,
                leader_id: None,
            }),
            retry: false,
            redirect: false,
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

    /// This node is not the leader. With a leader known (and its HTTP address): 307 to it, the
    /// same path and query; nothing was accepted here, so the client re-sends the same request
    /// there. Without one (an election is under way): 503 + `Retry-After`.
    pub fn not_leader(leader_id: Option<u64>, leader: Option<NodeInfo>) -> ApiError {
        let base = leader.as_ref().and_then(crate::cluster::leader_base);
        match (leader_id, base) {
            (Some(id), Some(base)) => {
                let mut error = ApiError::new(
                    StatusCode::TEMPORARY_REDIRECT,
                    format!(
                        "this node is not the leader; nothing was accepted here: send the same request \
                         to the leader, node {id} at {base}"
                    ),
                );
                error.body.leader = Some(base);
                error.body.leader_id = Some(id);
                error.redirect = true;
                error
            }
            _ => {
                let mut error = ApiError::retryable(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "this node is not the leader and knows no leader yet (an election may be under \
                     way); nothing was accepted: retry later",
                );
                error.body.leader_id = leader_id;
                error
            }
        }
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
            body: Box::new(ErrorBody {
                error: error.message,
                index: error.index,
                field: error.field,
                leader: None,
                leader_id: None,
            }),
            retry: false,
            redirect: false,
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
            SubmitError::NotLeader { leader_id, leader } => ApiError::not_leader(leader_id, leader),
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
            ReadError::NotLeader { leader_id, leader } => ApiError::not_leader(leader_id, leader),
            ReadError::Diverged => ApiError::diverged(),
            ReadError::Failed(reason) => ApiError::retryable(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("read failed: {reason}"),
            ),
        }
    }
}

impl From<AdminError> for ApiError {
    fn from(error: AdminError) -> ApiError {
        match error {
            AdminError::NotLeader { leader_id, leader } => ApiError::not_leader(leader_id, leader),
            AdminError::Rejected(reason) => ApiError::new(
                StatusCode::CONFLICT,
                format!("the cluster refused the change: {reason}"),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let redirect = self
            .body
            .leader
            .clone()
            .filter(|_| self.redirect)
            .map(LeaderRedirect);
        let mut response = (self.status, axum::Json(*self.body)).into_response();
        if let Some(redirect) = redirect {
            response.extensions_mut().insert(redirect);
        }
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
                307,
                false,
                "send the same request to the leader, node 2 at http://10.0.0.2:3000",
            ),
            (
                SubmitError::NotLeader {
                    leader_id: None,
                    leader: None,
                },
                503,
                true,
                "knows no leader yet",
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
            (SubmitError::Diverged, 503, false, "diverged"),
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
