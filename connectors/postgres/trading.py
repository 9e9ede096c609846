"""Trading topics into their tables: orders, order history, fills, positions, risk events,
the trading state and control commands (with the strategy deployments they change).

Every merge is idempotent and order-tolerant. The topics are consumed together but not in a
global order, so an order's status update may be staged before its intent: both upsert the
``orders`` row (an :class:`~schemas.orders.OrderUpdate` carries enough of the order to create
it), an intent only fills in what the venue does not know (purpose, signal, stop-loss), and a
status update applies only if it is not older than the stored one and the stored order is not
terminal yet. Positions, trading state and strategy rows keep the newest event by
``(ts_event, stream order)``. Control commands come from one single-partition topic, in
order, so the last enable/disable and the last configure of a batch win.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from connectors.postgres.sinks import TableSpec, _ts
from schemas.control import ConfigureStrategy, Control, DisableStrategy, EnableStrategy
from schemas.orders import Fill, OrderIntent, OrderUpdate, Position, VenueRequest
from schemas.risk import RiskEvent, RiskRejected, StopAlert, StrategyError, TradingStateChanged

_TERMINAL = "('COMPLETE', 'CANCELLED', 'REJECTED')"


def _intent_row(ev: Any) -> tuple[Any, ...] | None:
    if type(ev) is not OrderIntent:  # CancelOrder: its outcome arrives as an OrderUpdate
        return None
    return (
        _ts(ev.ts_event),
        ev.instrument,
        ev.client_order_id,
        ev.account,
        ev.strategy,
        ev.side.value,
        ev.qty,
        ev.order_type.value,
        ev.product.value,
        ev.price,
        ev.trigger_price,
        ev.purpose.value,
        ev.signal_id,
        ev.stop_loss,
        ev.take_profit,
        ev.reason,
    )


ORDERS = TableSpec(
    table="orders",
    value_type=VenueRequest,
    stage_columns="time timestamptz, symbol text, client_order_id text, account text, strategy text, side text, "
    "qty int, order_type text, product text, price float8, trigger_price float8, purpose text, signal_id text, "
    "stop_loss float8, take_profit float8, reason text",
    merge_sql="""INSERT INTO orders (client_order_id, account, strategy_id, instrument_id, side, quantity, price,
    trigger_price, order_type, product, purpose, signal_id, stop_loss, take_profit, reason, created_at, updated_at)
SELECT DISTINCT ON (s.client_order_id) s.client_order_id, s.account, s.strategy, i.id, s.side, s.qty, s.price,
       s.trigger_price, s.order_type, s.product, s.purpose, s.signal_id, s.stop_loss, s.take_profit, s.reason,
       s.time, s.time
FROM stage_orders s JOIN instruments i ON i.symbol = s.symbol
ORDER BY s.client_order_id, s.stage_seq
ON CONFLICT (client_order_id) DO UPDATE
SET purpose = EXCLUDED.purpose, signal_id = EXCLUDED.signal_id, stop_loss = EXCLUDED.stop_loss,
    take_profit = EXCLUDED.take_profit, reason = EXCLUDED.reason, price = EXCLUDED.price,
    trigger_price = EXCLUDED.trigger_price, created_at = LEAST(orders.created_at, EXCLUDED.created_at)""",
    row=_intent_row,
)


def _update_row(u: OrderUpdate) -> tuple[Any, ...]:
    return (
        _ts(u.ts_event),
        u.instrument,
        u.client_order_id,
        u.venue,
        u.venue_order_id,
        u.account,
        u.strategy,
        u.side.value,
        u.status.value,
        u.qty,
        u.filled_qty,
        u.avg_price,
        u.price,
        u.trigger_price,
        u.order_type.value,
        u.product.value,
        u.purpose.value,
        u.reason,
        u.ts_event,
    )


ORDER_UPDATES = TableSpec(
    table="order_updates",
    value_type=OrderUpdate,
    stage_columns="time timestamptz, symbol text, client_order_id text, venue text, venue_order_id text, "
    "account text, strategy text, side text, status text, qty int, filled int, avg_price float8, price float8, "
    "trigger_price float8, order_type text, product text, purpose text, reason text, ts bigint",
    merge_sql=f"""INSERT INTO orders AS o (client_order_id, account, strategy_id, instrument_id, side, quantity, price,
    trigger_price, order_type, product, purpose, venue, current_status, broker_order_id, filled_quantity,
    average_price, status_reason, created_at, updated_at, last_event_ns, executed_at, cancelled_at)
SELECT DISTINCT ON (s.client_order_id) s.client_order_id, s.account, s.strategy, i.id, s.side, s.qty, s.price,
       s.trigger_price, s.order_type, s.product, s.purpose, s.venue, s.status, s.venue_order_id, s.filled,
       s.avg_price, NULLIF(s.reason, ''), s.time, s.time, s.ts,
       CASE WHEN s.status = 'COMPLETE' THEN s.time END, CASE WHEN s.status = 'CANCELLED' THEN s.time END
FROM stage_order_updates s JOIN instruments i ON i.symbol = s.symbol
ORDER BY s.client_order_id, (s.status IN {_TERMINAL}) DESC, s.filled DESC, s.ts DESC, s.stage_seq DESC
ON CONFLICT (client_order_id) DO UPDATE
SET current_status = EXCLUDED.current_status, filled_quantity = EXCLUDED.filled_quantity,
    average_price = EXCLUDED.average_price, broker_order_id = EXCLUDED.broker_order_id, venue = EXCLUDED.venue,
    status_reason = EXCLUDED.status_reason, updated_at = EXCLUDED.updated_at, last_event_ns = EXCLUDED.last_event_ns,
    executed_at = COALESCE(EXCLUDED.executed_at, o.executed_at),
    cancelled_at = COALESCE(EXCLUDED.cancelled_at, o.cancelled_at)
WHERE o.current_status NOT IN {_TERMINAL}  -- the order the DISTINCT ON picks by: final, then filled, then time
  AND (EXCLUDED.current_status IN {_TERMINAL}, EXCLUDED.filled_quantity, EXCLUDED.last_event_ns)
      >= (FALSE, o.filled_quantity, o.last_event_ns);
INSERT INTO order_history (order_id, status, filled_quantity, timestamp, details)
SELECT o.id, s.status, s.filled, s.time,
       jsonb_build_object('avg_price', s.avg_price, 'reason', s.reason, 'venue_order_id', s.venue_order_id)
FROM stage_order_updates s JOIN orders o ON o.client_order_id = s.client_order_id
ON CONFLICT DO NOTHING""",
    row=_update_row,
)


def _fill_row(f: Fill) -> tuple[Any, ...]:
    return (
        _ts(f.ts_event),
        f.instrument,
        f.venue,
        f.trade_id,
        f.client_order_id,
        f.venue_order_id,
        f.account,
        f.strategy,
        f.side.value,
        f.qty,
        f.price,
        f.charges,
    )


FILLS = TableSpec(
    table="fills",
    value_type=Fill,
    stage_columns="time timestamptz, symbol text, venue text, trade_id text, client_order_id text, "
    "venue_order_id text, account text, strategy text, side text, qty int, price float8, charges float8",
    merge_sql="""INSERT INTO fills (venue, trade_id, client_order_id, venue_order_id, account, strategy_id,
    instrument_id, side, quantity, price, charges, time)
SELECT s.venue, s.trade_id, s.client_order_id, s.venue_order_id, s.account, s.strategy, i.id, s.side, s.qty,
       s.price, s.charges, s.time
FROM stage_fills s JOIN instruments i ON i.symbol = s.symbol
ON CONFLICT DO NOTHING""",
    row=_fill_row,
)


def _position_row(p: Position) -> tuple[Any, ...]:
    return (
        _ts(p.ts_event),
        p.instrument,
        p.account,
        p.strategy,
        p.qty,
        p.avg_price,
        p.realized_pnl,
        p.unrealized_pnl,
        p.last_price,
        p.ts_event,
        p.charges,
    )


POSITIONS = TableSpec(
    table="positions",
    value_type=Position,
    stage_columns="time timestamptz, symbol text, account text, strategy text, qty int, avg_price float8, "
    "realized float8, unrealized float8, last_price float8, ts bigint, charges float8",
    merge_sql="""INSERT INTO positions AS p (account, strategy_id, instrument_id, quantity, average_entry_price,
    current_price, unrealized_pnl, realized_pnl, status, opened_at, updated_at, closed_at, last_event_ns, charges)
SELECT DISTINCT ON (s.account, s.strategy, s.symbol) s.account, s.strategy, i.id, s.qty, s.avg_price, s.last_price,
       s.unrealized, s.realized, CASE WHEN s.qty = 0 THEN 'CLOSED' ELSE 'OPEN' END, s.time, s.time,
       CASE WHEN s.qty = 0 THEN s.time END, s.ts, s.charges
FROM stage_positions s JOIN instruments i ON i.symbol = s.symbol
ORDER BY s.account, s.strategy, s.symbol, s.ts DESC, s.stage_seq DESC
ON CONFLICT (account, strategy_id, instrument_id) DO UPDATE
SET quantity = EXCLUDED.quantity, average_entry_price = EXCLUDED.average_entry_price,
    current_price = EXCLUDED.current_price, unrealized_pnl = EXCLUDED.unrealized_pnl,
    realized_pnl = EXCLUDED.realized_pnl, charges = EXCLUDED.charges, status = EXCLUDED.status,
    updated_at = EXCLUDED.updated_at,
    closed_at = EXCLUDED.closed_at, last_event_ns = EXCLUDED.last_event_ns,
    opened_at = CASE WHEN p.status = 'CLOSED' AND EXCLUDED.status = 'OPEN' THEN EXCLUDED.opened_at ELSE p.opened_at END
WHERE p.last_event_ns <= EXCLUDED.last_event_ns""",
    row=_position_row,
)


def _risk_row(ev: Any) -> tuple[Any, ...]:
    payload = msgspec.json.encode(ev)
    kind = type(ev).__name__
    account = getattr(ev, "account", "")
    strategy = getattr(ev, "strategy", None)
    instrument = getattr(ev, "instrument", None)
    if type(ev) is RiskRejected:
        code, detail, state = ev.reason_code, ev.detail, None
    elif type(ev) is TradingStateChanged:
        code, detail, state = ev.current.value, ev.reason, ev.current.value
    elif type(ev) is StrategyError:
        code, detail, state = ev.error_type, ev.message, None
    elif type(ev) is StopAlert:
        code, detail, state = ev.code, ev.detail, None
    else:  # pragma: no cover - the codec only yields RiskEvent members
        code, detail, state = kind, "", None
    return (
        _ts(ev.ts_event),
        instrument,
        hashlib.blake2b(payload, digest_size=16).hexdigest(),  # idempotency key: the event itself
        account,
        kind,
        strategy,
        code,
        detail,
        payload.decode(),
        state,
        ev.ts_event,
    )


RISK_EVENTS = TableSpec(
    table="risk_events",
    value_type=RiskEvent,
    stage_columns="time timestamptz, symbol text, event_key text, account text, kind text, strategy text, "
    "reason_code text, detail text, payload text, state text, ts bigint",
    merge_sql="""INSERT INTO risk_events (event_key, time, account, kind, strategy_id, instrument, reason_code,
    detail, payload)
SELECT DISTINCT ON (s.event_key) s.event_key, s.time, s.account, s.kind, s.strategy, s.symbol, s.reason_code,
       s.detail, s.payload::jsonb
FROM stage_risk_events s ORDER BY s.event_key
ON CONFLICT (event_key) DO NOTHING;
INSERT INTO trading_state AS t (account, state, reason, last_event_ns, updated_at)
SELECT DISTINCT ON (s.account) s.account, s.state, s.detail, s.ts, s.time
FROM stage_risk_events s WHERE s.state IS NOT NULL
ORDER BY s.account, s.ts DESC, s.stage_seq DESC
ON CONFLICT (account) DO UPDATE
SET state = EXCLUDED.state, reason = EXCLUDED.reason, last_event_ns = EXCLUDED.last_event_ns,
    updated_at = EXCLUDED.updated_at
WHERE t.last_event_ns <= EXCLUDED.last_event_ns""",
    row=_risk_row,
    has_instrument=False,
)


def _command_row(cmd: Control) -> tuple[Any, ...]:
    strategy = getattr(cmd, "strategy", None)
    enabled: bool | None = None
    config: str | None = None
    if type(cmd) is EnableStrategy:
        enabled = True
    elif type(cmd) is DisableStrategy:
        enabled = False
    elif type(cmd) is ConfigureStrategy:
        config = msgspec.json.encode(cmd.params).decode()
    return (
        _ts(cmd.ts_event),
        getattr(cmd, "instrument", None),
        cmd.command_id,
        cmd.account,
        cmd.issued_by,
        type(cmd).__name__,
        msgspec.json.encode(cmd).decode(),
        strategy,
        enabled,
        config,
        cmd.ts_event,
    )


CONTROL = TableSpec(
    table="control_commands",
    value_type=Control,
    stage_columns="time timestamptz, symbol text, command_id text, account text, issued_by text, kind text, "
    "payload text, strategy text, enabled boolean, config text, ts bigint",
    merge_sql="""INSERT INTO control_commands (command_id, time, account, issued_by, kind, payload)
SELECT DISTINCT ON (s.command_id) s.command_id, s.time, s.account, s.issued_by, s.kind, s.payload::jsonb
FROM stage_control_commands s ORDER BY s.command_id
ON CONFLICT (command_id) DO NOTHING;
UPDATE strategies AS st SET is_enabled = c.enabled, last_event_ns = c.ts, updated_at = c.time
FROM (SELECT DISTINCT ON (s.strategy) s.strategy, s.enabled, s.ts, s.time FROM stage_control_commands s
      WHERE s.enabled IS NOT NULL ORDER BY s.strategy, s.stage_seq DESC) c
WHERE st.id = c.strategy;
UPDATE strategies AS st SET config = c.config::jsonb, last_event_ns = c.ts, updated_at = c.time
FROM (SELECT DISTINCT ON (s.strategy) s.strategy, s.config, s.ts, s.time FROM stage_control_commands s
      WHERE s.config IS NOT NULL ORDER BY s.strategy, s.stage_seq DESC) c
WHERE st.id = c.strategy""",
    row=_command_row,
    has_instrument=False,
)

# Topic (base name) -> table, for the trading part of flows.persist. Intents before updates,
# so a batch holding both merges the intent's fields first.
TRADING_TABLES: dict[str, TableSpec] = {
    "ord.intents": ORDERS,
    "ord.updates": ORDER_UPDATES,
    "ord.fills": FILLS,
    "pf.positions": POSITIONS,
    "risk.events": RISK_EVENTS,
    "ctl.commands": CONTROL,
}
