"""Strategy base, registry and built-in strategies (see the trading-path issue)."""
