-- One row per start of flows.live with trading on: what it runs and from when it may trade,
-- so `ticktape replay --from-recorded` can replay the session's ticks exactly as it saw them.
CREATE TABLE IF NOT EXISTS live_sessions (
    id            SERIAL PRIMARY KEY,
    started_at    TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    topic_prefix  VARCHAR(100) NOT NULL DEFAULT '',
    trade_from    BIGINT NOT NULL,                 -- ns: candles closing earlier only warm the strategies
    deployments   JSONB NOT NULL,                  -- [{id, kind, params, account, enabled}]
    accounts      TEXT[] NOT NULL,
    halted        TEXT[] NOT NULL DEFAULT '{}',
    timeframes    TEXT[] NOT NULL,
    indicators    TEXT[] NOT NULL,
    warmup_days   INTEGER NOT NULL,
    recovery      BOOLEAN NOT NULL                 -- Bytewax recovery on (a restart resumes its state)
);
