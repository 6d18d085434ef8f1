//! The benchmarks' HTTP client: one hyper HTTP/1.1 connection, one request at a time (so a
//! latency is what one client sees), following `307` redirects to the leader and sending the API
//! token. Shared by `server`, `load` and `compare`.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper::Method;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tally_engine::EventResult;
use tally_engine::Transfer;
use zerocopy::FromBytes;

/// How many `307` redirects one request follows (the CLI's bound too).
pub(crate) const REDIRECTS_MAX: usize = 5;
/// How long one request may take before its outcome is called unknown: longer than the server's
/// own submit timeout (30 s), so a slow commit is answered by the server, not cut by us.
pub(crate) const REQUEST_TIMEOUT_MS: u64 = 35_000;
/// Size of one binary result record.
const RESULT_SIZE: usize = 16;

pub(crate) const CONTENT_TYPE_BINARY: &str = "application/octet-stream";
pub(crate) const CONTENT_TYPE_JSON: &str = "application/json";

/// Why a request got no HTTP answer. For a write, the outcome is unknown after `Send` and
/// `Timeout` (resending the same ids is safe); after `Connect` nothing was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TransportError {
    Connect,
    Send,
    Timeout,
    TooManyRedirects,
}

impl TransportError {
    pub(crate) fn kind(self) -> &'static str {
        match self {
            TransportError::Connect => "connect",
            TransportError::Send => "connection_lost",
            TransportError::Timeout => "timeout",
            TransportError::TooManyRedirects => "too_many_redirects",
        }
    }
}

pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Bytes,
}

/// A client of one node (or cluster): `base` moves to the leader on a `307`.
pub(crate) struct Client {
    /// `host:port`.
    authority: String,
    token: Option<String>,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Client {
    /// `target` is `http://host:port` or `host:port`.
    pub(crate) fn new(target: &str, token: Option<String>) -> anyhow::Result<Client> {
        Ok(Client {
            authority: authority_of(target)?,
            token,
            sender: None,
        })
    }

    pub(crate) fn authority(&self) -> &str {
        &self.authority
    }

    pub(crate) async fn post(
        &mut self,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<Answer, TransportError> {
        self.request(Method::POST, path, Some(content_type), body)
            .await
    }

    pub(crate) async fn get(&mut self, path: &str) -> Result<Answer, TransportError> {
        self.request(Method::GET, path, None, Bytes::new()).await
    }

    async fn request(
        &mut self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<Answer, TransportError> {
        let mut path = path.to_owned();
        for _ in 0..=REDIRECTS_MAX {
            let answer = tokio::time::timeout(
                Duration::from_millis(REQUEST_TIMEOUT_MS),
                self.send_once(method.clone(), &path, content_type, body.clone()),
            )
            .await
            .unwrap_or_else(|_| {
                self.sender = None;
                Err(TransportError::Timeout)
            })?;
            if answer.status != 307 {
                return Ok(answer.answer);
            }
            let Some(location) = answer.location else {
                return Ok(answer.answer);
            };
            let Ok((authority, new_path)) = split_location(&location) else {
                return Ok(answer.answer);
            };
            if authority != self.authority {
                self.authority = authority;
                self.sender = None;
            }
            path = new_path;
        }
        Err(TransportError::TooManyRedirects)
    }

    async fn send_once(
        &mut self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<Redirectable, TransportError> {
        let sender = match self.sender.as_mut() {
            Some(sender) if !sender.is_closed() => sender,
            _ => {
                let sender = connect(&self.authority)
                    .await
                    .map_err(|_| TransportError::Connect)?;
                self.sender.insert(sender)
            }
        };
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header("Host", &self.authority);
        if let Some(content_type) = content_type {
            builder = builder.header("Content-Type", content_type);
        }
        if let Some(token) = &self.token {
            builder = builder.header("Authorization", format!("Bearer {token}"));
        }
        let request = builder
            .body(Full::new(body))
            .map_err(|_| TransportError::Send)?;
        let outcome = async {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let status = response.status().as_u16();
            let location = response
                .headers()
                .get("location")
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned);
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, location, body))
        }
        .await;
        match outcome {
            Ok((status, location, body)) => Ok(Redirectable {
                status,
                location,
                answer: Answer { status, body },
            }),
            Err(_) => {
                self.sender = None;
                Err(TransportError::Send)
            }
        }
    }
}

struct Redirectable {
    status: u16,
    location: Option<String>,
    answer: Answer,
}

/// `http://host:port[/...]` or `host:port` → `host:port`.
pub(crate) fn authority_of(target: &str) -> anyhow::Result<String> {
    let rest = target.strip_prefix("http://").unwrap_or(target);
    anyhow::ensure!(
        !target.starts_with("https://"),
        "https is not supported (put the benchmark on the proxy's inner side)"
    );
    let authority = rest.split('/').next().unwrap_or_default();
    anyhow::ensure!(
        authority.contains(':'),
        "target {target:?} must be http://HOST:PORT"
    );
    Ok(authority.to_owned())
}

/// A `Location` header, `http://host:port/path?query` → (`host:port`, `/path?query`).
fn split_location(location: &str) -> anyhow::Result<(String, String)> {
    let rest = location
        .strip_prefix("http://")
        .context("Location is not http://")?;
    let (authority, path) = match rest.find('/') {
        Some(index) => (&rest[..index], &rest[index..]),
        None => (rest, "/"),
    };
    Ok((authority.to_owned(), path.to_owned()))
}

pub(crate) async fn connect(address: &str) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// Binary results, copied out record by record: a response body has no alignment guarantee.
pub(crate) fn decode_results(answer: &[u8]) -> anyhow::Result<Vec<EventResult>> {
    anyhow::ensure!(
        answer.len() % RESULT_SIZE == 0,
        "{} bytes of results is not whole {RESULT_SIZE}-byte records",
        answer.len()
    );
    answer
        .chunks_exact(RESULT_SIZE)
        .map(|record| {
            EventResult::read_from_bytes(record).map_err(|_| anyhow::anyhow!("bad result record"))
        })
        .collect()
}

/// JSON results (`[{"index","status","timestamp"}]`) as numeric transfer result codes.
pub(crate) fn decode_json_transfer_results(answer: &[u8]) -> anyhow::Result<Vec<u32>> {
    let results: Vec<serde_json::Value> = serde_json::from_slice(answer)?;
    results
        .iter()
        .map(|result| {
            let name = result["status"]
                .as_str()
                .context("a result without status")?;
            tally_engine::CreateTransferResult::from_name(name)
                .map(|code| code.code())
                .with_context(|| format!("unknown result {name:?}"))
        })
        .collect()
}

/// Transfers as the API's JSON: u128 values as decimal strings, flags by name.
pub(crate) fn json_transfers(transfers: &[Transfer]) -> Vec<u8> {
    use std::fmt::Write;
    let mut body = String::with_capacity(transfers.len() * 160);
    body.push('[');
    for (index, transfer) in transfers.iter().enumerate() {
        if index > 0 {
            body.push(',');
        }
        let _ = write!(
            body,
            r#"{{"id":"{}","debit_account_id":"{}","credit_account_id":"{}","amount":"{}","ledger":{},"code":{}"#,
            transfer.id,
            transfer.debit_account_id,
            transfer.credit_account_id,
            transfer.amount,
            transfer.ledger,
            transfer.code
        );
        if transfer.pending_id != 0 {
            let _ = write!(body, r#","pending_id":"{}""#, transfer.pending_id);
        }
        if transfer.timeout != 0 {
            let _ = write!(body, r#","timeout":{}"#, transfer.timeout);
        }
        if transfer.flags != 0 {
            body.push_str(r#","flags":["#);
            for (position, name) in tally_engine::TransferFlags::names(transfer.flags)
                .iter()
                .enumerate()
            {
                if position > 0 {
                    body.push(',');
                }
                let _ = write!(body, r#""{name}""#);
            }
            body.push(']');
        }
        body.push('}');
    }
    body.push(']');
    body.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_locations_are_split() {
        assert_eq!(
            authority_of("http://127.0.0.1:3000").unwrap(),
            "127.0.0.1:3000"
        );
        assert_eq!(authority_of("127.0.0.1:3000/").unwrap(), "127.0.0.1:3000");
        assert!(authority_of("https://127.0.0.1:3000").is_err());
        assert!(authority_of("localhost").is_err());
        assert_eq!(
            split_location("http://127.0.0.1:3003/v1/transfers?x=1").unwrap(),
            ("127.0.0.1:3003".to_owned(), "/v1/transfers?x=1".to_owned())
        );
    }

    /// A one-connection HTTP/1.1 server answering every request with `answer`; returns its
    /// address and what it received.
    async fn serve(answer: String) -> (String, tokio::task::JoinHandle<Vec<String>>) {
        use tokio::io::AsyncReadExt;
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut received = Vec::new();
            let mut request = Vec::new();
            let mut buffer = vec![0u8; 65536];
            // Every request of these tests ends with the body `[1]`.
            for _ in 0..100 {
                let count = stream.read(&mut buffer).await.unwrap();
                request.extend_from_slice(&buffer[..count]);
                if count == 0 || request.ends_with(b"[1]") {
                    break;
                }
            }
            received.push(String::from_utf8_lossy(&request).into_owned());
            stream.write_all(answer.as_bytes()).await.unwrap();
            stream.flush().await.unwrap();
            received
        });
        (address, task)
    }

    #[tokio::test]
    async fn writes_follow_a_redirect_to_the_leader_with_the_token() {
        let body = "[]";
        let (leader, leader_task) = serve(format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        ))
        .await;
        let (follower, follower_task) = serve(format!(
            "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://{leader}/v1/transfers\r\ncontent-length: 0\r\n\r\n"
        ))
        .await;
        let mut client = Client::new(&format!("http://{follower}"), Some("secret".into())).unwrap();
        let answer = client
            .post(
                "/v1/transfers",
                CONTENT_TYPE_JSON,
                Bytes::from_static(b"[1]"),
            )
            .await
            .unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(&answer.body[..], body.as_bytes());
        // Later requests go straight to the leader.
        assert_eq!(client.authority(), leader);
        for task in [follower_task, leader_task] {
            let received = task.await.unwrap();
            let request = received[0].to_lowercase();
            assert!(
                request.starts_with("post /v1/transfers http/1.1"),
                "{request}"
            );
            assert!(
                request.contains("authorization: bearer secret"),
                "{request}"
            );
            assert!(request.ends_with("[1]"), "{request}");
        }
    }

    #[tokio::test]
    async fn an_unreachable_node_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        let mut client = Client::new(&address, None).unwrap();
        let error = client.get("/healthz").await.err().unwrap();
        assert_eq!(error, TransportError::Connect);
    }

    #[test]
    fn json_transfers_name_flags_and_keep_u128_exact() {
        let transfer = Transfer {
            id: u128::MAX - 1,
            debit_account_id: 1,
            credit_account_id: 2,
            amount: u128::MAX - 7,
            pending_id: 9,
            ledger: 3,
            code: 4,
            flags: tally_engine::TransferFlags::POST_PENDING_TRANSFER
                | tally_engine::TransferFlags::LINKED,
            ..Transfer::default()
        };
        let body = json_transfers(&[transfer]);
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value[0]["id"], (u128::MAX - 1).to_string());
        assert_eq!(value[0]["amount"], (u128::MAX - 7).to_string());
        assert_eq!(value[0]["pending_id"], "9");
        assert_eq!(
            value[0]["flags"],
            serde_json::json!(["linked", "post_pending_transfer"])
        );
    }
}
