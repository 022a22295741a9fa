"""A real HTTP collector on 127.0.0.1 (port 0) for the tests, scriptable per request.

It is the reference collector's server (``sqreen.cli.reference.Receiver``) with a handler that
records every request. Behaviours are functions of the decoded batch returning what to do;
``respond_with`` queues them for the next requests, after which the default (accept) applies.
Accepting checks the batch against the wire format as ``sqreen-spool collect`` does, so every
delivery test also checks what the flusher sends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from sqreen.cli.reference import Answer, Received, Receiver, error
from sqreen.wire import check_batch

Behaviour = Callable[[dict[str, Any]], Answer]


def accept(rejected: Iterable[str] = (), reason: str = "refused by test") -> Behaviour:
    def behaviour(batch: dict[str, Any]) -> Answer:
        problem, refused = check_batch(batch)
        if problem is not None:
            return error(400, problem)
        refused |= {i: reason for i in {e["id"] for e in batch["events"]} & set(rejected)}
        if not refused:
            return Answer(200)
        return Answer(
            200,
            orjson.dumps({"rejected": [{"id": i, "reason": why} for i, why in refused.items()]}),
        )

    return behaviour


def status(code: int, **headers: str) -> Behaviour:
    return lambda batch: Answer(code, b'{"error": "scripted"}', dict(headers))


def hang(seconds: float) -> Behaviour:
    return lambda batch: Answer(200, delay=seconds)


def reset() -> Behaviour:
    return lambda batch: Answer(reset=True)


def bad_ids(ids: Iterable[str], code: int = 400) -> Behaviour:
    """Answer ``code`` to any batch holding one of ``ids``, accept the others."""
    wanted = set(ids)

    def behaviour(batch: dict[str, Any]) -> Answer:
        if any(e["id"] in wanted for e in batch["events"]):
            return Answer(code, b'{"error": "bad event"}')
        return Answer(200)

    return behaviour


def larger_than(limit: int, code: int = 413) -> Behaviour:
    return lambda batch: Answer(code) if len(batch["events"]) > limit else Answer(200)


@dataclass
class Request:
    headers: dict[str, str]
    body: bytes
    batch: dict[str, Any]
    answer: Answer


class Collector(Receiver):
    def __init__(self) -> None:
        super().__init__(self._record)
        self.requests: list[Request] = []
        self._script: list[Behaviour] = []
        self.default: Behaviour = accept()
        self._lock = threading.Lock()
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/events"

    def _record(self, received: Received) -> Answer:
        answer = self._next()(received.batch)
        with self._lock:
            self.requests.append(Request(received.headers, received.body, received.batch, answer))
        return answer

    def respond_with(self, *behaviours: Behaviour) -> None:
        with self._lock:
            self._script.extend(behaviours)

    def _next(self) -> Behaviour:
        with self._lock:
            return self._script.pop(0) if self._script else self.default

    def received_events(self) -> list[dict[str, Any]]:
        """Events of every batch the collector processed with a 2xx, including answers the
        client no longer waited for: what a real collector would have stored."""
        return [
            e
            for r in self.requests
            if not r.answer.reset and 200 <= r.answer.status < 300
            for e in r.batch["events"]
        ]

    def accepted_events(self) -> list[dict[str, Any]]:
        """Events the collector acknowledged (2xx and not named as rejected), in arrival order."""
        events = []
        for request in self.requests:
            answer = request.answer
            if answer.reset or answer.delay or not 200 <= answer.status < 300:
                continue
            refused = {r["id"] for r in orjson.loads(answer.body or b"{}").get("rejected", [])}
            events += [e for e in request.batch["events"] if e["id"] not in refused]
        return events
