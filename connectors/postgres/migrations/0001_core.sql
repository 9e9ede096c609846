-- Core schema: the seed's nine tables (corrected) plus fills, risk events, audit log, users,
-- backtests and the Kafka offsets the persistence flow commits together with its rows.
-- Every statement is idempotent (IF NOT EXISTS) so a re-run changes nothing.

CREATE TABLE IF NOT EXISTS instruments (
    id               SERIAL PRIMARY KEY,
    symbol           VARCHAR(64) NOT NULL UNIQUE,      -- canonical key EXCHANGE:TRADINGSYMBOL
    instrument_token BIGINT,                            -- broker token (Kite instrument_token)
    exchange_token   BIGINT,
    tradingsymbol    VARCHAR(50) NOT NULL,
    name             VARCHAR(100),
    exchange         VARCHAR(20) NOT NULL,
    segment          VARCHAR(20),
    instrument_type  VARCHAR(20) NOT NULL,
    tick_size        NUMERIC(10,4),
    lot_size         INTEGER,
    expiry_date      DATE,
    strike_price     NUMERIC(12,2),
    underlying       VARCHAR(64),
    freeze_qty       INTEGER,
    last_price       NUMERIC(12,4),
    is_active        BOOLEAN NOT NULL DEFAULT TRUE,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX IF NOT EXISTS idx_instruments_active ON instruments (is_active);
CREATE INDEX IF NOT EXISTS idx_instruments_underlying ON instruments (underlying, expiry_date);

-- One row per tick. Kite stamps whole seconds, so (time, instrument_id) alone is not
-- unique: seq is the per-instrument feed sequence number.
CREATE TABLE IF NOT EXISTS tick_data (
    time          TIMESTAMPTZ NOT NULL,
    instrument_id INTEGER NOT NULL REFERENCES instruments (id),
    seq           BIGINT NOT NULL,
    price         NUMERIC(12,4) NOT NULL,
    quantity      INTEGER NOT NULL,
    volume        BIGINT NOT NULL,
    oi            BIGINT NOT NULL DEFAULT 0,
    bid           NUMERIC(12,4),
    ask           NUMERIC(12,4),
    bid_qty       INTEGER,
    ask_qty       INTEGER,
    trade_id      VARCHAR(50),
    exchange      VARCHAR(20) NOT NULL,
    CONSTRAINT tick_data_pkey PRIMARY KEY (time, instrument_id, seq)
);
CREATE INDEX IF NOT EXISTS idx_tick_data_instrument_time ON tick_data (instrument_id, time DESC);

CREATE TABLE IF NOT EXISTS ohlc_candles (
    time          TIMESTAMPTZ NOT NULL,                 -- bar open time
    instrument_id INTEGER NOT NULL REFERENCES instruments (id),
    timeframe     VARCHAR(10) NOT NULL,                 -- '1s', '5s', '1m', '5m', '15m', '1h', '1d', ...
    open_price    NUMERIC(12,4) NOT NULL,
    high_price    NUMERIC(12,4) NOT NULL,
    low_price     NUMERIC(12,4) NOT NULL,
    close_price   NUMERIC(12,4) NOT NULL,
    volume        BIGINT NOT NULL,
    trade_count   INTEGER,
    vwap          NUMERIC(12,4),
    oi            BIGINT,
    CONSTRAINT ohlc_candles_pkey PRIMARY KEY (time, instrument_id, timeframe)
);
CREATE INDEX IF NOT EXISTS idx_ohlc_instrument_timeframe ON ohlc_candles (instrument_id, timeframe, time DESC);

CREATE TABLE IF NOT EXISTS order_book_snapshots (
    time               TIMESTAMPTZ NOT NULL,
    instrument_id      INTEGER NOT NULL REFERENCES instruments (id),
    bid_prices         NUMERIC(12,4)[] NOT NULL,
    bid_quantities     INTEGER[] NOT NULL,
    bid_orders         INTEGER[],
    ask_prices         NUMERIC(12,4)[] NOT NULL,
    ask_quantities     INTEGER[] NOT NULL,
    ask_orders         INTEGER[],
    total_bid_quantity BIGINT,
    total_ask_quantity BIGINT,
    CONSTRAINT order_book_pkey PRIMARY KEY (time, instrument_id)
);
CREATE INDEX IF NOT EXISTS idx_order_book_instrument_time ON order_book_snapshots (instrument_id, time DESC);

-- The seed names BUY/SELL "order_type" and MARKET/LIMIT "order_kind"; here they are
-- side and order_type, as brokers call them. client_order_id is the idempotency key.
CREATE TABLE IF NOT EXISTS orders (
    id               UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    client_order_id  VARCHAR(20) NOT NULL UNIQUE,
    account          VARCHAR(32) NOT NULL,
    strategy_id      VARCHAR(100) NOT NULL,
    instrument_id    INTEGER NOT NULL REFERENCES instruments (id),
    side             VARCHAR(4) NOT NULL CHECK (side IN ('BUY', 'SELL')),
    quantity         INTEGER NOT NULL CHECK (quantity > 0),
    price            NUMERIC(12,4),
    trigger_price    NUMERIC(12,4),
    order_type       VARCHAR(10) NOT NULL CHECK (order_type IN ('MARKET', 'LIMIT', 'SL', 'SL-M')),
    product          VARCHAR(10) NOT NULL DEFAULT 'MIS',
    venue            VARCHAR(20) NOT NULL DEFAULT 'sim',
    current_status   VARCHAR(20) NOT NULL DEFAULT 'PENDING',
    broker_order_id  VARCHAR(100),
    filled_quantity  INTEGER NOT NULL DEFAULT 0,
    average_price    NUMERIC(12,4),
    status_reason    TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    executed_at      TIMESTAMPTZ,
    cancelled_at     TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS idx_orders_strategy ON orders (strategy_id);
CREATE INDEX IF NOT EXISTS idx_orders_current_status ON orders (current_status);
CREATE INDEX IF NOT EXISTS idx_orders_created_at ON orders (created_at DESC);
CREATE INDEX IF NOT EXISTS idx_orders_broker_order_id ON orders (broker_order_id);

-- The seed's DDL put CREATE INDEX inside CREATE TABLE; the indexes follow the table here.
-- The time column is part of the key so the table can become a hypertable.
CREATE TABLE IF NOT EXISTS order_history (
    id              BIGSERIAL,
    order_id        UUID NOT NULL REFERENCES orders (id),
    status          VARCHAR(20) NOT NULL,
    filled_quantity INTEGER NOT NULL DEFAULT 0,
    timestamp       TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    details         JSONB,
    CONSTRAINT order_history_pkey PRIMARY KEY (id, timestamp),
    CONSTRAINT order_history_event_key UNIQUE (timestamp, order_id, status, filled_quantity)
);
CREATE INDEX IF NOT EXISTS idx_order_history_order_id ON order_history (order_id);
CREATE INDEX IF NOT EXISTS idx_order_history_timestamp ON order_history (timestamp DESC);

CREATE TABLE IF NOT EXISTS positions (
    id                  UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    account             VARCHAR(32) NOT NULL DEFAULT 'paper',
    strategy_id         VARCHAR(100) NOT NULL,
    instrument_id       INTEGER NOT NULL REFERENCES instruments (id),
    quantity            INTEGER NOT NULL,             -- positive long, negative short
    average_entry_price NUMERIC(12,4) NOT NULL,
    current_price       NUMERIC(12,4),
    unrealized_pnl      NUMERIC(14,2),
    realized_pnl        NUMERIC(14,2) NOT NULL DEFAULT 0,
    stop_loss_price     NUMERIC(12,4),
    target_price        NUMERIC(12,4),
    status              VARCHAR(20) NOT NULL DEFAULT 'OPEN',
    opened_at           TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    closed_at           TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS idx_positions_strategy ON positions (strategy_id);
CREATE INDEX IF NOT EXISTS idx_positions_status ON positions (status);
CREATE UNIQUE INDEX IF NOT EXISTS idx_positions_strategy_instrument
    ON positions (account, strategy_id, instrument_id) WHERE status = 'OPEN';

CREATE TABLE IF NOT EXISTS strategies (
    id             VARCHAR(100) PRIMARY KEY,
    name           VARCHAR(200) NOT NULL,
    description    TEXT,
    class_name     VARCHAR(100) NOT NULL,
    config         JSONB NOT NULL,
    is_enabled     BOOLEAN NOT NULL DEFAULT FALSE,
    execution_mode VARCHAR(20) NOT NULL DEFAULT 'PAPER' CHECK (execution_mode IN ('LIVE', 'PAPER')),
    created_at     TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX IF NOT EXISTS idx_strategies_enabled ON strategies (is_enabled);
CREATE INDEX IF NOT EXISTS idx_strategies_mode ON strategies (execution_mode);

-- Envelope encryption: each row's secrets are encrypted with its own data key, which is
-- stored wrapped by the master key named by encryption_key_id (so master keys can rotate).
CREATE TABLE IF NOT EXISTS broker_credentials (
    id                SERIAL PRIMARY KEY,
    broker_name       VARCHAR(50) NOT NULL,
    encrypted_api_key BYTEA NOT NULL,
    encrypted_secret  BYTEA NOT NULL,
    wrapped_data_key  BYTEA NOT NULL,
    encryption_key_id VARCHAR(50) NOT NULL,
    config            JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

CREATE TABLE IF NOT EXISTS fills (
    id              BIGSERIAL PRIMARY KEY,
    venue           VARCHAR(20) NOT NULL,
    trade_id        VARCHAR(64) NOT NULL,
    client_order_id VARCHAR(20) NOT NULL,
    venue_order_id  VARCHAR(100) NOT NULL,
    account         VARCHAR(32) NOT NULL,
    strategy_id     VARCHAR(100) NOT NULL,
    instrument_id   INTEGER NOT NULL REFERENCES instruments (id),
    side            VARCHAR(4) NOT NULL CHECK (side IN ('BUY', 'SELL')),
    quantity        INTEGER NOT NULL CHECK (quantity > 0),
    price           NUMERIC(12,4) NOT NULL,
    charges         NUMERIC(12,4) NOT NULL DEFAULT 0,
    time            TIMESTAMPTZ NOT NULL,
    CONSTRAINT fills_venue_trade UNIQUE (venue, trade_id)
);
CREATE INDEX IF NOT EXISTS idx_fills_client_order_id ON fills (client_order_id);
CREATE INDEX IF NOT EXISTS idx_fills_time ON fills (time DESC);

CREATE TABLE IF NOT EXISTS risk_events (
    id            BIGSERIAL PRIMARY KEY,
    event_key     VARCHAR(64) NOT NULL UNIQUE,           -- hash of the encoded event: idempotent inserts
    time          TIMESTAMPTZ NOT NULL,
    account       VARCHAR(32) NOT NULL,
    kind          VARCHAR(32) NOT NULL,                  -- RiskRejected / TradingStateChanged / StrategyError
    strategy_id   VARCHAR(100),
    instrument    VARCHAR(64),
    reason_code   VARCHAR(64),
    detail        TEXT,
    payload       JSONB NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_risk_events_time ON risk_events (time DESC);

CREATE TABLE IF NOT EXISTS users (
    id              SERIAL PRIMARY KEY,
    username        VARCHAR(64) NOT NULL UNIQUE,
    password_hash   TEXT NOT NULL,                        -- Argon2id
    totp_secret_enc BYTEA,
    totp_enabled    BOOLEAN NOT NULL DEFAULT FALSE,
    last_totp_step  BIGINT,
    failed_attempts INTEGER NOT NULL DEFAULT 0,
    locked_until    TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

-- Append-only: the trigger below refuses UPDATE and DELETE.
CREATE TABLE IF NOT EXISTS audit_log (
    id        BIGSERIAL PRIMARY KEY,
    time      TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    actor     VARCHAR(64) NOT NULL,
    action    VARCHAR(64) NOT NULL,
    target    VARCHAR(200),
    success   BOOLEAN NOT NULL,
    client_ip VARCHAR(64),
    details   JSONB NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX IF NOT EXISTS idx_audit_log_time ON audit_log (time DESC);

CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP;
END $$;
DROP TRIGGER IF EXISTS audit_log_no_change ON audit_log;
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();

CREATE TABLE IF NOT EXISTS backtest_runs (
    id           VARCHAR(64) PRIMARY KEY,
    status       VARCHAR(20) NOT NULL DEFAULT 'PENDING',
    strategy     VARCHAR(100) NOT NULL,
    params       JSONB NOT NULL DEFAULT '{}'::jsonb,
    instruments  TEXT[] NOT NULL DEFAULT '{}',
    data_source  TEXT NOT NULL,
    timeframe    VARCHAR(10),
    from_time    TIMESTAMPTZ,
    to_time      TIMESTAMPTZ,
    metrics      JSONB,
    error        TEXT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    started_at   TIMESTAMPTZ,
    finished_at  TIMESTAMPTZ
);

CREATE TABLE IF NOT EXISTS backtest_trades (
    run_id      VARCHAR(64) NOT NULL REFERENCES backtest_runs (id) ON DELETE CASCADE,
    trade_no    INTEGER NOT NULL,
    strategy    VARCHAR(100) NOT NULL,
    instrument  VARCHAR(64) NOT NULL,
    side        VARCHAR(5) NOT NULL CHECK (side IN ('LONG', 'SHORT')),
    quantity    INTEGER NOT NULL,
    entry_time  TIMESTAMPTZ NOT NULL,
    entry_price NUMERIC(12,4) NOT NULL,
    exit_time   TIMESTAMPTZ,
    exit_price  NUMERIC(12,4),
    pnl_gross   NUMERIC(14,2),
    charges     NUMERIC(14,2),
    pnl_net     NUMERIC(14,2),
    PRIMARY KEY (run_id, trade_no)
);

-- Offsets a consumer committed in the same transaction as the rows it wrote
-- (exactly-once into PostgreSQL). cluster_id ties them to one broker incarnation:
-- the embedded broker is memory-only, and offsets of a previous one mean nothing.
CREATE TABLE IF NOT EXISTS kafka_offsets (
    consumer    VARCHAR(100) NOT NULL,
    topic       VARCHAR(249) NOT NULL,
    partition   INTEGER NOT NULL,
    cluster_id  VARCHAR(100) NOT NULL,
    next_offset BIGINT NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    PRIMARY KEY (consumer, topic, partition)
);
