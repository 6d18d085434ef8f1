//! The HTTP API: routes, handlers, the token check and per-route metrics.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::rejection::QueryRejection;
use axum::extract::DefaultBodyLimit;
use axum::extract::MatchedPath;
use axum::extract::Path;
use axum::extract::Query;
use axum::extract::Request;
use axum::extract::State;
use axum::http::header;
use axum::http::HeaderMap;
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::get;
use axum::routing::post;
use axum::Json;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde::Serialize;
use subtle::ConstantTimeEq;
use tally_engine::limits::BATCH_EVENTS_MAX;
use tally_engine::limits::EVENT_SIZE;
use tally_engine::limits::QUERY_RESULTS_MAX;
use tally_engine::AccountFilter;
use tally_engine::EventResult;
use tally_engine::Operation;
use tally_raft::node::LedgerStatus;
use tally_raft::node::Node;
use tally_raft::node::NodeStatus;
use utoipa::IntoParams;
use utoipa::OpenApi;
use utoipa::ToSchema;
use utoipa_swagger_ui::SwaggerUi;
use zerocopy::IntoBytes;

use crate::error::ApiError;
use crate::error::ErrorBody;
use crate::error::LeaderRedirect;
use crate::json;
use crate::json::AccountJson;
use crate::json::BalanceJson;
use crate::json::EventResultJson;
use crate::json::InputError;
use crate::json::TransferJson;
use crate::limits::BINARY_BODY_SIZE_MAX;
use crate::limits::JSON_BODY_SIZE_MAX;
use crate::limits::READ_TIMEOUT_MS;
use crate::limits::SUBMIT_TIMEOUT_MS;

const BINARY_CONTENT_TYPE: &str = "application/octet-stream";

#[derive(Clone)]
pub struct AppState {
    pub node: Node,
    pub metrics: PrometheusHandle,
    /// When set, every `/v1` call must carry `Authorization: Bearer <token>`.
    pub api_token: Option<Arc<[u8]>>,
    /// Whether this node has caught up since it started (`/healthz`).
    pub readiness: Arc<Readiness>,
}

/// A node is ready once it has applied what was committed when it first knew a leader after
/// starting: until then its reads wait for the log to be re-applied and its status shows a
/// partial ledger. The mark is fixed at that first sight, so a follower that always trails a
/// loaded leader by a few entries still reaches it; once reached, the node stays ready.
#[derive(Debug)]
pub struct Readiness {
    /// The committed index to reach (`u64::MAX`: no leader seen yet).
    mark: std::sync::atomic::AtomicU64,
    ready: std::sync::atomic::AtomicBool,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            mark: std::sync::atomic::AtomicU64::new(u64::MAX),
            ready: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl Readiness {
    /// Whether the node is ready, given what it has applied and what is committed now (with a
    /// leader known).
    pub fn check(&self, applied: Option<u64>, committed: Option<u64>) -> bool {
        use std::sync::atomic::Ordering;
        if self.ready.load(Ordering::Relaxed) {
            return true;
        }
        let Some(committed) = committed else {
            return false;
        };
        let mark = match self.mark.compare_exchange(
            u64::MAX,
            committed,
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => committed,
            Err(mark) => mark,
        };
        let ready = applied.is_some_and(|applied| applied >= mark);
        if ready {
            self.ready.store(true, Ordering::Relaxed);
        }
        ready
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tally",
        description = "A financial ledger. u128 ids and amounts are decimal strings; every integer \
                       field also accepts an exact JSON integer. Writes accept JSON arrays or, with \
                       `Content-Type: application/octet-stream`, 128-byte little-endian records \
                       (binary answers: 16-byte records index u32, status u32, timestamp u64)."
    ),
    paths(
        create_accounts,
        create_transfers,
        get_account,
        get_transfer,
        get_account_transfers,
        get_account_balances,
        status,
        healthz,
        metrics_text,
        crate::admin::get_cluster,
        crate::admin::add_learner,
        crate::admin::change_voters,
        crate::admin::remove_member,
        crate::admin::transfer_leader,
        crate::admin::snapshot
    ),
    components(schemas(
        AccountJson,
        TransferJson,
        BalanceJson,
        EventResultJson,
        ErrorBody,
        StatusJson,
        crate::admin::ClusterJson,
        crate::admin::MemberJson,
        crate::admin::LearnerRequest,
        crate::admin::VotersRequest,
        crate::admin::LeaderRequest
    )),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::HttpAuthScheme;
        use utoipa::openapi::security::HttpBuilder;
        use utoipa::openapi::security::SecurityScheme;
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The whole router: `/v1` (token-checked when a token is set), health, metrics, docs.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/v1/accounts", post(create_accounts))
        .route("/v1/transfers", post(create_transfers))
        .route("/v1/accounts/{id}", get(get_account))
        .route("/v1/transfers/{id}", get(get_transfer))
        .route("/v1/accounts/{id}/transfers", get(get_account_transfers))
        .route("/v1/accounts/{id}/balances", get(get_account_balances))
        .route("/v1/status", get(status))
        .merge(crate::admin::routes())
        .route_layer(axum::middleware::from_fn(redirect_to_leader))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ));
    Router::new()
        .merge(v1)
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .merge(SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()))
        .route_layer(axum::middleware::from_fn(track_metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(JSON_BODY_SIZE_MAX))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route; see /openapi.json or /docs")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route; see /openapi.json or /docs",
    )
}

async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(expected) = &state.api_token else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| bearer_token(value.as_bytes()));
    match presented {
        Some(token) if bool::from(token.ct_eq(expected)) => next.run(request).await,
        Some(_) => unauthorized("the API token is wrong"),
        None => {
            unauthorized("this server needs an API token: send `Authorization: Bearer <token>`")
        }
    }
}

/// A handler answering "not the leader, and the leader is known" sets [`LeaderRedirect`]; this
/// layer adds `Location: <leader base URL><the request's path and query>` to that 307.
async fn redirect_to_leader(request: Request, next: Next) -> Response {
    let path_and_query = request.uri().path_and_query().map_or_else(
        || request.uri().path().to_owned(),
        |value| value.as_str().to_owned(),
    );
    let mut response = next.run(request).await;
    if let Some(LeaderRedirect(base)) = response.extensions_mut().remove::<LeaderRedirect>() {
        if let Ok(location) = HeaderValue::from_str(&format!("{base}{path_and_query}")) {
            response.headers_mut().insert(header::LOCATION, location);
        }
    }
    response
}

/// The token of an `Authorization: Bearer <token>` header (the scheme name is case-insensitive).
fn bearer_token(header_value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer ";
    let (scheme, token) = header_value.split_at_checked(SCHEME.len())?;
    scheme.eq_ignore_ascii_case(SCHEME).then_some(token)
}

fn unauthorized(message: &str) -> Response {
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

async fn track_metrics(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!("tally_http_request_seconds", "method" => method.clone(), "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("tally_http_requests_total", "method" => method, "route" => route, "status" => status)
        .increment(1);
    response
}

/// Create accounts: a JSON array of up to 8189 accounts, or 128-byte binary records.
#[utoipa::path(
    post,
    path = "/v1/accounts",
    request_body(content(
        (Vec<AccountJson> = "application/json"),
        (Vec<u8> = "application/octet-stream")
    ), description = "Minimal account: {\"id\":\"1\",\"ledger\":1,\"code\":1}. All fields optional (0)."),
    responses(
        (status = 200, description = "One result per event, in order", body = Vec<EventResultJson>),
        (status = 400, description = "Bad input; nothing was submitted", body = ErrorBody),
        (status = 401, description = "Missing or wrong API token", body = ErrorBody),
        (status = 307, description = "Not the leader: nothing was accepted; send the same request to \
                                       the leader (Location; the body names its id)", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 503, description = "Busy, or no leader known (Retry-After): nothing was accepted; \
                                       or this node diverged (no Retry-After)", body = ErrorBody),
    )
)]
async fn create_accounts(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    create(&state.node, Operation::CreateAccounts, &headers, body).await
}

/// Create transfers: a JSON array of up to 8189 transfers, or 128-byte binary records.
#[utoipa::path(
    post,
    path = "/v1/transfers",
    request_body(content(
        (Vec<TransferJson> = "application/json"),
        (Vec<u8> = "application/octet-stream")
    ), description = "Minimal transfer: {\"id\":\"10\",\"debit_account_id\":\"1\",\"credit_account_id\":\"2\",\
                      \"amount\":\"100\",\"ledger\":1,\"code\":1}. All fields optional (0)."),
    responses(
        (status = 200, description = "One result per event, in order", body = Vec<EventResultJson>),
        (status = 400, description = "Bad input; nothing was submitted", body = ErrorBody),
        (status = 401, description = "Missing or wrong API token", body = ErrorBody),
        (status = 307, description = "Not the leader: nothing was accepted; send the same request to \
                                       the leader (Location; the body names its id)", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 503, description = "Busy, or no leader known (Retry-After): nothing was accepted; \
                                       or this node diverged (no Retry-After)", body = ErrorBody),
    )
)]
async fn create_transfers(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    create(&state.node, Operation::CreateTransfers, &headers, body).await
}

async fn create(
    node: &Node,
    operation: Operation,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(body_rejection)?;
    if is_binary(headers)? {
        check_binary(&body)?;
        let results = submit(node, operation, body).await?;
        return Ok((
            [(header::CONTENT_TYPE, BINARY_CONTENT_TYPE)],
            results.as_bytes().to_vec(),
        )
            .into_response());
    }
    let events = match operation {
        Operation::CreateAccounts => {
            Bytes::from(json::accounts_from_json(&body)?.as_bytes().to_vec())
        }
        Operation::CreateTransfers => {
            Bytes::from(json::transfers_from_json(&body)?.as_bytes().to_vec())
        }
    };
    let results = submit(node, operation, events).await?;
    let results: Vec<EventResultJson> = results
        .iter()
        .map(|result| json::result_json(operation, result))
        .collect();
    Ok(Json(results).into_response())
}

fn body_rejection(rejection: BytesRejection) -> ApiError {
    let status = rejection.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(
            status,
            format!(
                "the body is larger than {JSON_BODY_SIZE_MAX} bytes (JSON) or {BINARY_BODY_SIZE_MAX} bytes \
                 (binary): send at most {BATCH_EVENTS_MAX} events per request"
            ),
        );
    }
    ApiError::new(
        status,
        format!("cannot read the body: {}", rejection.body_text()),
    )
}

/// JSON unless the content type says octet-stream; anything else but JSON is refused.
fn is_binary(headers: &HeaderMap) -> Result<bool, ApiError> {
    let Some(content_type) = headers.get(header::CONTENT_TYPE) else {
        return Ok(false);
    };
    let content_type = content_type
        .to_str()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let essence = content_type.split(';').next().unwrap_or("").trim();
    match essence {
        BINARY_CONTENT_TYPE => Ok(true),
        "application/json" | "" => Ok(false),
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("unsupported content type \"{other}\": send application/json or {BINARY_CONTENT_TYPE}"),
        )),
    }
}

fn check_binary(body: &Bytes) -> Result<(), ApiError> {
    if body.len() > BINARY_BODY_SIZE_MAX {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "a binary body of {} bytes is more than {BATCH_EVENTS_MAX} records of {EVENT_SIZE} bytes \
                 ({BINARY_BODY_SIZE_MAX} bytes)",
                body.len()
            ),
        ));
    }
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "the binary body is empty: send at least one 128-byte record",
        ));
    }
    if body.len() % EVENT_SIZE != 0 {
        return Err(ApiError::bad_request(format!(
            "a binary body of {} bytes is not a whole number of {EVENT_SIZE}-byte records ({} records and {} \
             bytes left over)",
            body.len(),
            body.len() / EVENT_SIZE,
            body.len() % EVENT_SIZE
        )));
    }
    Ok(())
}

async fn submit(
    node: &Node,
    operation: Operation,
    events: Bytes,
) -> Result<Vec<EventResult>, ApiError> {
    let timeout = Duration::from_millis(SUBMIT_TIMEOUT_MS);
    match tokio::time::timeout(timeout, node.submit(operation, events)).await {
        Ok(outcome) => Ok(outcome?),
        Err(_elapsed) => Err(ApiError::timed_out()),
    }
}

/// A read: linearizable (confirmed with the leader; a follower redirects to it) unless `stale`,
/// which serves this node's applied state as it is.
async fn read<T, F>(node: &Node, stale: bool, query: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&tally_engine::Ledger) -> T + Send + 'static,
{
    let timeout = Duration::from_millis(READ_TIMEOUT_MS);
    let outcome = if stale {
        tokio::time::timeout(timeout, node.read_local(query)).await
    } else {
        tokio::time::timeout(timeout, node.read(query)).await
    };
    match outcome {
        Ok(outcome) => Ok(outcome?),
        Err(_elapsed) => Err(ApiError::timed_out()),
    }
}

/// The query of a single lookup.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReadQuery {
    /// `true`: answer from this node's applied state without asking the leader (may be stale;
    /// served by followers too). Default `false`: linearizable, a follower redirects (307).
    stale: Option<String>,
}

fn parse_stale(text: Option<&str>) -> Result<bool, ApiError> {
    match text {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(InputError::field("stale", "must be true or false").into()),
    }
}

fn read_query(query: Result<Query<ReadQuery>, QueryRejection>) -> Result<bool, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    parse_stale(query.stale.as_deref())
}

fn path_id(text: &str) -> Result<u128, ApiError> {
    json::parse_u128(text).map_err(|problem| ApiError::from(InputError::field("id", &problem)))
}

/// One account by id.
#[utoipa::path(
    get,
    path = "/v1/accounts/{id}",
    params(("id" = String, Path, description = "Account id (u128, decimal)"), ReadQuery),
    responses(
        (status = 200, body = AccountJson),
        (status = 307, description = "Not the leader: the same request to the leader (Location)", body = ErrorBody),
        (status = 400, description = "Bad id", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
    )
)]
async fn get_account(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Json<AccountJson>, ApiError> {
    let id = path_id(&id)?;
    let stale = read_query(query)?;
    let accounts = read(&state.node, stale, move |ledger| {
        ledger.lookup_accounts(&[id])
    })
    .await?;
    match accounts.first() {
        Some(account) => Ok(Json(AccountJson::from(account))),
        None => Err(ApiError::not_found(format!("account {id} not found"))),
    }
}

/// One transfer by id.
#[utoipa::path(
    get,
    path = "/v1/transfers/{id}",
    params(("id" = String, Path, description = "Transfer id (u128, decimal)"), ReadQuery),
    responses(
        (status = 200, body = TransferJson),
        (status = 307, description = "Not the leader: the same request to the leader (Location)", body = ErrorBody),
        (status = 400, description = "Bad id", body = ErrorBody),
        (status = 404, description = "No such transfer", body = ErrorBody),
    )
)]
async fn get_transfer(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Json<TransferJson>, ApiError> {
    let id = path_id(&id)?;
    let stale = read_query(query)?;
    let transfers = read(&state.node, stale, move |ledger| {
        ledger.lookup_transfers(&[id])
    })
    .await?;
    match transfers.first() {
        Some(transfer) => Ok(Json(TransferJson::from(transfer))),
        None => Err(ApiError::not_found(format!("transfer {id} not found"))),
    }
}

/// Which of an account's transfers (or balance rows) to return. Every parameter is optional.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FilterQuery {
    /// Inclusive lower bound on the timestamp (nanoseconds); default unbounded.
    timestamp_min: Option<String>,
    /// Inclusive upper bound on the timestamp (nanoseconds); default unbounded.
    timestamp_max: Option<String>,
    /// The most results, 1..=8189; default 8189.
    limit: Option<String>,
    /// `debits`, `credits` or `both` (default).
    direction: Option<String>,
    /// `asc` (oldest first, default) or `desc`.
    order: Option<String>,
    /// `true`: answer from this node's applied state without asking the leader (may be stale).
    stale: Option<String>,
}

/// The filter and whether the read may be stale.
fn account_filter(
    id: &str,
    query: Result<Query<FilterQuery>, QueryRejection>,
) -> Result<(AccountFilter, bool), ApiError> {
    let account_id = path_id(id)?;
    let Query(query) = query.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    let stale = parse_stale(query.stale.as_deref())?;
    let number = |name: &str, text: &Option<String>, max: u128| -> Result<u128, ApiError> {
        let Some(text) = text else { return Ok(0) };
        let value = json::parse_u128(text).map_err(|problem| InputError::field(name, &problem))?;
        if value > max {
            return Err(InputError::field(
                name,
                &format!("is out of range (the largest value is {max})"),
            )
            .into());
        }
        Ok(value)
    };
    let timestamp_min = number("timestamp_min", &query.timestamp_min, u64::MAX as u128)? as u64;
    let timestamp_max = number("timestamp_max", &query.timestamp_max, u64::MAX as u128)? as u64;
    if timestamp_max != 0 && timestamp_min > timestamp_max {
        return Err(
            InputError::field("timestamp_min", "must not be greater than timestamp_max").into(),
        );
    }
    let limit = number("limit", &query.limit, QUERY_RESULTS_MAX as u128)? as u32;
    if query.limit.is_some() && limit == 0 {
        return Err(InputError::field("limit", "must be at least 1").into());
    }
    let direction = match query.direction.as_deref() {
        None | Some("both") => AccountFilter::DEBITS | AccountFilter::CREDITS,
        Some("debits") => AccountFilter::DEBITS,
        Some("credits") => AccountFilter::CREDITS,
        Some(_) => {
            return Err(InputError::field("direction", "must be debits, credits or both").into())
        }
    };
    let order = match query.order.as_deref() {
        None | Some("asc") => 0,
        Some("desc") => AccountFilter::REVERSED,
        Some(_) => return Err(InputError::field("order", "must be asc or desc").into()),
    };
    let filter = AccountFilter {
        account_id,
        timestamp_min,
        timestamp_max,
        limit,
        flags: direction | order,
    };
    Ok((filter, stale))
}

/// An account's transfers, filtered by time, direction and limit.
#[utoipa::path(
    get,
    path = "/v1/accounts/{id}/transfers",
    params(("id" = String, Path, description = "Account id (u128, decimal)"), FilterQuery),
    responses(
        (status = 200, description = "Matching transfers (empty for an unknown account)", body = Vec<TransferJson>),
        (status = 400, description = "Bad id or filter", body = ErrorBody),
    )
)]
async fn get_account_transfers(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<FilterQuery>, QueryRejection>,
) -> Result<Json<Vec<TransferJson>>, ApiError> {
    let (filter, stale) = account_filter(&id, query)?;
    let transfers = read(&state.node, stale, move |ledger| {
        ledger.get_account_transfers(&filter)
    })
    .await?;
    Ok(Json(transfers.iter().map(TransferJson::from).collect()))
}

/// An account's balance history (accounts with the `history` flag), filtered like its transfers.
#[utoipa::path(
    get,
    path = "/v1/accounts/{id}/balances",
    params(("id" = String, Path, description = "Account id (u128, decimal)"), FilterQuery),
    responses(
        (status = 200, description = "Balance rows (empty without the history flag)", body = Vec<BalanceJson>),
        (status = 400, description = "Bad id or filter", body = ErrorBody),
    )
)]
async fn get_account_balances(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<FilterQuery>, QueryRejection>,
) -> Result<Json<Vec<BalanceJson>>, ApiError> {
    let (filter, stale) = account_filter(&id, query)?;
    let balances = read(&state.node, stale, move |ledger| {
        ledger.get_account_balances(&filter)
    })
    .await?;
    Ok(Json(balances.iter().map(BalanceJson::from).collect()))
}

/// The node's Raft view and the ledger's digest, hash chain and counts.
#[derive(Serialize, ToSchema)]
pub struct StatusJson {
    #[schema(value_type = Object)]
    pub node: NodeStatus,
    #[schema(value_type = Object)]
    pub ledger: LedgerStatus,
}

/// Node and ledger status (digest, hash chain, applied index, counts).
#[utoipa::path(get, path = "/v1/status", responses((status = 200, body = StatusJson)))]
async fn status(State(state): State<AppState>) -> Result<Json<StatusJson>, ApiError> {
    let timeout = Duration::from_millis(READ_TIMEOUT_MS);
    let ledger = match tokio::time::timeout(timeout, state.node.ledger_status()).await {
        Ok(outcome) => outcome?,
        Err(_elapsed) => return Err(ApiError::timed_out()),
    };
    Ok(Json(StatusJson {
        node: state.node.status(),
        ledger,
    }))
}

/// 200 when this node is serving (it knows a leader, has not diverged, and has caught up since it
/// started: see `Readiness`), 503 otherwise.
#[utoipa::path(get, path = "/healthz", security(()), responses((status = 200), (status = 503)))]
async fn healthz(State(state): State<AppState>) -> Response {
    let node_status = state.node.status();
    let mut body = BTreeMap::new();
    body.insert("state", serde_json::Value::from(node_status.state));
    body.insert("leader_id", serde_json::json!(node_status.leader_id));
    if node_status.divergence.is_some() {
        body.insert("status", "diverged".into());
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    } else if node_status.leader_without_quorum {
        // Cut off from the majority: it cannot commit, whatever it calls itself.
        body.insert("status", "leader without a quorum".into());
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    } else if node_status.leader_id.is_some() {
        let ready = state
            .readiness
            .check(node_status.applied_index, node_status.committed_index);
        if ready {
            body.insert("status", "ok".into());
            (StatusCode::OK, Json(body)).into_response()
        } else {
            body.insert("status", "catching up".into());
            body.insert(
                "applied_index",
                serde_json::json!(node_status.applied_index),
            );
            body.insert(
                "committed_index",
                serde_json::json!(node_status.committed_index),
            );
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    } else {
        body.insert("status", "no leader".into());
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", security(()), responses((status = 200, content_type = "text/plain")))]
async fn metrics_text(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_ready_once_it_has_applied_what_was_committed_when_it_first_saw_a_leader() {
        let readiness = Readiness::default();
        assert!(!readiness.check(None, None));
        // First sight of a leader: the mark is 10.
        assert!(!readiness.check(Some(3), Some(10)));
        // Committing runs ahead under load; the mark stays.
        assert!(!readiness.check(Some(9), Some(14)));
        assert!(readiness.check(Some(10), Some(18)));
        // Ready stays ready, even trailing.
        assert!(readiness.check(Some(12), Some(30)));
    }

    #[test]
    fn bearer_tokens_are_extracted() {
        let cases: &[(&[u8], Option<&[u8]>)] = &[
            (b"Bearer abc", Some(b"abc")),
            (b"bearer abc", Some(b"abc")),
            (b"BEARER abc", Some(b"abc")),
            (b"Basic abc", None),
            (b"Bearer", None),
            (b"", None),
        ];
        for (header_value, token) in cases {
            assert_eq!(bearer_token(header_value), *token, "{header_value:?}");
        }
    }
}
