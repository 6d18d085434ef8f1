//! Every endpoint and every class of bad input, over HTTP against a real `tally start` process.

mod common;

use common::u128_of;
use common::Server;
use serde_json::json;
use serde_json::Value;
use tally_engine::limits::BATCH_EVENTS_MAX;
use tally_engine::limits::EVENT_SIZE;
use tally_engine::EventResult;
use tally_engine::Transfer;
use zerocopy::FromBytes;
use zerocopy::IntoBytes;

const OPERATOR: u64 = 1;
const ALICE_CHECKING: u64 = 2;
const ALICE_SAVINGS: u64 = 3;

#[test]
fn every_endpoint_works_and_every_bad_input_is_explained() {
    let directory = tempfile::tempdir().unwrap();
    let server = Server::start(&directory.path().join("data"), None);

    // Health, docs, OpenAPI.
    let (status, health) = server.get("/healthz");
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    let (status, openapi) = server.get("/openapi.json");
    assert_eq!(status, 200);
    for path in [
        "/v1/accounts",
        "/v1/transfers",
        "/v1/accounts/{id}",
        "/v1/transfers/{id}",
        "/v1/accounts/{id}/transfers",
        "/v1/accounts/{id}/balances",
        "/v1/status",
    ] {
        assert!(openapi["paths"][path].is_object(), "openapi lacks {path}");
    }
    let (status, docs) = server.get_text("/docs/");
    assert_eq!(status, 200);
    assert!(docs.contains("swagger"), "{docs}");

    ledger_flow(&server);
    queries(&server);
    binary_batches(&server);
    bad_inputs(&server);

    // Metrics, after traffic: per-route requests and the pipeline's histograms.
    let (status, metrics) = server.get_text("/metrics");
    assert_eq!(status, 200);
    for needle in [
        "tally_http_requests_total{",
        "route=\"/v1/transfers\"",
        "tally_http_request_seconds_bucket{",
        "tally_batch_events_bucket",
        "tally_commit_apply_seconds_bucket",
        "tally_journal_durable_seconds_bucket",
        "tally_apply_wait_seconds_bucket",
        "tally_apply_seconds_bucket",
    ] {
        assert!(
            metrics.contains(needle),
            "/metrics lacks {needle}:\n{metrics}"
        );
    }

    // Status: the digest and counts the tests below rely on.
    let (status, body) = server.get("/v1/status");
    assert_eq!(status, 200);
    assert_eq!(body["node"]["state"], "Leader");
    assert_eq!(body["ledger"]["accounts"], 3);
    assert_eq!(body["ledger"]["digest"].as_str().map(str::len), Some(32));
}

/// Two wallets and an operator account: deposit, a linked move, a withdrawal, a rejected
/// overdraft, an idempotent retry.
fn ledger_flow(server: &Server) {
    let wallet = |id: u64| json!({"id": id.to_string(), "ledger": 1, "code": 1, "flags": ["debits_must_not_exceed_credits", "history"]});
    let accounts = json!([{"id": OPERATOR.to_string(), "ledger": 1, "code": 1}, wallet(ALICE_CHECKING), wallet(ALICE_SAVINGS)]);
    assert_eq!(server.create("/v1/accounts", &accounts), ["ok", "ok", "ok"]);
    assert_eq!(
        server.create("/v1/accounts", &accounts),
        ["exists", "exists", "exists"]
    );

    let deposit = json!([{"id": "10", "debit_account_id": "1", "credit_account_id": "2", "amount": "1000", "ledger": 1, "code": 1}]);
    assert_eq!(server.create("/v1/transfers", &deposit), ["ok"]);
    // Linked: the move and its fee succeed or fail together.
    let linked_move = json!([
        {"id": "11", "debit_account_id": "2", "credit_account_id": "3", "amount": 300, "ledger": 1, "code": 2, "flags": ["linked"]},
        {"id": "12", "debit_account_id": "2", "credit_account_id": "1", "amount": "5", "ledger": 1, "code": 3}
    ]);
    assert_eq!(server.create("/v1/transfers", &linked_move), ["ok", "ok"]);
    let failing_chain = json!([
        {"id": "13", "debit_account_id": "2", "credit_account_id": "3", "amount": "1", "ledger": 1, "code": 2, "flags": ["linked"]},
        {"id": "14", "debit_account_id": "2", "credit_account_id": "1", "amount": "100000", "ledger": 1, "code": 3}
    ]);
    assert_eq!(
        server.create("/v1/transfers", &failing_chain),
        ["linked_event_failed", "exceeds_credits"]
    );
    let withdrawal = json!([{"id": "15", "debit_account_id": "3", "credit_account_id": "1", "amount": "100", "ledger": 1, "code": 4}]);
    assert_eq!(server.create("/v1/transfers", &withdrawal), ["ok"]);
    let overdraft = json!([{"id": "16", "debit_account_id": "3", "credit_account_id": "1", "amount": "201", "ledger": 1, "code": 4}]);
    assert_eq!(
        server.create("/v1/transfers", &overdraft),
        ["exceeds_credits"]
    );
    assert_eq!(
        server.create("/v1/transfers", &overdraft),
        ["id_already_failed"]
    );
    // Idempotent retry: same fields → exists with the original timestamp; different → says which.
    let (_, first) = server.get("/v1/transfers/10");
    let (status, retry) = server.post_json("/v1/transfers", &deposit.to_string());
    assert_eq!(status, 200);
    assert_eq!(retry[0]["status"], "exists");
    assert_eq!(retry[0]["timestamp"], first["timestamp"]);
    let changed = json!([{"id": "10", "debit_account_id": "1", "credit_account_id": "2", "amount": "999", "ledger": 1, "code": 1}]);
    assert_eq!(
        server.create("/v1/transfers", &changed),
        ["exists_with_different_amount"]
    );

    let (status, checking) = server.get("/v1/accounts/2");
    assert_eq!(status, 200);
    assert_eq!(
        (
            u128_of(&checking["credits_posted"]),
            u128_of(&checking["debits_posted"])
        ),
        (1000, 305)
    );
    assert_eq!(
        checking["flags"],
        json!(["debits_must_not_exceed_credits", "history"])
    );
    let (_, savings) = server.get("/v1/accounts/3");
    assert_eq!(
        (
            u128_of(&savings["credits_posted"]),
            u128_of(&savings["debits_posted"])
        ),
        (300, 100)
    );
    let (_, operator) = server.get("/v1/accounts/1");
    assert_eq!(
        (
            u128_of(&operator["credits_posted"]),
            u128_of(&operator["debits_posted"])
        ),
        (105, 1000)
    );
    let (status, transfer) = server.get("/v1/transfers/11");
    assert_eq!(status, 200);
    assert_eq!(transfer["amount"], "300");
    assert_eq!(transfer["flags"], json!(["linked"]));
}

fn queries(server: &Server) {
    let ids = |body: &Value| -> Vec<String> {
        body.as_array()
            .unwrap()
            .iter()
            .map(|transfer| transfer["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, all) = server.get("/v1/accounts/2/transfers");
    assert_eq!(status, 200);
    assert_eq!(ids(&all), ["10", "11", "12"]);
    let (_, debits) = server.get("/v1/accounts/2/transfers?direction=debits&order=desc");
    assert_eq!(ids(&debits), ["12", "11"]);
    let (_, credits) = server.get("/v1/accounts/2/transfers?direction=credits");
    assert_eq!(ids(&credits), ["10"]);
    let (_, limited) = server.get("/v1/accounts/2/transfers?limit=1&order=desc");
    assert_eq!(ids(&limited), ["12"]);
    let second_timestamp = all[1]["timestamp"].as_u64().unwrap();
    let (_, ranged) = server.get(&format!(
        "/v1/accounts/2/transfers?timestamp_min={second_timestamp}"
    ));
    assert_eq!(ids(&ranged), ["11", "12"]);
    let (_, ranged) = server.get(&format!(
        "/v1/accounts/2/transfers?timestamp_max={second_timestamp}"
    ));
    assert_eq!(ids(&ranged), ["10", "11"]);
    let (_, none) = server.get("/v1/accounts/999/transfers");
    assert_eq!(none, json!([]));

    let (status, balances) = server.get("/v1/accounts/2/balances");
    assert_eq!(status, 200);
    let rows = balances.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["credits_posted"], "1000");
    assert_eq!(rows[2]["debits_posted"], "305");
    let (_, latest) = server.get("/v1/accounts/2/balances?order=desc&limit=1");
    assert_eq!(latest.as_array().unwrap().len(), 1);
    assert_eq!(latest[0]["debits_posted"], "305");
    let (_, no_history) = server.get("/v1/accounts/1/balances");
    assert_eq!(no_history, json!([]));
}

fn binary_batches(server: &Server) {
    let transfer = |id: u128, amount: u128| Transfer {
        id,
        debit_account_id: u128::from(OPERATOR),
        credit_account_id: u128::from(ALICE_SAVINGS),
        amount,
        ledger: 1,
        code: 1,
        ..Transfer::default()
    };
    let events = [transfer(100, 7), transfer(101, 8), transfer(0, 1)];
    let (status, body) = server.post_raw(
        "/v1/transfers",
        "application/octet-stream",
        events.as_bytes(),
    );
    assert_eq!(status, 200);
    assert_eq!(body.len() % 16, 0);
    // Copied out record by record: a response body has no alignment guarantee.
    let results: Vec<EventResult> = body
        .chunks_exact(16)
        .map(|record| EventResult::read_from_bytes(record).unwrap())
        .collect();
    let statuses: Vec<(u32, u32)> = results
        .iter()
        .map(|result| (result.index, result.status))
        .collect();
    // 0 = ok, 5 = id_must_not_be_zero.
    assert_eq!(statuses, [(0, 0), (1, 0), (2, 5)]);
    assert!(results[1].timestamp > results[0].timestamp);
    let (_, stored) = server.get("/v1/transfers/101");
    assert_eq!(stored["amount"], "8");
}

/// (method, path, content type, body, expected status, message substring, index, field)
type BadInput = (
    &'static str,
    String,
    &'static str,
    Vec<u8>,
    u16,
    &'static str,
    Option<u64>,
    Option<&'static str>,
);

fn bad_input_cases() -> Vec<BadInput> {
    let json = "application/json";
    let binary = "application/octet-stream";
    let many = format!("[{}{{}}]", "{},".repeat(BATCH_EVENTS_MAX)).into_bytes();
    let huge = vec![b' '; tally_api::limits::JSON_BODY_SIZE_MAX + 1];
    vec![
        (
            "POST",
            "/v1/transfers".into(),
            json,
            b"[{\"id\":".to_vec(),
            400,
            "malformed JSON at line 1 column 7",
            None,
            None,
        ),
        (
            "POST",
            "/v1/accounts".into(),
            json,
            b"[{\"id\":\"1\",\"ledgr\":1}]".to_vec(),
            400,
            "field \"ledgr\" is not a field of an account",
            Some(0),
            Some("ledgr"),
        ),
        (
            "POST",
            "/v1/transfers".into(),
            json,
            b"[{},{\"amount\":[1]}]".to_vec(),
            400,
            "event 1: field \"amount\" must be an integer or a decimal string, got an array",
            Some(1),
            Some("amount"),
        ),
        (
            "POST",
            "/v1/transfers".into(),
            json,
            b"[{\"amount\":1.5}]".to_vec(),
            400,
            "floats are not accepted",
            Some(0),
            Some("amount"),
        ),
        (
            "POST",
            "/v1/transfers".into(),
            json,
            b"[{\"amount\":-1}]".to_vec(),
            400,
            "must not be negative",
            Some(0),
            Some("amount"),
        ),
        (
            "POST",
            "/v1/transfers".into(),
            json,
            b"[{\"ledger\":\"4294967296\"}]".to_vec(),
            400,
            "out of range for a u32",
            Some(0),
            Some("ledger"),
        ),
        (
            "POST",
            "/v1/transfers".into(),
            json,
            b"[{\"flags\":[\"posted\"]}]".to_vec(),
            400,
            "unknown flag \"posted\"",
            Some(0),
            Some("flags"),
        ),
        (
            "POST",
            "/v1/transfers".into(),
            json,
            b"[]".to_vec(),
            400,
            "the array of events is empty",
            None,
            None,
        ),
        (
            "POST",
            "/v1/transfers".into(),
            json,
            b"{\"id\":\"1\"}".to_vec(),
            400,
            "expected a JSON array of events",
            None,
            None,
        ),
        (
            "POST",
            "/v1/transfers".into(),
            json,
            many,
            400,
            "8190 events is more than the limit of 8189",
            None,
            None,
        ),
        (
            "POST",
            "/v1/transfers".into(),
            json,
            huge,
            413,
            "the body is larger than",
            None,
            None,
        ),
        (
            "POST",
            "/v1/transfers".into(),
            binary,
            vec![0; 130],
            400,
            "130 bytes is not a whole number of 128-byte records",
            None,
            None,
        ),
        (
            "POST",
            "/v1/accounts".into(),
            binary,
            Vec::new(),
            400,
            "the binary body is empty",
            None,
            None,
        ),
        (
            "POST",
            "/v1/transfers".into(),
            binary,
            vec![0; (BATCH_EVENTS_MAX + 1) * EVENT_SIZE],
            413,
            "more than 8189 records",
            None,
            None,
        ),
        (
            "POST",
            "/v1/transfers".into(),
            "text/plain",
            b"[]".to_vec(),
            415,
            "unsupported content type \"text/plain\"",
            None,
            None,
        ),
        (
            "GET",
            "/v1/accounts/abc".into(),
            json,
            Vec::new(),
            400,
            "\"id\" must be a decimal integer",
            None,
            Some("id"),
        ),
        (
            "GET",
            "/v1/transfers/-3".into(),
            json,
            Vec::new(),
            400,
            "\"id\" must not be negative",
            None,
            Some("id"),
        ),
        (
            "GET",
            "/v1/accounts/340282366920938463463374607431768211456".into(),
            json,
            Vec::new(),
            400,
            "out of range",
            None,
            Some("id"),
        ),
        (
            "GET",
            "/v1/accounts/424242".into(),
            json,
            Vec::new(),
            404,
            "account 424242 not found",
            None,
            None,
        ),
        (
            "GET",
            "/v1/transfers/424242".into(),
            json,
            Vec::new(),
            404,
            "transfer 424242 not found",
            None,
            None,
        ),
        (
            "GET",
            "/v1/accounts/2/transfers?direction=up".into(),
            json,
            Vec::new(),
            400,
            "must be debits, credits or both",
            None,
            Some("direction"),
        ),
        (
            "GET",
            "/v1/accounts/2/transfers?order=random".into(),
            json,
            Vec::new(),
            400,
            "must be asc or desc",
            None,
            Some("order"),
        ),
        (
            "GET",
            "/v1/accounts/2/transfers?limit=0".into(),
            json,
            Vec::new(),
            400,
            "must be at least 1",
            None,
            Some("limit"),
        ),
        (
            "GET",
            "/v1/accounts/2/balances?limit=9000".into(),
            json,
            Vec::new(),
            400,
            "out of range",
            None,
            Some("limit"),
        ),
        (
            "GET",
            "/v1/accounts/2/transfers?timestamp_min=x".into(),
            json,
            Vec::new(),
            400,
            "digits only",
            None,
            Some("timestamp_min"),
        ),
        (
            "GET",
            "/v1/accounts/2/transfers?timestamp_min=5&timestamp_max=4".into(),
            json,
            Vec::new(),
            400,
            "must not be greater than timestamp_max",
            None,
            Some("timestamp_min"),
        ),
        (
            "GET",
            "/v1/accounts/2/transfers?colour=red".into(),
            json,
            Vec::new(),
            400,
            "unknown field `colour`",
            None,
            None,
        ),
        (
            "GET",
            "/v1/nothing".into(),
            json,
            Vec::new(),
            404,
            "no such route",
            None,
            None,
        ),
        (
            "GET",
            "/v1/transfers".into(),
            json,
            Vec::new(),
            405,
            "method not allowed",
            None,
            None,
        ),
    ]
}

fn bad_inputs(server: &Server) {
    let digest_before = server.digest();
    for (method, path, content_type, body, status, message, index, field) in bad_input_cases() {
        let (actual_status, answer) = match method {
            "POST" => server.post_raw(&path, content_type, &body),
            _ => {
                let (status, text) = server.get_text(&path);
                (status, text.into_bytes())
            }
        };
        let answer: Value = serde_json::from_slice(&answer).unwrap_or_else(|_| {
            panic!(
                "{method} {path}: not JSON: {}",
                String::from_utf8_lossy(&answer)
            )
        });
        let case = format!("{method} {path} ({} bytes): {answer}", body.len());
        assert_eq!(actual_status, status, "{case}");
        let error = answer["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field: {case}"));
        assert!(error.contains(message), "{case}: expected {message:?}");
        assert_eq!(answer["index"].as_u64(), index, "{case}");
        assert_eq!(answer["field"].as_str(), field, "{case}");
    }
    assert_eq!(
        server.digest(),
        digest_before,
        "bad input changed the ledger"
    );
}

#[test]
fn api_token_is_required_when_set() {
    let directory = tempfile::tempdir().unwrap();
    let server = Server::start(&directory.path().join("data"), Some("s3cret-token"));
    let agent = common::agent();
    let call = |token: Option<&str>| {
        let mut request = agent.get(format!("{}/v1/status", server.base));
        if let Some(token) = token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        request.call().unwrap().status().as_u16()
    };
    assert_eq!(call(None), 401);
    assert_eq!(call(Some("wrong")), 401);
    assert_eq!(call(Some("s3cret-token")), 200);
    let post = agent
        .post(format!("{}/v1/accounts", server.base))
        .send("[{\"id\":\"1\",\"ledger\":1,\"code\":1}]")
        .unwrap();
    assert_eq!(post.status().as_u16(), 401);
    assert_eq!(
        server.get("/v1/accounts/1").0,
        404,
        "the refused POST must not have created anything"
    );
    // Health and metrics stay open for probes.
    let health = agent
        .get(format!("{}/healthz", server.base))
        .call()
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
}

#[test]
fn non_loopback_without_token_is_refused_at_start() {
    let directory = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(common::tally_binary())
        .args([
            "start",
            "--http",
            &format!("0.0.0.0:{}", common::free_port()),
            "--data-dir",
        ])
        .arg(directory.path().join("data"))
        .env_remove("TALLY_API_TOKEN")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("refusing to listen on 0.0.0.0"), "{stderr}");
    assert!(
        !directory.path().join("data").exists(),
        "nothing may be created when refusing"
    );
}

/// A full ledger answers each event with the engine's capacity code, and keeps serving.
#[test]
fn a_full_ledger_answers_capacity_exceeded() {
    let directory = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let child = std::process::Command::new(common::tally_binary())
        .args([
            "start",
            "--http",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(directory.path().join("data"))
        .args(["--accounts-max", "2", "--transfers-max", "2"])
        .env_remove("TALLY_API_TOKEN")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = Killed(child);
    let agent = common::agent();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while agent
        .get(format!("{base}/healthz"))
        .call()
        .map_or(true, |response| response.status() != 200)
    {
        assert!(std::time::Instant::now() < deadline, "not healthy");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let post = |path: &str, body: Value| -> Vec<String> {
        let mut response = agent
            .post(format!("{base}{path}"))
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let results: Value = response.body_mut().read_json().unwrap();
        results
            .as_array()
            .unwrap()
            .iter()
            .map(|result| result["status"].as_str().unwrap().to_owned())
            .collect()
    };
    let account = |id: u64| json!({"id": id.to_string(), "ledger": 1, "code": 1});
    let transfer = |id: u64| {
        json!({"id": id.to_string(), "debit_account_id": "1", "credit_account_id": "2",
               "amount": "5", "ledger": 1, "code": 1})
    };
    let cases: [(&str, Value, [&str; 3]); 2] = [
        (
            "/v1/accounts",
            json!([account(1), account(2), account(3)]),
            ["ok", "ok", "accounts_capacity_exceeded"],
        ),
        (
            "/v1/transfers",
            json!([transfer(10), transfer(11), transfer(12)]),
            ["ok", "ok", "transfers_capacity_exceeded"],
        ),
    ];
    for (path, body, expected) in cases {
        assert_eq!(post(path, body), expected, "{path}");
    }
    // Still serving: a retry of a stored transfer is `exists`, a new one still refused.
    assert_eq!(
        post("/v1/transfers", json!([transfer(10), transfer(13)])),
        ["exists", "transfers_capacity_exceeded"]
    );
}
