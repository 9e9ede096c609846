-- Backtest runs as `ticktape backtest` records them: the whole spec (deployments, data,
-- window, risk and slippage settings) and the output directory; trades still open at the
-- end of a run are marked to the last price and flagged.
ALTER TABLE backtest_runs ADD COLUMN IF NOT EXISTS spec JSONB;
ALTER TABLE backtest_runs ADD COLUMN IF NOT EXISTS out_dir TEXT;
ALTER TABLE backtest_trades ADD COLUMN IF NOT EXISTS closed BOOLEAN NOT NULL DEFAULT TRUE;
CREATE INDEX IF NOT EXISTS idx_backtest_runs_created ON backtest_runs (created_at DESC);
CREATE INDEX IF NOT EXISTS idx_backtest_trades_strategy ON backtest_trades (run_id, strategy);
