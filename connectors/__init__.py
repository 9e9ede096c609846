"""All I/O: Kafka, PostgreSQL, broker feeds (simulator, Kite, Fyers) and embedded services."""
