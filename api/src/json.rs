//! The JSON mapping of the engine's records, both ways.
//!
//! Input is parsed by hand from a `serde_json::Value` rather than derived, so that every error
//! names the event index and the field, and says exactly what is wrong. u128 values (ids, amounts,
//! user_data_128) travel as decimal strings; every integer field also accepts a JSON integer when
//! it is exact (serde_json reads integers above u64::MAX as floats, so those must be strings).
//! Floats, negatives and out-of-range values are rejected. Omitted fields are zero.

use serde::Serialize;
use serde_json::Map;
use serde_json::Value;
use tally_engine::limits::BATCH_EVENTS_MAX;
use tally_engine::Account;
use tally_engine::AccountBalance;
use tally_engine::AccountFlags;
use tally_engine::CreateAccountResult;
use tally_engine::CreateTransferResult;
use tally_engine::EventResult;
use tally_engine::Operation;
use tally_engine::Transfer;
use tally_engine::TransferFlags;
use utoipa::ToSchema;

/// What is wrong with a request, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputError {
    pub message: String,
    /// The index of the offending event in the request's array.
    pub index: Option<usize>,
    /// The offending field (or query parameter).
    pub field: Option<String>,
}

impl InputError {
    pub fn new(message: impl Into<String>) -> InputError {
        InputError {
            message: message.into(),
            index: None,
            field: None,
        }
    }

    fn at(index: usize, field: &str, problem: &str) -> InputError {
        InputError {
            message: format!("event {index}: field \"{field}\" {problem}"),
            index: Some(index),
            field: Some(field.to_owned()),
        }
    }

    /// An error in one named value outside an event array (a path segment, a query parameter).
    pub fn field(field: &str, problem: &str) -> InputError {
        InputError {
            message: format!("\"{field}\" {problem}"),
            index: None,
            field: Some(field.to_owned()),
        }
    }
}

/// An account as JSON. On input every field is optional (zero) and integers may be decimal strings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct AccountJson {
    /// u128, decimal string.
    #[schema(example = "1")]
    pub id: String,
    pub debits_pending: String,
    pub debits_posted: String,
    pub credits_pending: String,
    pub credits_posted: String,
    pub user_data_128: String,
    pub user_data_64: u64,
    pub user_data_32: u32,
    #[schema(example = 1)]
    pub ledger: u32,
    #[schema(example = 1)]
    pub code: u16,
    /// Names: linked, debits_must_not_exceed_credits, credits_must_not_exceed_debits, history, closed.
    pub flags: Vec<String>,
    /// Nanoseconds since the Unix epoch, assigned by the leader; must be 0 (or omitted) on input.
    pub timestamp: u64,
}

/// A transfer as JSON. On input every field is optional (zero) and integers may be decimal strings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct TransferJson {
    #[schema(example = "10")]
    pub id: String,
    #[schema(example = "1")]
    pub debit_account_id: String,
    #[schema(example = "2")]
    pub credit_account_id: String,
    #[schema(example = "100")]
    pub amount: String,
    pub pending_id: String,
    pub user_data_128: String,
    pub user_data_64: u64,
    pub user_data_32: u32,
    /// Seconds until a pending transfer expires; 0 = never.
    pub timeout: u32,
    #[schema(example = 1)]
    pub ledger: u32,
    #[schema(example = 1)]
    pub code: u16,
    /// Names: linked, pending, post_pending_transfer, void_pending_transfer, balancing_debit,
    /// balancing_credit.
    pub flags: Vec<String>,
    pub timestamp: u64,
}

/// An account's balances right after the transfer at `timestamp` changed them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct BalanceJson {
    pub debits_pending: String,
    pub debits_posted: String,
    pub credits_pending: String,
    pub credits_posted: String,
    pub timestamp: u64,
}

/// The result of one event of a create request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct EventResultJson {
    /// The event's index in the request.
    pub index: u32,
    /// The engine's result code in snake_case: `ok`, `exists`, `exceeds_credits`, …
    #[schema(example = "ok")]
    pub status: String,
    /// The event's timestamp when ok, the existing object's for `exists*`, else 0.
    pub timestamp: u64,
}

impl From<&Account> for AccountJson {
    fn from(account: &Account) -> AccountJson {
        AccountJson {
            id: account.id.to_string(),
            debits_pending: account.debits_pending.to_string(),
            debits_posted: account.debits_posted.to_string(),
            credits_pending: account.credits_pending.to_string(),
            credits_posted: account.credits_posted.to_string(),
            user_data_128: account.user_data_128.to_string(),
            user_data_64: account.user_data_64,
            user_data_32: account.user_data_32,
            ledger: account.ledger,
            code: account.code,
            flags: AccountFlags::names(account.flags)
                .into_iter()
                .map(str::to_owned)
                .collect(),
            timestamp: account.timestamp,
        }
    }
}

impl From<&Transfer> for TransferJson {
    fn from(transfer: &Transfer) -> TransferJson {
        TransferJson {
            id: transfer.id.to_string(),
            debit_account_id: transfer.debit_account_id.to_string(),
            credit_account_id: transfer.credit_account_id.to_string(),
            amount: transfer.amount.to_string(),
            pending_id: transfer.pending_id.to_string(),
            user_data_128: transfer.user_data_128.to_string(),
            user_data_64: transfer.user_data_64,
            user_data_32: transfer.user_data_32,
            timeout: transfer.timeout,
            ledger: transfer.ledger,
            code: transfer.code,
            flags: TransferFlags::names(transfer.flags)
                .into_iter()
                .map(str::to_owned)
                .collect(),
            timestamp: transfer.timestamp,
        }
    }
}

impl From<&AccountBalance> for BalanceJson {
    fn from(balance: &AccountBalance) -> BalanceJson {
        BalanceJson {
            debits_pending: balance.debits_pending.to_string(),
            debits_posted: balance.debits_posted.to_string(),
            credits_pending: balance.credits_pending.to_string(),
            credits_posted: balance.credits_posted.to_string(),
            timestamp: balance.timestamp,
        }
    }
}

/// The snake_case name of a result code of `operation`.
pub fn status_name(operation: Operation, status: u32) -> String {
    let name = match operation {
        Operation::CreateAccounts => {
            CreateAccountResult::from_code(status).map(|result| result.name())
        }
        Operation::CreateTransfers => {
            CreateTransferResult::from_code(status).map(|result| result.name())
        }
    };
    match name {
        Some(name) => name.to_owned(),
        None => format!("unknown_status_{status}"),
    }
}

pub fn result_json(operation: Operation, result: &EventResult) -> EventResultJson {
    EventResultJson {
        index: result.index,
        status: status_name(operation, result.status),
        timestamp: result.timestamp,
    }
}

/// Parses a JSON array of accounts.
pub fn accounts_from_json(body: &[u8]) -> Result<Vec<Account>, InputError> {
    events_from_json(body, account_from_object)
}

/// Parses a JSON array of transfers.
pub fn transfers_from_json(body: &[u8]) -> Result<Vec<Transfer>, InputError> {
    events_from_json(body, transfer_from_object)
}

fn events_from_json<T>(
    body: &[u8],
    parse_event: fn(&Map<String, Value>, usize) -> Result<T, InputError>,
) -> Result<Vec<T>, InputError> {
    let value: Value = serde_json::from_slice(body).map_err(|error| {
        InputError::new(format!(
            "malformed JSON at line {} column {}: {error}",
            error.line(),
            error.column()
        ))
    })?;
    let Value::Array(items) = value else {
        return Err(InputError::new(format!(
            "expected a JSON array of events, got {}",
            type_name(&value)
        )));
    };
    if items.is_empty() {
        return Err(InputError::new(
            "the array of events is empty: send at least one event",
        ));
    }
    if items.len() > BATCH_EVENTS_MAX {
        return Err(InputError::new(format!(
            "{} events is more than the limit of {BATCH_EVENTS_MAX} per request",
            items.len()
        )));
    }
    items
        .iter()
        .enumerate()
        .map(|(index, item)| match item {
            Value::Object(object) => parse_event(object, index),
            other => Err(InputError {
                message: format!(
                    "event {index}: expected a JSON object, got {}",
                    type_name(other)
                ),
                index: Some(index),
                field: None,
            }),
        })
        .collect()
}

const ACCOUNT_FIELDS: &str =
    "id, debits_pending, debits_posted, credits_pending, credits_posted, user_data_128, \
                              user_data_64, user_data_32, reserved, ledger, code, flags, timestamp";

fn account_from_object(object: &Map<String, Value>, index: usize) -> Result<Account, InputError> {
    let mut account = Account::default();
    for (field, value) in object {
        let at = |problem: String| InputError::at(index, field, &problem);
        match field.as_str() {
            "id" => account.id = u128_from(value).map_err(at)?,
            "debits_pending" => account.debits_pending = u128_from(value).map_err(at)?,
            "debits_posted" => account.debits_posted = u128_from(value).map_err(at)?,
            "credits_pending" => account.credits_pending = u128_from(value).map_err(at)?,
            "credits_posted" => account.credits_posted = u128_from(value).map_err(at)?,
            "user_data_128" => account.user_data_128 = u128_from(value).map_err(at)?,
            "user_data_64" => account.user_data_64 = uint_from::<u64>(value).map_err(at)?,
            "user_data_32" => account.user_data_32 = uint_from::<u32>(value).map_err(at)?,
            "reserved" => account.reserved = uint_from::<u32>(value).map_err(at)?,
            "ledger" => account.ledger = uint_from::<u32>(value).map_err(at)?,
            "code" => account.code = uint_from::<u16>(value).map_err(at)?,
            "flags" => account.flags = flags_from(value, AccountFlags::NAMED).map_err(at)?,
            "timestamp" => account.timestamp = uint_from::<u64>(value).map_err(at)?,
            _ => {
                return Err(at(format!(
                    "is not a field of an account (fields: {ACCOUNT_FIELDS})"
                )))
            }
        }
    }
    Ok(account)
}

const TRANSFER_FIELDS: &str =
    "id, debit_account_id, credit_account_id, amount, pending_id, user_data_128, \
                               user_data_64, user_data_32, timeout, ledger, code, flags, timestamp";

fn transfer_from_object(object: &Map<String, Value>, index: usize) -> Result<Transfer, InputError> {
    let mut transfer = Transfer::default();
    for (field, value) in object {
        let at = |problem: String| InputError::at(index, field, &problem);
        match field.as_str() {
            "id" => transfer.id = u128_from(value).map_err(at)?,
            "debit_account_id" => transfer.debit_account_id = u128_from(value).map_err(at)?,
            "credit_account_id" => transfer.credit_account_id = u128_from(value).map_err(at)?,
            "amount" => transfer.amount = u128_from(value).map_err(at)?,
            "pending_id" => transfer.pending_id = u128_from(value).map_err(at)?,
            "user_data_128" => transfer.user_data_128 = u128_from(value).map_err(at)?,
            "user_data_64" => transfer.user_data_64 = uint_from::<u64>(value).map_err(at)?,
            "user_data_32" => transfer.user_data_32 = uint_from::<u32>(value).map_err(at)?,
            "timeout" => transfer.timeout = uint_from::<u32>(value).map_err(at)?,
            "ledger" => transfer.ledger = uint_from::<u32>(value).map_err(at)?,
            "code" => transfer.code = uint_from::<u16>(value).map_err(at)?,
            "flags" => transfer.flags = flags_from(value, TransferFlags::NAMED).map_err(at)?,
            "timestamp" => transfer.timestamp = uint_from::<u64>(value).map_err(at)?,
            _ => {
                return Err(at(format!(
                    "is not a field of a transfer (fields: {TRANSFER_FIELDS})"
                )))
            }
        }
    }
    Ok(transfer)
}

/// A u128 from a decimal string or an exact JSON integer.
fn u128_from(value: &Value) -> Result<u128, String> {
    match value {
        Value::String(text) => parse_u128(text),
        Value::Number(number) => {
            if let Some(unsigned) = number.as_u64() {
                Ok(u128::from(unsigned))
            } else if number.is_i64() {
                Err(format!("must not be negative, got {number}"))
            } else {
                Err(format!(
                    "must be an integer, got {number} (floats are not accepted; send integers above {} as \
                     decimal strings)",
                    u64::MAX
                ))
            }
        }
        other => Err(format!(
            "must be an integer or a decimal string, got {}",
            type_name(other)
        )),
    }
}

/// Parses an unsigned decimal integer written as digits only (no sign, no spaces, no exponent).
pub fn parse_u128(text: &str) -> Result<u128, String> {
    if text.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if text.starts_with('-')
        && text.len() > 1
        && text[1..].bytes().all(|byte| byte.is_ascii_digit())
    {
        return Err(format!("must not be negative, got \"{text}\""));
    }
    if !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(format!(
            "must be a decimal integer (digits only), got \"{}\"",
            truncated(text)
        ));
    }
    text.parse::<u128>()
        .map_err(|_| format!("is out of range (the largest value is {})", u128::MAX))
}

/// An unsigned integer field of type `T` (`u16`, `u32`, `u64`), range-checked.
fn uint_from<T: TryFrom<u128> + Bounded>(value: &Value) -> Result<T, String> {
    let wide = u128_from(value)?;
    T::try_from(wide).map_err(|_| {
        format!(
            "is out of range for a {} (the largest value is {}), got {wide}",
            T::LABEL,
            T::MAX_WIDE
        )
    })
}

/// What an error about an unsigned field says of its type.
trait Bounded {
    const LABEL: &'static str;
    const MAX_WIDE: u128;
}

macro_rules! bounded {
    ($($t:ty),*) => {$(
        impl Bounded for $t {
            const LABEL: &'static str = stringify!($t);
            const MAX_WIDE: u128 = <$t>::MAX as u128;
        }
    )*};
}
bounded!(u16, u32, u64);

fn flags_from(value: &Value, named: &[(u16, &str)]) -> Result<u16, String> {
    let Value::Array(items) = value else {
        return Err(format!(
            "must be an array of flag names, got {}",
            type_name(value)
        ));
    };
    let mut bits = 0u16;
    for item in items {
        let Value::String(name) = item else {
            return Err(format!(
                "must be an array of flag names, found {}",
                type_name(item)
            ));
        };
        match named.iter().find(|(_, text)| text == name) {
            Some((bit, _)) => bits |= bit,
            None => {
                let known: Vec<&str> = named.iter().map(|(_, text)| *text).collect();
                return Err(format!(
                    "has an unknown flag \"{}\" (known: {})",
                    truncated(name),
                    known.join(", ")
                ));
            }
        }
    }
    Ok(bits)
}

/// Parses a comma-separated list of flag names (the CLI's `--flags a,b`).
pub fn flags_from_list(list: &str, named: &[(u16, &str)]) -> Result<u16, String> {
    let names: Vec<Value> = list
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(|name| Value::String(name.to_owned()))
        .collect();
    flags_from(&Value::Array(names), named).map_err(|problem| format!("--flags {problem}"))
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Echoes at most 64 characters of client input back in an error message.
fn truncated(text: &str) -> String {
    const ECHO_CHARS_MAX: usize = 64;
    if text.chars().count() <= ECHO_CHARS_MAX {
        return text.to_owned();
    }
    let mut short: String = text.chars().take(ECHO_CHARS_MAX).collect();
    short.push('…');
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (body, expected substring of the message, index, field)
    const BAD_TRANSFERS: &[(&str, &str, Option<usize>, Option<&str>)] = &[
        ("", "malformed JSON at line 1 column 0", None, None),
        (
            "[{\"id\":\"1\",}]",
            "malformed JSON at line 1 column 12",
            None,
            None,
        ),
        (
            "[\n{\"id\": 1\n",
            "malformed JSON at line 3 column 0",
            None,
            None,
        ),
        (
            "{\"id\":\"1\"}",
            "expected a JSON array of events, got an object",
            None,
            None,
        ),
        ("[]", "the array of events is empty", None, None),
        (
            "[1]",
            "event 0: expected a JSON object, got a number",
            Some(0),
            None,
        ),
        (
            "[{}, {\"idd\":\"1\"}]",
            "event 1: field \"idd\" is not a field of a transfer",
            Some(1),
            Some("idd"),
        ),
        (
            "[{\"amount\":-5}]",
            "must not be negative, got -5",
            Some(0),
            Some("amount"),
        ),
        (
            "[{\"amount\":\"-5\"}]",
            "must not be negative",
            Some(0),
            Some("amount"),
        ),
        (
            "[{\"amount\":1.5}]",
            "must be an integer, got 1.5 (floats are not accepted",
            Some(0),
            Some("amount"),
        ),
        (
            "[{\"amount\":1e3}]",
            "floats are not accepted",
            Some(0),
            Some("amount"),
        ),
        (
            "[{\"amount\":340282366920938463463374607431768211456}]",
            "floats are not accepted; send integers above 18446744073709551615 as decimal strings",
            Some(0),
            Some("amount"),
        ),
        (
            "[{\"amount\":\"340282366920938463463374607431768211456\"}]",
            "is out of range (the largest value is 340282366920938463463374607431768211455)",
            Some(0),
            Some("amount"),
        ),
        (
            "[{\"amount\":\"12a\"}]",
            "must be a decimal integer (digits only), got \"12a\"",
            Some(0),
            Some("amount"),
        ),
        (
            "[{\"amount\":\" 12\"}]",
            "digits only",
            Some(0),
            Some("amount"),
        ),
        (
            "[{\"amount\":\"\"}]",
            "must not be empty",
            Some(0),
            Some("amount"),
        ),
        (
            "[{\"amount\":true}]",
            "must be an integer or a decimal string, got a boolean",
            Some(0),
            Some("amount"),
        ),
        ("[{\"amount\":null}]", "got null", Some(0), Some("amount")),
        (
            "[{\"ledger\":4294967296}]",
            "is out of range for a u32 (the largest value is 4294967295)",
            Some(0),
            Some("ledger"),
        ),
        (
            "[{\"code\":65536}]",
            "out of range for a u16",
            Some(0),
            Some("code"),
        ),
        (
            "[{\"code\":\"65536\"}]",
            "out of range for a u16",
            Some(0),
            Some("code"),
        ),
        (
            "[{\"timeout\":-1}]",
            "must not be negative",
            Some(0),
            Some("timeout"),
        ),
        (
            "[{\"flags\":\"linked\"}]",
            "must be an array of flag names, got a string",
            Some(0),
            Some("flags"),
        ),
        (
            "[{\"flags\":[1]}]",
            "must be an array of flag names, found a number",
            Some(0),
            Some("flags"),
        ),
        (
            "[{\"flags\":[\"linkd\"]}]",
            "unknown flag \"linkd\" (known: linked, pending",
            Some(0),
            Some("flags"),
        ),
        (
            "[{\"flags\":[\"history\"]}]",
            "unknown flag \"history\"",
            Some(0),
            Some("flags"),
        ),
        (
            "[{\"reserved\":0}]",
            "is not a field of a transfer",
            Some(0),
            Some("reserved"),
        ),
    ];

    #[test]
    fn bad_transfers_are_rejected_with_where_and_what() {
        for (body, message, index, field) in BAD_TRANSFERS {
            let error = transfers_from_json(body.as_bytes()).expect_err(body);
            assert!(
                error.message.contains(message),
                "body {body:?}: message {:?} lacks {message:?}",
                error.message
            );
            assert_eq!(error.index, *index, "body {body:?}");
            assert_eq!(error.field.as_deref(), *field, "body {body:?}");
        }
    }

    const BAD_ACCOUNTS: &[(&str, &str, Option<usize>, Option<&str>)] = &[
        (
            "[{\"id\":\"1\",\"amount\":\"5\"}]",
            "field \"amount\" is not a field of an account",
            Some(0),
            Some("amount"),
        ),
        (
            "[{\"flags\":[\"pending\"]}]",
            "unknown flag \"pending\" (known: linked, debits_must_not_exceed_credits",
            Some(0),
            Some("flags"),
        ),
        (
            "[{\"user_data_64\":\"18446744073709551616\"}]",
            "out of range for a u64",
            Some(0),
            Some("user_data_64"),
        ),
        (
            "[{\"id\":1},{\"id\":2},{\"ledger\":\"x\"}]",
            "event 2: field \"ledger\"",
            Some(2),
            Some("ledger"),
        ),
    ];

    #[test]
    fn bad_accounts_are_rejected_with_where_and_what() {
        for (body, message, index, field) in BAD_ACCOUNTS {
            let error = accounts_from_json(body.as_bytes()).expect_err(body);
            assert!(
                error.message.contains(message),
                "body {body:?}: {:?}",
                error.message
            );
            assert_eq!(error.index, *index, "body {body:?}");
            assert_eq!(error.field.as_deref(), *field, "body {body:?}");
        }
    }

    #[test]
    fn too_many_events_are_rejected() {
        let body = format!("[{}{{}}]", "{},".repeat(BATCH_EVENTS_MAX));
        let error = transfers_from_json(body.as_bytes()).unwrap_err();
        assert_eq!(
            error.message,
            format!("8190 events is more than the limit of 8189 per request")
        );
        let body = format!("[{}{{}}]", "{},".repeat(BATCH_EVENTS_MAX - 1));
        assert_eq!(
            transfers_from_json(body.as_bytes()).unwrap().len(),
            BATCH_EVENTS_MAX
        );
    }

    #[test]
    fn minimal_and_full_records_parse() {
        let accounts = accounts_from_json(br#"[{"id":"1","ledger":1,"code":1}]"#).unwrap();
        assert_eq!(
            accounts,
            vec![Account {
                id: 1,
                ledger: 1,
                code: 1,
                ..Account::default()
            }]
        );
        let transfers = transfers_from_json(
            br#"[{"id":"10","debit_account_id":"1","credit_account_id":2,"amount":"340282366920938463463374607431768211455",
                 "ledger":1,"code":1,"flags":["linked","pending"],"timeout":"60","user_data_64":18446744073709551615}]"#,
        )
        .unwrap();
        assert_eq!(
            transfers,
            vec![Transfer {
                id: 10,
                debit_account_id: 1,
                credit_account_id: 2,
                amount: u128::MAX,
                ledger: 1,
                code: 1,
                flags: TransferFlags::LINKED | TransferFlags::PENDING,
                timeout: 60,
                user_data_64: u64::MAX,
                ..Transfer::default()
            }]
        );
    }

    #[test]
    fn output_round_trips_through_input() {
        let account = Account {
            id: u128::MAX - 1,
            credits_posted: 7,
            user_data_128: 3,
            ledger: 9,
            code: 2,
            flags: AccountFlags::HISTORY | AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
            timestamp: 1_700_000_000_000_000_000,
            ..Account::default()
        };
        let json = serde_json::to_vec(&[AccountJson::from(&account)]).unwrap();
        assert_eq!(accounts_from_json(&json).unwrap(), vec![account]);
        let transfer = Transfer {
            id: 5,
            debit_account_id: 1,
            credit_account_id: 2,
            amount: 1 << 100,
            pending_id: 4,
            timeout: 3,
            flags: TransferFlags::POST_PENDING_TRANSFER,
            ledger: 1,
            code: 1,
            ..Transfer::default()
        };
        let json = serde_json::to_vec(&[TransferJson::from(&transfer)]).unwrap();
        assert_eq!(transfers_from_json(&json).unwrap(), vec![transfer]);
    }

    #[test]
    fn status_names_are_the_engine_names() {
        assert_eq!(
            status_name(Operation::CreateTransfers, 58),
            "exceeds_credits"
        );
        assert_eq!(status_name(Operation::CreateAccounts, 21), "exists");
        assert_eq!(status_name(Operation::CreateAccounts, 0), "ok");
        assert_eq!(
            status_name(Operation::CreateAccounts, 9999),
            "unknown_status_9999"
        );
    }

    #[test]
    fn cli_flag_lists_parse() {
        assert_eq!(
            flags_from_list("linked, pending", TransferFlags::NAMED),
            Ok(TransferFlags::LINKED | TransferFlags::PENDING)
        );
        assert!(flags_from_list("nope", TransferFlags::NAMED)
            .unwrap_err()
            .contains("unknown flag \"nope\""));
    }
}
