//! The auditor: after the faults stop and the replicas converge, it checks
//! what every client was told against what every replica holds, and replays
//! the stored transfers through a model of the ledger written independently
//! of the engine (plain maps, no indexes, no undo log).

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use tally_engine::Account;
use tally_engine::AccountFlags;
use tally_engine::CreateTransferResult;
use tally_engine::Transfer;
use tally_engine::TransferFlags;

use super::workload::RequestRecord;

/// What one replica holds after convergence.
#[derive(Clone, Debug)]
pub struct Dump {
    pub node: u64,
    pub applied_index: Option<u64>,
    pub digest: u128,
    pub hash_chain: u128,
    pub accounts: Vec<Account>,
    /// The stored transfers among every id the workload ever sent.
    pub transfers: Vec<Transfer>,
    pub transfers_count: usize,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Balances {
    debits_pending: u128,
    debits_posted: u128,
    credits_pending: u128,
    credits_posted: u128,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PendingState {
    Pending,
    Posted,
    Voided,
}

/// The model: balances per account and the state of each pending transfer.
struct Model {
    accounts: BTreeMap<u128, (Account, Balances)>,
    pendings: BTreeMap<u128, (Transfer, PendingState)>,
}

impl Model {
    fn new(accounts: &[Account]) -> Model {
        Model {
            accounts: accounts
                .iter()
                .map(|account| (account.id, (*account, Balances::default())))
                .collect(),
            pendings: BTreeMap::new(),
        }
    }

    /// Applies one stored transfer; an error says why it could not have succeeded.
    fn apply(&mut self, transfer: &Transfer) -> Result<(), String> {
        let resolving = transfer.flags
            & (TransferFlags::POST_PENDING_TRANSFER | TransferFlags::VOID_PENDING_TRANSFER);
        if resolving != 0 {
            let (pending, state) = self
                .pendings
                .get_mut(&transfer.pending_id)
                .ok_or("resolves a pending transfer that was never stored before it")?;
            if *state != PendingState::Pending {
                return Err(format!("resolves a pending transfer already {state:?}"));
            }
            let post = transfer.flags & TransferFlags::POST_PENDING_TRANSFER != 0;
            if transfer.debit_account_id != pending.debit_account_id
                || transfer.credit_account_id != pending.credit_account_id
            {
                return Err("accounts differ from its pending transfer".into());
            }
            if post && transfer.amount > pending.amount {
                return Err("posts more than was pending".into());
            }
            if !post && transfer.amount != pending.amount {
                return Err("a void must release the whole pending amount".into());
            }
            *state = if post {
                PendingState::Posted
            } else {
                PendingState::Voided
            };
            let (reserved, posted) = (pending.amount, if post { transfer.amount } else { 0 });
            let debit = &mut self
                .accounts
                .get_mut(&transfer.debit_account_id)
                .ok_or("no debit account")?
                .1;
            debit.debits_pending -= reserved;
            debit.debits_posted += posted;
            let credit = &mut self
                .accounts
                .get_mut(&transfer.credit_account_id)
                .ok_or("no credit account")?
                .1;
            credit.credits_pending -= reserved;
            credit.credits_posted += posted;
            return Ok(());
        }
        let (debit_account, debit) = *self
            .accounts
            .get(&transfer.debit_account_id)
            .ok_or("debit account does not exist")?;
        let (credit_account, _) = *self
            .accounts
            .get(&transfer.credit_account_id)
            .ok_or("credit account does not exist")?;
        if debit_account.ledger != transfer.ledger || credit_account.ledger != transfer.ledger {
            return Err("crosses ledgers".into());
        }
        if debit_account.flags & AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS != 0
            && debit.debits_pending + debit.debits_posted + transfer.amount > debit.credits_posted
        {
            return Err(format!(
                "overdraws account {} (debits {} + {} pending, credits {}, amount {})",
                debit_account.id,
                debit.debits_posted,
                debit.debits_pending,
                debit.credits_posted,
                transfer.amount
            ));
        }
        let pending = transfer.flags & TransferFlags::PENDING != 0;
        let debit = &mut self
            .accounts
            .get_mut(&transfer.debit_account_id)
            .expect("checked")
            .1;
        if pending {
            debit.debits_pending += transfer.amount;
        } else {
            debit.debits_posted += transfer.amount;
        }
        let credit = &mut self
            .accounts
            .get_mut(&transfer.credit_account_id)
            .expect("checked")
            .1;
        if pending {
            credit.credits_pending += transfer.amount;
        } else {
            credit.credits_posted += transfer.amount;
        }
        if pending {
            self.pendings
                .insert(transfer.id, (*transfer, PendingState::Pending));
        }
        Ok(())
    }
}

/// Every check; an empty list means the run is clean. `acknowledged` counts
/// transfers whose client was told `ok` or `exists`.
pub fn audit(
    accounts: &[Account],
    requests: &[RequestRecord],
    dumps: &[Dump],
) -> (Vec<String>, u64) {
    let mut failures = Vec::new();
    let Some(first) = dumps.first() else {
        return (vec!["no live replica to audit".into()], 0);
    };

    // Replicas converge: the same state at the same applied index.
    for dump in &dumps[1..] {
        if (dump.applied_index, dump.digest, dump.hash_chain)
            != (first.applied_index, first.digest, first.hash_chain)
        {
            failures.push(format!(
                "replicas differ: node {} at {:?} digest {:032x} chain {:032x}, node {} at {:?} digest {:032x} chain {:032x}",
                first.node, first.applied_index, first.digest, first.hash_chain,
                dump.node, dump.applied_index, dump.digest, dump.hash_chain
            ));
        }
    }

    let mut acknowledged = 0u64;
    for dump in dumps {
        let stored: BTreeMap<u128, &Transfer> = dump
            .transfers
            .iter()
            .map(|transfer| (transfer.id, transfer))
            .collect();
        let mut sent: BTreeSet<u128> = BTreeSet::new();
        for record in requests {
            for (index, event) in record.events.iter().enumerate() {
                sent.insert(event.id);
                let Some(results) = &record.results else {
                    continue;
                };
                let result = results[index];
                let status = CreateTransferResult::from_code(result.status);
                let told_stored = matches!(
                    status,
                    Some(CreateTransferResult::Ok | CreateTransferResult::Exists)
                );
                match (told_stored, stored.get(&event.id)) {
                    (true, None) => failures.push(format!(
                        "node {}: acknowledged transfer {} (client {}, status {}) is missing",
                        dump.node, event.id, record.client, result.status
                    )),
                    (true, Some(transfer)) => {
                        if dump.node == first.node {
                            acknowledged += 1;
                        }
                        if transfer.timestamp != result.timestamp {
                            failures.push(format!(
                                "node {}: transfer {} stored at {} but acknowledged at {}",
                                dump.node, event.id, transfer.timestamp, result.timestamp
                            ));
                        }
                        let resolving = event.flags
                            & (TransferFlags::POST_PENDING_TRANSFER
                                | TransferFlags::VOID_PENDING_TRANSFER)
                            != 0;
                        let same = if resolving {
                            transfer.pending_id == event.pending_id && transfer.flags == event.flags
                        } else {
                            (
                                transfer.debit_account_id,
                                transfer.credit_account_id,
                                transfer.amount,
                                transfer.flags,
                            ) == (
                                event.debit_account_id,
                                event.credit_account_id,
                                event.amount,
                                event.flags,
                            )
                        };
                        if !same {
                            failures.push(format!(
                                "node {}: transfer {} stored as {transfer:?}, sent as {event:?}",
                                dump.node, event.id
                            ));
                        }
                    }
                    (false, Some(_)) => failures.push(format!(
                        "node {}: transfer {} was answered {} but is stored",
                        dump.node, event.id, result.status
                    )),
                    (false, None) => {}
                }
            }
        }
        for transfer in &dump.transfers {
            if !sent.contains(&transfer.id) {
                failures.push(format!(
                    "node {}: transfer {} was never sent",
                    dump.node, transfer.id
                ));
            }
        }
        if dump.transfers_count != dump.transfers.len() {
            failures.push(format!(
                "node {}: holds {} transfers, {} of them sent by the workload",
                dump.node,
                dump.transfers_count,
                dump.transfers.len()
            ));
        }

        // The stored history is a valid serial execution, and it explains the balances.
        let mut model = Model::new(accounts);
        let mut ordered: Vec<&Transfer> = dump.transfers.iter().collect();
        ordered.sort_by_key(|transfer| transfer.timestamp);
        for pair in ordered.windows(2) {
            if pair[0].timestamp == pair[1].timestamp {
                failures.push(format!(
                    "node {}: transfers {} and {} share timestamp {}",
                    dump.node, pair[0].id, pair[1].id, pair[0].timestamp
                ));
            }
        }
        for transfer in &ordered {
            if let Err(why) = model.apply(transfer) {
                failures.push(format!(
                    "node {}: transfer {} at {} could not have succeeded: {why}",
                    dump.node, transfer.id, transfer.timestamp
                ));
            }
        }
        let mut totals: BTreeMap<u32, Balances> = BTreeMap::new();
        for account in &dump.accounts {
            let held = Balances {
                debits_pending: account.debits_pending,
                debits_posted: account.debits_posted,
                credits_pending: account.credits_pending,
                credits_posted: account.credits_posted,
            };
            match model.accounts.get(&account.id) {
                Some((_, expected)) if *expected == held => {}
                Some((_, expected)) => failures.push(format!(
                    "node {}: account {} holds {held:?}, the model says {expected:?}",
                    dump.node, account.id
                )),
                None => failures.push(format!(
                    "node {}: unknown account {}",
                    dump.node, account.id
                )),
            }
            let total = totals.entry(account.ledger).or_default();
            total.debits_pending += held.debits_pending;
            total.debits_posted += held.debits_posted;
            total.credits_pending += held.credits_pending;
            total.credits_posted += held.credits_posted;
        }
        if dump.accounts.len() != accounts.len() {
            failures.push(format!(
                "node {}: {} of {} accounts exist",
                dump.node,
                dump.accounts.len(),
                accounts.len()
            ));
        }
        for (ledger, total) in totals {
            if total.debits_posted != total.credits_posted
                || total.debits_pending != total.credits_pending
            {
                failures.push(format!(
                    "node {}: ledger {ledger} does not balance: {total:?}",
                    dump.node
                ));
            }
        }
    }
    (failures, acknowledged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::workload::account_id;
    use crate::cluster::workload::accounts;
    use tally_engine::EventResult;

    fn deposit(id: u128, to: u128, amount: u128, timestamp: u64) -> Transfer {
        Transfer {
            id,
            debit_account_id: account_id(1, 0),
            credit_account_id: to,
            amount,
            ledger: 1,
            code: 1,
            timestamp,
            ..Transfer::default()
        }
    }

    /// A replica's state built by applying `transfers` to the workload's accounts.
    fn dump(node: u64, transfers: &[Transfer]) -> Dump {
        let mut accounts = accounts();
        for transfer in transfers {
            for account in &mut accounts {
                if account.id == transfer.debit_account_id {
                    account.debits_posted += transfer.amount;
                }
                if account.id == transfer.credit_account_id {
                    account.credits_posted += transfer.amount;
                }
            }
        }
        Dump {
            node,
            applied_index: Some(7),
            digest: 1,
            hash_chain: 2,
            accounts,
            transfers: transfers.to_vec(),
            transfers_count: transfers.len(),
        }
    }

    fn acknowledged(transfers: &[Transfer]) -> RequestRecord {
        RequestRecord {
            client: 0,
            events: transfers
                .iter()
                .map(|t| Transfer { timestamp: 0, ..*t })
                .collect(),
            results: Some(
                transfers
                    .iter()
                    .enumerate()
                    .map(|(index, t)| EventResult {
                        index: index as u32,
                        status: 0,
                        timestamp: t.timestamp,
                    })
                    .collect(),
            ),
            attempts: 1,
        }
    }

    #[test]
    fn a_consistent_history_passes() {
        let wallet = account_id(1, 2);
        let transfers = [deposit(10, wallet, 100, 1)];
        let (failures, acknowledged_count) = audit(
            &accounts(),
            &[acknowledged(&transfers)],
            &[dump(1, &transfers)],
        );
        assert!(failures.is_empty(), "{failures:#?}");
        assert_eq!(acknowledged_count, 1);
    }

    #[test]
    fn the_model_refuses_an_overdraft_the_replica_accepted() {
        let (wallet, other) = (account_id(1, 2), account_id(1, 3));
        let overdraft = Transfer {
            id: 11,
            debit_account_id: wallet,
            credit_account_id: other,
            amount: 50,
            ledger: 1,
            code: 1,
            timestamp: 2,
            ..Transfer::default()
        };
        let (failures, _) = audit(
            &accounts(),
            &[acknowledged(&[overdraft])],
            &[dump(1, &[overdraft])],
        );
        assert!(
            failures
                .iter()
                .any(|f| f.contains("could not have succeeded")),
            "{failures:#?}"
        );
    }

    #[test]
    fn a_lost_acknowledged_transfer_and_diverged_replicas_are_reported() {
        let wallet = account_id(1, 2);
        let transfers = [deposit(10, wallet, 100, 1)];
        let mut second = dump(2, &[]);
        second.digest = 99;
        let (failures, _) = audit(
            &accounts(),
            &[acknowledged(&transfers)],
            &[dump(1, &transfers), second],
        );
        assert!(
            failures.iter().any(|f| f.contains("replicas differ")),
            "{failures:#?}"
        );
        assert!(
            failures
                .iter()
                .any(|f| f.contains("node 2: acknowledged transfer 10")),
            "{failures:#?}"
        );
    }
}
