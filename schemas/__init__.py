"""Event and config models shared by every ticktape component.

Events are frozen, keyword-only, tagged msgspec Structs. Timestamps are UTC epoch
nanoseconds: ``ts_event`` is when the thing happened (exchange time for market data),
``ts_init`` is when ticktape created the event. Nothing in this package reads the clock,
the environment or the network.
"""
