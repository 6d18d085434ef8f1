//! The `tally` client commands against a real server.

mod common;

use std::process::Command;
use std::process::Output;

use common::Server;
use serde_json::Value;

fn tally(server: &str, arguments: &[&str]) -> Output {
    Command::new(common::tally_binary())
        .arg("--server")
        .arg(server)
        .args(arguments)
        .env_remove("TALLY_API_TOKEN")
        .output()
        .expect("run tally")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn succeeds(server: &str, arguments: &[&str]) -> String {
    let output = tally(server, arguments);
    assert!(
        output.status.success(),
        "tally {arguments:?}: {}{}",
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

#[test]
fn client_commands_end_to_end() {
    let directory = tempfile::tempdir().unwrap();
    let server = Server::start(&directory.path().join("data"), None);
    let base = server.base.as_str();

    assert_eq!(
        succeeds(
            base,
            &["account", "create", "--id", "1", "--ledger", "1", "--code", "1"]
        ),
        "account 1: ok\n"
    );
    let wallet_flags = "debits_must_not_exceed_credits,history";
    for id in ["2", "3"] {
        succeeds(
            base,
            &[
                "account",
                "create",
                "--id",
                id,
                "--ledger",
                "1",
                "--code",
                "1",
                "--flags",
                wallet_flags,
            ],
        );
    }
    let transfer = |id: &str, from: &str, to: &str, amount: &str| {
        tally(
            base,
            &[
                "transfer", "--id", id, "--from", from, "--to", to, "--amount", amount, "--ledger",
                "1", "--code", "1",
            ],
        )
    };
    assert_eq!(
        stdout(&transfer("10", "1", "2", "500")),
        "transfer 10: ok\n"
    );
    assert!(transfer("11", "2", "3", "200").status.success());

    // A business rejection: one line on stderr, non-zero exit.
    let overdraft = transfer("12", "3", "1", "201");
    assert!(!overdraft.status.success());
    assert_eq!(
        stderr(&overdraft),
        "error: transfer 12 not created: exceeds_credits\n"
    );
    let duplicate = tally(
        base,
        &[
            "account", "create", "--id", "1", "--ledger", "1", "--code", "1",
        ],
    );
    assert!(!duplicate.status.success());
    assert!(stderr(&duplicate).contains("exists"));

    let show = succeeds(base, &["account", "show", "2"]);
    assert!(show.contains("credits_posted   500"), "{show}");
    assert!(show.contains("debits_posted    200"), "{show}");
    assert!(
        show.contains("flags            debits_must_not_exceed_credits,history"),
        "{show}"
    );

    let history = succeeds(base, &["account", "history", "2"]);
    let lines: Vec<&str> = history.lines().collect();
    assert_eq!(lines[0], "transfers of account 2:");
    assert!(lines[1].starts_with("timestamp"), "{history}");
    assert!(
        lines[2].contains(" 10 ") && lines[2].contains("credit") && lines[2].contains("500"),
        "{history}"
    );
    assert!(
        lines[3].contains(" 11 ") && lines[3].contains("debit") && lines[3].contains("200"),
        "{history}"
    );
    assert!(history.contains("balance history:"), "{history}");

    let json: Value =
        serde_json::from_str(&succeeds(base, &["--json", "account", "show", "3"])).unwrap();
    assert_eq!(json["credits_posted"], "200");
    let json: Value =
        serde_json::from_str(&succeeds(base, &["account", "history", "2", "--json"])).unwrap();
    assert_eq!(json["transfers"].as_array().unwrap().len(), 2);
    assert_eq!(json["balances"].as_array().unwrap().len(), 2);
    let json: Value = serde_json::from_str(&succeeds(
        base,
        &[
            "--json",
            "transfer",
            "--id",
            "13",
            "--from",
            "1",
            "--to",
            "3",
            "--amount",
            "1",
            "--ledger",
            "1",
            "--code",
            "1",
            "--flags",
            "pending",
            "--timeout",
            "60",
        ],
    ))
    .unwrap();
    assert_eq!(json["status"], "ok");
    let status = succeeds(base, &["status"]);
    assert!(
        status.contains("state") && status.contains("Leader") && status.contains("digest"),
        "{status}"
    );

    // Errors a person makes: one clear line, non-zero exit.
    let missing = tally(base, &["account", "show", "99"]);
    assert!(!missing.status.success());
    assert_eq!(
        stderr(&missing),
        "error: /v1/accounts/99: 404 account 99 not found\n"
    );
    let bad_flag = tally(
        base,
        &[
            "account", "create", "--id", "5", "--ledger", "1", "--code", "1", "--flags", "histroy",
        ],
    );
    assert!(!bad_flag.status.success());
    assert!(
        stderr(&bad_flag).starts_with("error: --flags has an unknown flag \"histroy\""),
        "{}",
        stderr(&bad_flag)
    );
    let nobody = format!("http://127.0.0.1:{}", common::free_port());
    let unreachable = tally(&nobody, &["account", "show", "1"]);
    assert!(!unreachable.status.success());
    let message = stderr(&unreachable);
    assert!(
        message.starts_with(&format!("error: cannot reach {nobody}")),
        "{message}"
    );
    assert_eq!(message.lines().count(), 1, "{message}");
}

#[test]
fn client_commands_send_the_token() {
    let directory = tempfile::tempdir().unwrap();
    let server = Server::start(&directory.path().join("data"), Some("cli-token"));
    let refused = tally(&server.base, &["account", "show", "1"]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("401"), "{}", stderr(&refused));
    let output = Command::new(common::tally_binary())
        .args([
            "--server",
            &server.base,
            "account",
            "create",
            "--id",
            "1",
            "--ledger",
            "1",
            "--code",
            "1",
        ])
        .env("TALLY_API_TOKEN", "cli-token")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
}
