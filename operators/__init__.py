"""Pure trading logic (candles, indicators, validation, risk...) plus thin Bytewax wrappers.

Nothing here touches Kafka, PostgreSQL, the network, the environment or the clock.
"""
