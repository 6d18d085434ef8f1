//! The cluster administration API (`/v1/cluster…`, behind the API token like every `/v1` route).
//!
//! `GET /v1/cluster` is this node's own view and is served by every node. The changes (learners,
//! voters, removal, leadership transfer) are made by the leader: a follower answers 307 to it,
//! like a write. A snapshot is local to the node asked.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::Path;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::delete;
use axum::routing::get;
use axum::routing::post;
use axum::Json;
use axum::Router;
use serde::Deserialize;
use serde::Serialize;
use tally_raft::checkpoint::Checkpoint;
use tally_raft::checkpoint::Divergence;
use tally_raft::node::AdminError;
use tally_raft::node::LedgerStatus;
use tally_raft::node::Node;
use tally_raft::types::NodeId;
use tally_raft::types::NodeInfo;
use utoipa::ToSchema;

use crate::cluster::http_url;
use crate::error::ApiError;
use crate::error::ErrorBody;
use crate::http::AppState;
use crate::limits::ADMIN_CHANGE_TIMEOUT_MS;
use crate::limits::ADMIN_LEARNER_TIMEOUT_MS;
use crate::limits::LEADER_TRANSFER_WAIT_MS;
use crate::limits::READ_TIMEOUT_MS;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/cluster", get(get_cluster))
        .route("/v1/cluster/learners", post(add_learner))
        .route("/v1/cluster/voters", post(change_voters))
        .route("/v1/cluster/members/{id}", delete(remove_member))
        .route("/v1/cluster/leader", post(transfer_leader))
        .route("/v1/cluster/snapshot", post(snapshot))
}

/// One node's view of the cluster and of its own ledger.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterJson {
    pub node_id: NodeId,
    /// `Leader`, `Follower`, `Candidate` or `Learner`.
    pub state: String,
    pub leader_id: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    /// The highest index known committed (on a quorum).
    pub committed_index: Option<u64>,
    /// The highest index applied to this node's ledger.
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    /// A membership change (joint consensus) is in progress.
    pub joint: bool,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    pub members: Vec<MemberJson>,
    /// The last checkpoint (index, state digest, hash chain) this node recorded.
    #[schema(value_type = Option<Object>)]
    pub checkpoint_recorded: Option<Checkpoint>,
    /// The last checkpoint this node verified against the leader's.
    #[schema(value_type = Option<Object>)]
    pub checkpoint_verified: Option<Checkpoint>,
    /// Set when this node found its state differs from the leader's: it stopped serving.
    #[schema(value_type = Option<Object>)]
    pub divergence: Option<Divergence>,
    /// The ledger now: applied index, state digest, hash chain, counts.
    #[schema(value_type = Object)]
    pub ledger: LedgerStatus,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemberJson {
    pub id: NodeId,
    /// `voter` or `learner`.
    pub role: String,
    pub leader: bool,
    pub raft_addr: String,
    pub http_addr: String,
    pub region: String,
    /// On the leader: the highest log index this member is known to hold (null elsewhere).
    pub matched_index: Option<u64>,
    /// On the leader: how many entries this member is behind the leader's log (null elsewhere).
    pub lag: Option<u64>,
}

/// Add a node (started with `tally start --join`) as a learner.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LearnerRequest {
    pub id: NodeId,
    /// The node's peer address, `host:port`, as the other members reach it.
    pub raft_addr: String,
    /// The node's HTTP address, `host:port` or `http://host:port`, as clients reach it.
    pub http_addr: String,
    /// Region label (default `default`).
    #[serde(default)]
    pub region: Option<String>,
}

/// The new set of voters. Each must be a member already (a learner that has caught up).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VotersRequest {
    pub voters: Vec<NodeId>,
    /// Keep removed voters as learners instead of dropping them from the cluster.
    #[serde(default)]
    pub keep_as_learners: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaderRequest {
    /// The voter to hand leadership to.
    pub id: NodeId,
}

/// This node's view of the cluster.
pub async fn cluster_view(node: &Node) -> Result<ClusterJson, ApiError> {
    let timeout = Duration::from_millis(READ_TIMEOUT_MS);
    let ledger = match tokio::time::timeout(timeout, node.ledger_status()).await {
        Ok(outcome) => outcome?,
        Err(_elapsed) => return Err(ApiError::timed_out()),
    };
    let status = node.status();
    let members = status
        .members
        .iter()
        .map(|(id, info)| {
            let progress = status.replication.get(id);
            MemberJson {
                id: *id,
                role: if status.voters.contains(id) {
                    "voter".into()
                } else {
                    "learner".into()
                },
                leader: status.leader_id == Some(*id),
                raft_addr: info.raft_addr.clone(),
                http_addr: info.http_addr.clone(),
                region: info.region.clone(),
                matched_index: progress.and_then(|progress| progress.matched_index),
                lag: progress.map(|progress| progress.lag),
            }
        })
        .collect();
    Ok(ClusterJson {
        node_id: status.node_id,
        state: status.state,
        leader_id: status.leader_id,
        term: status.term,
        last_log_index: status.last_log_index,
        committed_index: status.committed_index,
        // The ledger's own (read on its apply ring), not openraft's: openraft counts an entry
        // applied once it is handed to the ring, a moment before the ledger has applied it.
        applied_index: ledger.applied_index,
        snapshot_index: status.snapshot_index,
        purged_index: status.purged_index,
        joint: status.joint,
        voters: status.voters,
        learners: status.learners,
        members,
        checkpoint_recorded: status.checkpoint_recorded,
        checkpoint_verified: status.checkpoint_verified,
        divergence: status.divergence,
        ledger,
    })
}

/// Refuses (307 to the leader, or 503) unless this node leads.
fn require_leader(node: &Node) -> Result<(), ApiError> {
    let (leader_id, leader) = node.leader();
    if leader_id == Some(node.node_id()) {
        return Ok(());
    }
    Err(ApiError::from(AdminError::NotLeader { leader_id, leader }))
}

fn body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(value)| value)
        .map_err(|rejection| ApiError::new(rejection.status(), rejection.body_text()))
}

async fn bounded<F>(milliseconds: u64, change: F) -> Result<(), ApiError>
where
    F: std::future::Future<Output = Result<(), AdminError>>,
{
    match tokio::time::timeout(Duration::from_millis(milliseconds), change).await {
        Ok(outcome) => Ok(outcome?),
        Err(_elapsed) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!("the change is still in progress after {milliseconds} ms; see GET /v1/cluster"),
        )),
    }
}

/// This node's view: members, leader, term, indexes, lag, checkpoints, divergence, digest.
#[utoipa::path(
    get,
    path = "/v1/cluster",
    responses(
        (status = 200, body = ClusterJson),
        (status = 401, description = "Missing or wrong API token", body = ErrorBody),
    )
)]
pub async fn get_cluster(State(state): State<AppState>) -> Result<Json<ClusterJson>, ApiError> {
    Ok(Json(cluster_view(&state.node).await?))
}

/// Add a node as a learner; answers once it has caught up (snapshot + log).
#[utoipa::path(
    post,
    path = "/v1/cluster/learners",
    request_body = LearnerRequest,
    responses(
        (status = 200, description = "The learner caught up; the new view", body = ClusterJson),
        (status = 307, description = "Not the leader: the same request to the leader", body = ErrorBody),
        (status = 400, body = ErrorBody),
        (status = 409, description = "Refused by the cluster", body = ErrorBody),
        (status = 504, description = "Still catching up; see GET /v1/cluster", body = ErrorBody),
    )
)]
pub async fn add_learner(
    State(state): State<AppState>,
    request: Result<Json<LearnerRequest>, JsonRejection>,
) -> Result<Json<ClusterJson>, ApiError> {
    let request = body(request)?;
    let http_addr = http_url(&request.http_addr).map_err(ApiError::bad_request)?;
    crate::cluster::parse_peers(&format!(
        "{}={}@{}",
        request.id, request.raft_addr, http_addr
    ))
    .map_err(ApiError::bad_request)?;
    require_leader(&state.node)?;
    let info = NodeInfo {
        raft_addr: request.raft_addr,
        http_addr,
        region: request
            .region
            .filter(|region| !region.is_empty())
            .unwrap_or_else(|| crate::cluster::DEFAULT_REGION.to_owned()),
    };
    tracing::info!(id = request.id, %info, "adding a learner");
    bounded(
        ADMIN_LEARNER_TIMEOUT_MS,
        state.node.add_learner(request.id, info),
    )
    .await?;
    Ok(Json(cluster_view(&state.node).await?))
}

/// Make exactly these nodes the voters (joint consensus): promote learners, replace a lost node.
#[utoipa::path(
    post,
    path = "/v1/cluster/voters",
    request_body = VotersRequest,
    responses(
        (status = 200, description = "The change is committed; the new view", body = ClusterJson),
        (status = 307, description = "Not the leader: the same request to the leader", body = ErrorBody),
        (status = 400, body = ErrorBody),
        (status = 409, description = "Refused by the cluster (e.g. a voter that is not a member)", body = ErrorBody),
    )
)]
pub async fn change_voters(
    State(state): State<AppState>,
    request: Result<Json<VotersRequest>, JsonRejection>,
) -> Result<Json<ClusterJson>, ApiError> {
    let request = body(request)?;
    let voters: BTreeSet<NodeId> = request.voters.iter().copied().collect();
    if voters.is_empty() {
        return Err(ApiError::bad_request("a cluster needs at least one voter"));
    }
    require_leader(&state.node)?;
    let members = state.node.status().members;
    if let Some(unknown) = voters.iter().find(|id| !members.contains_key(id)) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("node {unknown} is not a member: add it as a learner first"),
        ));
    }
    tracing::info!(
        ?voters,
        keep_as_learners = request.keep_as_learners,
        "changing voters"
    );
    bounded(
        ADMIN_CHANGE_TIMEOUT_MS,
        state.node.change_voters(voters, request.keep_as_learners),
    )
    .await?;
    Ok(Json(cluster_view(&state.node).await?))
}

/// Remove a node (voter or learner) from the cluster.
#[utoipa::path(
    delete,
    path = "/v1/cluster/members/{id}",
    params(("id" = u64, Path, description = "Node id")),
    responses(
        (status = 200, description = "Removed; the new view", body = ClusterJson),
        (status = 307, description = "Not the leader: the same request to the leader", body = ErrorBody),
        (status = 404, description = "Not a member", body = ErrorBody),
        (status = 409, description = "Refused by the cluster", body = ErrorBody),
    )
)]
pub async fn remove_member(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ClusterJson>, ApiError> {
    let id: NodeId = id
        .parse()
        .map_err(|_| ApiError::bad_request(format!("node id \"{id}\" must be an integer")))?;
    require_leader(&state.node)?;
    let status = state.node.status();
    if !status.members.contains_key(&id) {
        return Err(ApiError::not_found(format!("node {id} is not a member")));
    }
    if status.voters == [id] {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("node {id} is the only voter"),
        ));
    }
    tracing::info!(id, "removing a member");
    bounded(ADMIN_CHANGE_TIMEOUT_MS, state.node.remove_node(id)).await?;
    Ok(Json(cluster_view(&state.node).await?))
}

/// Hand leadership to another voter; answers once it leads (or 504).
#[utoipa::path(
    post,
    path = "/v1/cluster/leader",
    request_body = LeaderRequest,
    responses(
        (status = 200, description = "The node leads; the view of the node asked", body = ClusterJson),
        (status = 307, description = "Not the leader: the same request to the leader", body = ErrorBody),
        (status = 409, description = "Not a voter", body = ErrorBody),
        (status = 504, description = "Requested, but the node did not take over in time", body = ErrorBody),
    )
)]
pub async fn transfer_leader(
    State(state): State<AppState>,
    request: Result<Json<LeaderRequest>, JsonRejection>,
) -> Result<Json<ClusterJson>, ApiError> {
    let request = body(request)?;
    let node = &state.node;
    if node.status().leader_id == Some(request.id) {
        return Ok(Json(cluster_view(node).await?));
    }
    require_leader(node)?;
    tracing::info!(to = request.id, "transferring leadership");
    bounded(ADMIN_CHANGE_TIMEOUT_MS, node.transfer_leader(request.id)).await?;
    let target = request.id;
    let taken_over = node
        .raft()
        .wait(Some(Duration::from_millis(LEADER_TRANSFER_WAIT_MS)))
        .metrics(
            |metrics| metrics.current_leader == Some(target),
            "the new leader",
        )
        .await
        .is_ok();
    if !taken_over {
        return Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "leadership transfer to node {target} requested, but it did not take over within \
                 {LEADER_TRANSFER_WAIT_MS} ms; see GET /v1/cluster"
            ),
        ));
    }
    Ok(Json(cluster_view(node).await?))
}

/// Take a snapshot on this node now (in the background) and purge the log behind it.
#[utoipa::path(
    post,
    path = "/v1/cluster/snapshot",
    responses(
        (status = 202, description = "Triggered; the view before it completes", body = ClusterJson),
        (status = 409, body = ErrorBody),
    )
)]
pub async fn snapshot(
    State(state): State<AppState>,
) -> Result<(StatusCode, Json<ClusterJson>), ApiError> {
    bounded(ADMIN_CHANGE_TIMEOUT_MS, state.node.trigger_snapshot()).await?;
    Ok((StatusCode::ACCEPTED, Json(cluster_view(&state.node).await?)))
}
