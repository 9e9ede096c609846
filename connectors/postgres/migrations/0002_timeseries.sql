-- Time-series storage. With TimescaleDB (compose): hypertables with the seed's chunk
-- intervals, retention and compression policies. Without it (the embedded server):
-- BRIN indexes on time, and `ticktape db retention` deletes by the same policy.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
        PERFORM create_hypertable('tick_data', 'time', chunk_time_interval => INTERVAL '1 hour',
                                  if_not_exists => TRUE, migrate_data => TRUE);
        PERFORM create_hypertable('ohlc_candles', 'time', chunk_time_interval => INTERVAL '1 day',
                                  if_not_exists => TRUE, migrate_data => TRUE);
        PERFORM create_hypertable('order_book_snapshots', 'time', chunk_time_interval => INTERVAL '1 hour',
                                  if_not_exists => TRUE, migrate_data => TRUE);
        PERFORM create_hypertable('order_history', 'timestamp', chunk_time_interval => INTERVAL '30 days',
                                  if_not_exists => TRUE, migrate_data => TRUE);
        PERFORM add_retention_policy('tick_data', INTERVAL '30 days', if_not_exists => TRUE);
        PERFORM add_retention_policy('ohlc_candles', INTERVAL '2 years', if_not_exists => TRUE);
        PERFORM add_retention_policy('order_book_snapshots', INTERVAL '7 days', if_not_exists => TRUE);
        PERFORM add_retention_policy('order_history', INTERVAL '5 years', if_not_exists => TRUE);
        ALTER TABLE tick_data SET (timescaledb.compress, timescaledb.compress_segmentby = 'instrument_id');
        ALTER TABLE ohlc_candles SET (timescaledb.compress, timescaledb.compress_segmentby = 'instrument_id, timeframe');
        ALTER TABLE order_book_snapshots SET (timescaledb.compress, timescaledb.compress_segmentby = 'instrument_id');
        PERFORM add_compression_policy('tick_data', INTERVAL '1 day', if_not_exists => TRUE);
        PERFORM add_compression_policy('ohlc_candles', INTERVAL '7 days', if_not_exists => TRUE);
        PERFORM add_compression_policy('order_book_snapshots', INTERVAL '1 day', if_not_exists => TRUE);
    ELSE
        CREATE INDEX IF NOT EXISTS brin_tick_data_time ON tick_data USING brin (time);
        CREATE INDEX IF NOT EXISTS brin_ohlc_candles_time ON ohlc_candles USING brin (time);
        CREATE INDEX IF NOT EXISTS brin_order_book_time ON order_book_snapshots USING brin (time);
        CREATE INDEX IF NOT EXISTS brin_order_history_time ON order_history USING brin (timestamp);
    END IF;
END $$;

-- The policy, in one place for both storage kinds (read by `ticktape db retention`).
CREATE TABLE IF NOT EXISTS retention_policies (
    table_name  VARCHAR(63) PRIMARY KEY,
    time_column VARCHAR(63) NOT NULL,
    keep        INTERVAL NOT NULL
);
INSERT INTO retention_policies (table_name, time_column, keep) VALUES
    ('tick_data', 'time', INTERVAL '30 days'),
    ('ohlc_candles', 'time', INTERVAL '2 years'),
    ('order_book_snapshots', 'time', INTERVAL '7 days'),
    ('order_history', 'timestamp', INTERVAL '5 years')
ON CONFLICT (table_name) DO UPDATE SET time_column = EXCLUDED.time_column, keep = EXCLUDED.keep;
