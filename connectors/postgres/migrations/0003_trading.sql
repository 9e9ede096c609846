-- Trading path (issue 4): what the persistence flow needs to upsert orders, order history,
-- positions, the trading state and strategy deployments idempotently from the topics.
-- Every statement is idempotent, so a re-run changes nothing.

-- Orders: GTT is a venue order type; the intent's purpose, signal and stop-loss are kept;
-- last_event_ns orders status updates so an older update never overwrites a newer one.
ALTER TABLE orders DROP CONSTRAINT IF EXISTS orders_order_type_check;
ALTER TABLE orders ADD CONSTRAINT orders_order_type_check
    CHECK (order_type IN ('MARKET', 'LIMIT', 'SL', 'SL-M', 'GTT'));
ALTER TABLE orders ADD COLUMN IF NOT EXISTS purpose VARCHAR(10) NOT NULL DEFAULT 'ENTRY';
ALTER TABLE orders ADD COLUMN IF NOT EXISTS signal_id VARCHAR(200);
ALTER TABLE orders ADD COLUMN IF NOT EXISTS stop_loss NUMERIC(12,4);
ALTER TABLE orders ADD COLUMN IF NOT EXISTS take_profit NUMERIC(12,4);
ALTER TABLE orders ADD COLUMN IF NOT EXISTS reason TEXT;
ALTER TABLE orders ADD COLUMN IF NOT EXISTS last_event_ns BIGINT NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS idx_orders_strategy ON orders (strategy_id, created_at DESC);

-- Positions: one row per account, strategy and instrument (intraday positions flatten; the
-- row keeps the latest state, CLOSED when flat), upserted from pf.positions.
DROP INDEX IF EXISTS idx_positions_strategy_instrument;
CREATE UNIQUE INDEX IF NOT EXISTS positions_account_strategy_instrument
    ON positions (account, strategy_id, instrument_id);
ALTER TABLE positions ADD COLUMN IF NOT EXISTS last_event_ns BIGINT NOT NULL DEFAULT 0;
ALTER TABLE positions ADD COLUMN IF NOT EXISTS charges NUMERIC(14,2) NOT NULL DEFAULT 0;  -- realized_pnl is gross

-- The trading state of each account (ACTIVE / REDUCING / HALTED), so a halt survives restarts.
CREATE TABLE IF NOT EXISTS trading_state (
    account       VARCHAR(32) PRIMARY KEY,
    state         VARCHAR(10) NOT NULL CHECK (state IN ('ACTIVE', 'REDUCING', 'HALTED')),
    reason        TEXT NOT NULL DEFAULT '',
    last_event_ns BIGINT NOT NULL DEFAULT 0,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

-- Control commands, once each (their command_id), for the audit trail and idempotency.
CREATE TABLE IF NOT EXISTS control_commands (
    command_id VARCHAR(64) PRIMARY KEY,
    time       TIMESTAMPTZ NOT NULL,
    account    VARCHAR(32) NOT NULL,
    issued_by  VARCHAR(64) NOT NULL,
    kind       VARCHAR(32) NOT NULL,
    payload    JSONB NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_control_commands_time ON control_commands (time DESC);

ALTER TABLE strategies ADD COLUMN IF NOT EXISTS account VARCHAR(32) NOT NULL DEFAULT 'paper';
ALTER TABLE strategies ADD COLUMN IF NOT EXISTS last_event_ns BIGINT NOT NULL DEFAULT 0;
