"""The playbook engine on a real SQLite file: windows by event time, distinct counts, reset_on,
repeat, critical and private IPs, late events, bounded state, the action list's budget."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from sqreen.automation import state
from sqreen.automation.engine import MAX_HITS, Decision, Engine, live_actions
from sqreen.automation.playbooks import parse

T0 = 1_700_000_000.0


def at(seconds: float) -> str:
    return datetime.fromtimestamp(T0 + seconds, UTC).isoformat()


def event(name: str, when: float, ip: str = "198.51.100.7", **fields: Any) -> dict[str, Any]:
    found = {"id": str(uuid.uuid4()), "name": name, "timestamp": at(when), "request": {"ip": ip}}
    return found | fields


def failed(when: float, ip: str = "198.51.100.7", user: str = "ada") -> dict[str, Any]:
    return event(
        "sqreen.auth_track",
        when,
        ip,
        properties={"success": False},
        user_identifiers={"email": user},
    )


@pytest.fixture
def connection(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    state.create(connection)
    yield connection
    connection.close()


def run(
    connection: sqlite3.Connection, text: str, events: list[dict[str, Any]], now: float | None
) -> list[Decision]:
    return Engine(parse(text)).process(connection, events, now)


WHERE = 'where = { "properties.amount" = { ge = 10 }, "request.path" = { matches = "^/checkout" } }'
COUPONS = f"""
[[playbook]]
name = "coupons"
event = "coupon.invalid"
{WHERE}
group_by = "ip"
threshold = 3
within = "5m"
action = "block_ip"
duration = "1h"
"""


def coupon(when: float, amount: int = 20, path: str = "/checkout/1", **kw: Any) -> dict[str, Any]:
    found = event("coupon.invalid", when, properties={"amount": amount}, **kw)
    found["request"]["path"] = path
    return found


def test_a_custom_event_crosses_its_threshold_within_the_window(
    connection: sqlite3.Connection,
) -> None:
    events = [coupon(0), coupon(10, amount=5), coupon(20, path="/cart"), coupon(400), coupon(500)]
    assert run(connection, COUPONS, events, None) == []  # 2 match in 5 minutes, never 3
    crossing = coupon(520)
    (decision,) = run(connection, COUPONS, [crossing], None)
    assert (decision.playbook, decision.action, decision.status) == (
        "coupons",
        "block_ip",
        "issued",
    )
    assert decision.key == {"ip": "198.51.100.7"}
    assert decision.events[-1] == crossing["id"] and len(decision.events) == 3
    assert decision.parameters == {"ip_cidr": ["198.51.100.7"]}
    assert decision.expires == pytest.approx(T0 + 520 + 3600)


def test_windows_count_by_event_time_and_a_late_event_decides(
    connection: sqlite3.Connection,
) -> None:
    # Two events an hour ago arrive now, then the one that happened between them.
    first, second, late = coupon(0), coupon(200), coupon(100)
    now = T0 + 3600
    assert run(connection, COUPONS, [first, second], now) == []
    (decision,) = run(connection, COUPONS, [late], now)
    assert decision.status == "late"  # too late to matter: reported, never blocked
    assert decision.crossed_at == T0 + 100
    assert live_actions(connection, now, 1 << 20) == ([], 0)


def test_distinct_counts_values_not_events(connection: sqlite3.Connection) -> None:
    stuffing = """
[[playbook]]
name = "stuffing"
event = "sqreen.auth_track"
where = { "properties.success" = false }
group_by = "ip"
distinct = "user"
threshold = 3
within = "10m"
action = "block_ip"
duration = "1d"
"""
    same_user = [failed(i, user="ada") for i in range(10)]
    assert run(connection, stuffing, same_user, None) == []
    (decision,) = run(connection, stuffing, [failed(11, user="bo"), failed(12, user="cy")], None)
    assert decision.key == {"ip": "198.51.100.7"}


def test_reset_on_clears_the_count_and_repeat_lengthens_the_block(
    connection: sqlite3.Connection,
) -> None:
    text = """
[[playbook]]
name = "logins"
event = "sqreen.auth_track"
where = { "properties.success" = false }
group_by = ["user", "ip"]
threshold = 3
within = "10m"
action = "block_ip"
duration = "1m"
repeat = 2
reset_on = { event = "sqreen.auth_track", where = { "properties.success" = true } }
"""
    success = event(
        "sqreen.auth_track", 2, properties={"success": True}, user_identifiers={"email": "ada"}
    )
    assert run(connection, text, [failed(0), failed(1), success, failed(3)], None) == []
    assert run(connection, text, [failed(4)], None) == []  # two since the success
    (first,) = run(connection, text, [failed(5)], None)
    assert first.key == {"ip": "198.51.100.7", "user": {"email": "ada"}}
    assert first.expires == pytest.approx(T0 + 5 + 60)
    assert run(connection, text, [failed(30)], None) == []  # stopped by the block
    again = [failed(100 + i) for i in range(3)]
    (second,) = run(connection, text, again, None)
    assert second.expires == pytest.approx(T0 + 102 + 120)  # twice as long
    (row,) = [r for r in state.decisions(connection) if r["id"] == first.id]
    assert row["stopped"] == 1


def test_critical_and_private_ips_are_never_blocked(connection: sqlite3.Connection) -> None:
    text = COUPONS.replace("[[playbook]]", 'critical_ips = ["203.0.113.0/24"]\n[[playbook]]')
    for ip in ("203.0.113.9", "10.1.2.3", "127.0.0.1", "fe80::1", "192.168.1.1"):
        decisions = run(connection, text, [coupon(i, ip=ip) for i in range(3)], None)
        assert [d.status for d in decisions] == ["critical"], ip
    assert live_actions(connection, T0 + 10, 1 << 20) == ([], 0)
    allowed = "allow_private = true\n" + COUPONS
    (decision,) = run(connection, allowed, [coupon(i, ip="10.9.9.9") for i in range(3)], None)
    assert decision.status == "issued"


def test_a_playbook_keys_only_on_one_address_or_one_user(connection: sqlite3.Connection) -> None:
    text = COUPONS.replace('group_by = "ip"', 'group_by = "ip"\n')
    ranges = [coupon(i, ip=ip) for i in range(3) for ip in ("0.0.0.0/0", "::/0", "", "x")]
    assert run(connection, text, ranges, None) == []
    nobody = [failed(i) | {"user_identifiers": {}} for i in range(5)]
    text = COUPONS.replace('"coupon.invalid"', '"sqreen.auth_track"').replace(WHERE, "")
    text = text.replace('group_by = "ip"', 'group_by = "user"').replace("block_ip", "block_user")
    assert run(connection, text, nobody, None) == []


def test_dry_run_decides_but_issues_nothing(connection: sqlite3.Connection) -> None:
    text = COUPONS + "dry_run = true\n"
    (decision,) = run(connection, text, [coupon(i) for i in range(3)], None)
    assert decision.status == "dry_run"
    assert live_actions(connection, T0 + 10, 1 << 20) == ([], 0)


def test_state_is_bounded_and_evictions_are_counted(
    connection: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqreen.automation import engine

    monkeypatch.setattr(engine, "MAX_HITS", 50)
    monkeypatch.setattr(engine, "EXPIRE_EVERY", 10)
    distinct_users = [failed(i, user=f"u{i}") for i in range(300)]
    text = COUPONS.replace('"coupon.invalid"', '"sqreen.auth_track"').replace(WHERE, "")
    text = text.replace('group_by = "ip"', 'group_by = ["user", "ip"]').replace("3", "5")
    assert run(connection, text, distinct_users, None) == []
    assert connection.execute("SELECT count(*) FROM pb_hits").fetchone()[0] <= 50
    assert state.counters(connection)["evicted"] >= 250
    # Expired windows go too: an hour and a window later, nothing of them is left.
    assert run(connection, text, [failed(4000, user="late")], None) == []
    Engine(parse(text))._expire(connection, T0 + 4000 + 3600 + 700)
    assert connection.execute("SELECT count(*) FROM pb_hits").fetchone()[0] == 0
    assert MAX_HITS >= 100_000


def test_the_action_list_fits_its_budget_most_severe_and_recent_first(
    connection: sqlite3.Connection,
) -> None:
    text = COUPONS.replace("threshold = 3", "threshold = 1")
    redirect = text.replace('name = "coupons"', 'name = "r"').replace(
        'action = "block_ip"', 'action = "redirect_ip"\nurl = "https://example.com/x"'
    )
    events = [coupon(i, ip=f"198.51.100.{i}") for i in range(1, 200)]
    run(connection, text + "\n" + redirect, events, None)
    now = T0 + 300
    everything, omitted = live_actions(connection, now, 1 << 20)
    assert omitted == 0 and len(everything) == 398
    assert {a["action"] for a in everything[:199]} == {"block_ip"}
    assert everything[0]["parameters"]["ip_cidr"] == ["198.51.100.199"]  # the most recent first
    some, omitted = live_actions(connection, now, 4096)
    assert 0 < len(some) < 398 and len(some) + omitted == 398
    assert {a["action"] for a in some} == {"block_ip"}
    assert len(orjson.dumps(some)) <= 4096
