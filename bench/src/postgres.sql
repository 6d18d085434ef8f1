-- The PostgreSQL baseline: a double-entry ledger in the usual shape, as close to Tally's
-- semantics as the comparison needs. Result codes are Tally's (`CreateTransferResult`), so both
-- systems' answers are counted under the same names.
--
-- Ids are 16-byte big-endian `bytea` (Tally's u128 ids), money is `numeric(39, 0)` (exact u128,
-- never floats). Accounts hold their posted balances; a transfer locks its two accounts in id
-- order (no deadlocks), checks idempotency by id, the accounts, the ledger and the balance of a
-- `debits_must_not_exceed_credits` account (flag bit 2, as in Tally), records the transfer with
-- its result (a failed id stays burned, as in Tally) and moves the money. The two account
-- indexes on `transfers` serve "the transfers of an account", which Tally answers too.

DROP FUNCTION IF EXISTS create_transfers;
DROP FUNCTION IF EXISTS create_transfer;
DROP FUNCTION IF EXISTS idempotent_answer;
DROP TABLE IF EXISTS transfers;
DROP TABLE IF EXISTS accounts;

CREATE TABLE accounts (
    id bytea PRIMARY KEY,
    ledger integer NOT NULL,
    code integer NOT NULL,
    flags integer NOT NULL,
    debits_posted numeric(39, 0) NOT NULL DEFAULT 0,
    credits_posted numeric(39, 0) NOT NULL DEFAULT 0
);

CREATE TABLE transfers (
    id bytea PRIMARY KEY,
    debit_account_id bytea NOT NULL,
    credit_account_id bytea NOT NULL,
    amount numeric(39, 0) NOT NULL,
    ledger integer NOT NULL,
    code integer NOT NULL,
    result integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX transfers_debit_account ON transfers (debit_account_id);
CREATE INDEX transfers_credit_account ON transfers (credit_account_id);

CREATE FUNCTION create_transfer(
    p_id bytea, p_debit bytea, p_credit bytea, p_amount numeric, p_ledger integer, p_code integer
) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    existing transfers%ROWTYPE;
    debit accounts%ROWTYPE;
    credit accounts%ROWTYPE;
    outcome integer;
    inserted integer;
BEGIN
    IF p_debit = p_credit THEN
        RETURN 25; -- accounts_must_be_different (depends on the event alone: burns nothing)
    END IF;
    SELECT * INTO existing FROM transfers WHERE id = p_id;
    IF FOUND THEN
        RETURN idempotent_answer(existing, p_debit, p_credit, p_amount, p_ledger, p_code);
    END IF;
    -- Lock both accounts in id order so that concurrent transfers never deadlock.
    PERFORM 1 FROM accounts WHERE id IN (p_debit, p_credit) ORDER BY id FOR UPDATE;
    SELECT * INTO debit FROM accounts WHERE id = p_debit;
    IF NOT FOUND THEN
        outcome := 34; -- debit_account_not_found
    ELSE
        SELECT * INTO credit FROM accounts WHERE id = p_credit;
        IF NOT FOUND THEN
            outcome := 35; -- credit_account_not_found
        ELSIF debit.ledger <> credit.ledger THEN
            outcome := 36; -- accounts_must_have_the_same_ledger
        ELSIF debit.ledger <> p_ledger THEN
            outcome := 37; -- transfer_must_have_the_same_ledger_as_accounts
        ELSIF debit.flags & 2 <> 0 AND debit.debits_posted + p_amount > debit.credits_posted THEN
            outcome := 58; -- exceeds_credits
        ELSE
            outcome := 0; -- ok
        END IF;
    END IF;
    INSERT INTO transfers (id, debit_account_id, credit_account_id, amount, ledger, code, result)
        VALUES (p_id, p_debit, p_credit, p_amount, p_ledger, p_code, outcome)
        ON CONFLICT (id) DO NOTHING;
    GET DIAGNOSTICS inserted = ROW_COUNT;
    IF inserted = 0 THEN
        -- The same id committed concurrently: answer as a retry.
        SELECT * INTO existing FROM transfers WHERE id = p_id;
        RETURN idempotent_answer(existing, p_debit, p_credit, p_amount, p_ledger, p_code);
    END IF;
    IF outcome = 0 THEN
        UPDATE accounts SET debits_posted = debits_posted + p_amount WHERE id = p_debit;
        UPDATE accounts SET credits_posted = credits_posted + p_amount WHERE id = p_credit;
    END IF;
    RETURN outcome;
END $$;

CREATE OR REPLACE FUNCTION idempotent_answer(
    existing transfers, p_debit bytea, p_credit bytea, p_amount numeric, p_ledger integer,
    p_code integer
) RETURNS integer LANGUAGE plpgsql AS $$
BEGIN
    IF existing.result <> 0 THEN
        RETURN 19; -- id_already_failed
    ELSIF existing.debit_account_id <> p_debit THEN
        RETURN 10; -- exists_with_different_debit_account_id
    ELSIF existing.credit_account_id <> p_credit THEN
        RETURN 11; -- exists_with_different_credit_account_id
    ELSIF existing.amount <> p_amount THEN
        RETURN 12; -- exists_with_different_amount
    ELSIF existing.ledger <> p_ledger THEN
        RETURN 16; -- exists_with_different_ledger
    ELSIF existing.code <> p_code THEN
        RETURN 17; -- exists_with_different_code
    END IF;
    RETURN 18; -- exists
END $$;

-- A batch in one transaction (one commit, one fsync): every account it touches is locked first,
-- in id order, then the transfers are made one by one, each with its own result.
CREATE FUNCTION create_transfers(
    p_ids bytea[], p_debits bytea[], p_credits bytea[], p_amounts numeric[], p_ledgers integer[],
    p_codes integer[]
) RETURNS integer[] LANGUAGE plpgsql AS $$
DECLARE
    outcomes integer[] := '{}';
BEGIN
    PERFORM 1 FROM accounts WHERE id = ANY (p_debits || p_credits) ORDER BY id FOR UPDATE;
    FOR position IN 1 .. coalesce(array_length(p_ids, 1), 0) LOOP
        outcomes := outcomes || create_transfer(p_ids[position], p_debits[position],
            p_credits[position], p_amounts[position], p_ledgers[position], p_codes[position]);
    END LOOP;
    RETURN outcomes;
END $$;
