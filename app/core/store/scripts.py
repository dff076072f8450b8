"""The job store's Lua scripts, and the one place that names their KEYS and ARGV.

Each script is a file in ``lua/`` (package data), run after the shared ``lua/lib.lua``
and a prelude generated here from the script's declaration, which binds every name::

    local K = {job = KEYS[1], events = KEYS[2], ...}            -- the keys
    local A = {id = ARGV[1], ttl = tonumber(ARGV[4]), ...}      -- the arguments
    A.fields = {unpack(ARGV, _at, #ARGV)}                       -- a variadic tail

so the Lua code says ``K.job`` and ``A.ttl``, never ``KEYS[1]`` or ``ARGV[4]``. The
Python side passes the same names (:meth:`Script.build` refuses a missing or unknown
one) and this module puts them in the declared order. A tail is a flat list (pairs,
say); every tail but the last travels after its length.

Single node only (no cluster hash slots); the scripts run by EVALSHA through redis-py's
``register_script``, so they work in pipelines too.
"""

from __future__ import annotations

import functools
import re
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis
import redis.asyncio as aredis
from redis.commands.core import Script as RedisScript

__all__ = [
    "Script",
    "Runner",
    "StoreScripts",
    "SCRIPTS",
    "JOB_KEYS",
    "COMMON",
    "lua_text",
]

_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")


@functools.cache
def lua_text(name: str) -> str:
    """The text of ``lua/{name}.lua``, read from the installed package."""
    return resources.files("app.core.store").joinpath("lua", f"{name}.lua").read_text("utf-8")


@dataclass(frozen=True)
class Script:
    """One script's declaration: the names of its keys, arguments and variadic tails, in
    their KEYS/ARGV order. ``numbers`` are the arguments the prelude converts with
    ``tonumber`` (the others stay strings: an attempt, say, is compared with the stored
    one as text)."""

    name: str
    keys: tuple[str, ...]
    args: tuple[str, ...]
    numbers: frozenset[str] = frozenset()
    tails: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = [*self.keys, *self.args, *self.tails]
        bad = [n for n in names if not _NAME.match(n)]
        if bad:
            raise ValueError(f"script {self.name}: names not fit for Lua: {bad}")
        for group in (self.keys, (*self.args, *self.tails)):
            if len(set(group)) != len(group):
                raise ValueError(f"script {self.name}: a name declared twice in {group}")
        if not self.numbers <= set(self.args):
            raise ValueError(f"script {self.name}: numbers {set(self.numbers) - set(self.args)}")

    def prelude(self) -> str:
        """The Lua lines that bind the declared names (generated, never edited)."""
        keys = ", ".join(f"{k} = KEYS[{i}]" for i, k in enumerate(self.keys, 1))
        args = ", ".join(
            f"{a} = tonumber(ARGV[{i}])" if a in self.numbers else f"{a} = ARGV[{i}]"
            for i, a in enumerate(self.args, 1)
        )
        lines = [
            f"-- generated from the declaration of {self.name!r} in app/core/store/scripts.py",
            f"local K = {{{keys}}}",
            f"local A = {{{args}}}",
        ]
        if self.tails:
            # _at: where the next tail (or its length) starts in ARGV.
            lines.append(f"local _at = {len(self.args) + 1}")
            for tail in self.tails[:-1]:
                lines.append(f"A.{tail} = {{unpack(ARGV, _at + 1, _at + tonumber(ARGV[_at]))}}")
                lines.append(f"_at = _at + 1 + #A.{tail}")
            lines.append(f"A.{self.tails[-1]} = {{unpack(ARGV, _at, #ARGV)}}")
        return "\n".join(lines) + "\n"

    @property
    def source(self) -> str:
        """The whole script as Redis runs it: the library, the prelude, the script's file."""
        return lua_text("lib") + self.prelude() + lua_text(self.name)

    def build(
        self, keys: Mapping[str, Any], args: Mapping[str, Any]
    ) -> tuple[list[Any], list[Any]]:
        """KEYS and ARGV from named values; ``args`` holds the tails too (sequences).
        Raises TypeError for a missing or unknown name, or a tail that is no sequence."""
        _check(self.name, "keys", self.keys, keys)
        _check(self.name, "args", (*self.args, *self.tails), args)
        argv = [args[a] for a in self.args]
        for i, tail in enumerate(self.tails):
            values = args[tail]
            if isinstance(values, str | bytes) or not isinstance(values, Sequence):
                raise TypeError(f"script {self.name}: tail {tail!r} must be a sequence")
            if i < len(self.tails) - 1:
                argv.append(len(values))
            argv.extend(values)
        return [keys[k] for k in self.keys], argv


def _check(script: str, what: str, declared: Sequence[str], given: Mapping[str, Any]) -> None:
    missing = [n for n in declared if n not in given]
    unknown = [n for n in given if n not in declared]
    if missing or unknown:
        raise TypeError(f"script {script}: {what} missing {missing}, unknown {unknown}")


class Runner:
    """A script registered on one Redis client, called with named keys and arguments."""

    def __init__(self, script: Script, client: redis.Redis) -> None:
        self.script = script
        self._registered: RedisScript = client.register_script(script.source)
        # The same script on async clients (one per event loop), registered on first use.
        self._async: weakref.WeakKeyDictionary[aredis.Redis, Any] = weakref.WeakKeyDictionary()

    def __call__(
        self,
        *,
        keys: Mapping[str, Any],
        args: Mapping[str, Any],
        client: redis.Redis | redis.client.Pipeline | None = None,
    ) -> Any:
        """Run it (EVALSHA, loading it when Redis lacks it); on ``client`` when given, a
        pipeline say, where the result comes with the pipeline's."""
        k, a = self.script.build(keys, args)
        return self._registered(keys=k, args=a, client=client)

    async def acall(
        self, client: aredis.Redis, *, keys: Mapping[str, Any], args: Mapping[str, Any]
    ) -> Any:
        """Run it through the async client ``client`` (EVALSHA, loading it when Redis lacks
        it), on the caller's event loop."""
        k, a = self.script.build(keys, args)
        script = self._async.get(client)
        if script is None:
            script = self._async[client] = client.register_script(self.script.source)
        return await script(keys=k, args=a)


# -- the declarations ------------------------------------------------------------------------
# The keys of a job's transitions, and the arguments they share: what lib.lua's finish_job
# needs.
JOB_KEYS = ("job", "events", "cancel", "queue", "leases", "stats", "expiry")
COMMON = ("id", "prefix", "kind", "ttl", "events_ttl", "maxlen")
_COMMON_NUMBERS = frozenset({"ttl", "events_ttl", "maxlen"})

CREATE = Script(
    "create",
    # idem and broker: '' when there is none.
    keys=("job", "events", "queue", "stats", "idem", "inflight", "broker"),
    args=(
        "id",
        "prefix",
        "kind",
        "ttl",
        "maxlen",
        "queue_limit",
        "client_limit",
        "fingerprint",
        "created_ts",
        "message",
        "deadline_ms",  # 0 = none
    ),
    numbers=frozenset(
        {"ttl", "maxlen", "queue_limit", "client_limit", "created_ts", "deadline_ms"}
    ),
    tails=("fields",),  # field/value pairs of the document
)
CLAIM = Script(
    "claim",
    keys=JOB_KEYS,
    args=(
        *COMMON,
        "lease_ms",
        "worker",
        "started_at",
        "started_ts",
        "cancel_done",
        "deadline_error",
        "deadline_done",
    ),
    numbers=_COMMON_NUMBERS | {"lease_ms"},
)
RENEW = Script(
    "renew",
    keys=("job", "events", "cancel", "leases", "preview"),
    # progress, progress_event, preview_event: '' = none.
    args=(
        "id",
        "prefix",
        "attempt",
        "lease_ms",
        "ttl",
        "maxlen",
        "progress",
        "progress_event",
        "preview_event",
        "webhook_every_ms",
    ),
    numbers=frozenset({"lease_ms", "ttl", "maxlen", "webhook_every_ms"}),
)
FINISH = Script(
    "finish",
    keys=JOB_KEYS,
    # attempt, progress: '' = none; allowed: a comma list of statuses.
    args=(
        *COMMON,
        "attempt",
        "to",
        "allowed",
        "done",
        "progress",
        "deadline_error",
        "deadline_done",
    ),
    numbers=_COMMON_NUMBERS,
    tails=("counters", "fields"),  # stat name/amount pairs, field/value pairs
)
CANCEL = Script("cancel", keys=JOB_KEYS, args=(*COMMON, "cancel_done"), numbers=_COMMON_NUMBERS)
REQUEUE = Script(
    "requeue",
    keys=JOB_KEYS,
    # attempt: '' = by lease expiry.
    args=(
        *COMMON,
        "max_attempts",
        "fail_done",
        "cancel_done",
        "fail_error",
        "cancel_error",
        "attempt",
    ),
    numbers=_COMMON_NUMBERS | {"max_attempts"},
)
FORGET = Script(
    "forget", keys=("job", "events", "queue", "stats", "idem", "inflight"), args=("id", "kind")
)

# Deadlines: a job past its deadline, canceled (queued) or told to stop (running).
DEADLINE = Script(
    "deadline",
    keys=(*JOB_KEYS, "deadlines"),
    args=(*COMMON, "deadline_error", "deadline_done", "finished_at", "finished_ts"),
    numbers=_COMMON_NUMBERS,
)
# The webhook outbox (app/core/webhooks): its entries are queued by the job transitions
# above (lib.lua's webhook_enqueue); dispatchers lease and record them with these two.
WEBHOOK_CLAIM = Script(
    "webhook_claim",
    keys=("due",),
    args=("prefix", "lease_ms", "limit"),
    numbers=frozenset({"lease_ms", "limit"}),
)
WEBHOOK_RECORD = Script(
    "webhook_record",
    keys=("due", "entry", "stats"),
    # outcome: delivered, retry or failed; state: the JSON the job's document shows.
    args=("prefix", "did", "attempt", "outcome", "delay_ms", "state"),
    numbers=frozenset({"delay_ms"}),
)

SCRIPTS: tuple[Script, ...] = (
    CREATE,
    CLAIM,
    RENEW,
    FINISH,
    CANCEL,
    REQUEUE,
    FORGET,
    DEADLINE,
    WEBHOOK_CLAIM,
    WEBHOOK_RECORD,
)


class StoreScripts:
    """Every script of :data:`SCRIPTS` registered on one Redis client, by name."""

    create: Runner
    claim: Runner
    renew: Runner
    finish: Runner
    cancel: Runner
    requeue: Runner
    forget: Runner
    deadline: Runner
    webhook_claim: Runner
    webhook_record: Runner

    def __init__(self, client: redis.Redis) -> None:
        for script in SCRIPTS:
            setattr(self, script.name, Runner(script, client))
