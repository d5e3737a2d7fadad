"""Shared rate limits in a real redis-server: replicas agree exactly, and an outage degrades.

Each test gets its own key prefix on one server; "replicas" are independent ``Limiter``s with
their own connection pools, and, in the multi-process test, separate Python processes.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as redis

from gateway.config import Limits, RateLimits
from gateway.metrics import Metrics
from gateway.ratelimit.limiter import Limiter
from gateway.ratelimit.policy import Scope
from gateway.ratelimit.redis import DEFAULT_PREFIX, RedisBackend, split_prefix, without_password
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent

Replica = Callable[..., Limiter]


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as running:
        yield running


@pytest.fixture
def url(server: RedisServer) -> str:
    """The server with a prefix of this test's own, so tests never see each other's buckets."""
    return f"{server.url}?prefix=test-{uuid.uuid4().hex[:8]}:"


@pytest.fixture
async def replica(url: str) -> AsyncIterator[Replica]:
    """Make turnout replicas sharing ``url``; each has its own Redis connections."""
    made: list[Limiter] = []

    def make(
        target: str = url,
        metrics: Metrics | None = None,
        lease_seconds: float = 60.0,
        retry_seconds: float = 1.0,
        timeout_seconds: float = 0.5,
    ) -> Limiter:
        backend = RedisBackend(
            target,
            metrics=metrics,
            lease_seconds=lease_seconds,
            retry_seconds=retry_seconds,
            timeout_seconds=timeout_seconds,
        )
        limiter = Limiter(RateLimits(), backend, metrics)
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        await limiter.close()


def key(name: str, **limits: int) -> Scope:
    return Scope("key", name, Limits(**limits))


def model(name: str, **limits: int) -> Scope:
    return Scope("model", name, Limits(**limits))


def test_the_prefix_comes_off_the_url_and_other_options_stay() -> None:
    assert split_prefix("redis://h:1/2?prefix=app:rl:&socket_timeout=1") == (
        "redis://h:1/2?socket_timeout=1",
        "app:rl:",
    )
    assert split_prefix("redis://h:1/0") == ("redis://h:1/0", DEFAULT_PREFIX)


def test_log_lines_never_show_the_redis_password() -> None:
    assert without_password("redis://:s3cret@cache:6379/0") == "redis://cache:6379/0"
    assert without_password("redis://user:s3cret@cache/0") == "redis://cache/0"


def test_a_redis_backend_url_in_routing_yaml_makes_a_redis_limiter() -> None:
    limiter = Limiter.from_config(RateLimits(backend="redis://127.0.0.1:1/0?prefix=p:"))
    assert isinstance(limiter._backend, RedisBackend) and limiter._backend.prefix == "p:"


async def test_two_replicas_together_admit_exactly_rpm_of_many_simultaneous_requests(
    replica: Replica,
) -> None:
    a, b = replica(), replica()
    scopes = [key("k", rpm=20)]
    answers = await asyncio.gather(*(r.admit(scopes) for r in [a, b] * 30))
    assert sum(x.allowed for x in answers) == 20


async def test_a_burst_bigger_than_the_connection_pool_queues_instead_of_failing_over(
    replica: Replica,
) -> None:
    metrics = Metrics()
    # 64 connections; a generous timeout so a loaded CI machine measures queueing, not speed.
    a = replica(metrics=metrics, timeout_seconds=5.0)
    answers = await asyncio.gather(*(a.admit([key("k", rpm=150)]) for _ in range(300)))
    assert sum(x.allowed for x in answers) == 150
    errors = metrics.registry.get_sample_value(
        "turnout_ratelimit_backend_errors_total", {"op": "admit"}
    )
    assert errors is None


async def test_two_replicas_together_hold_exactly_n_concurrent_slots(replica: Replica) -> None:
    a, b = replica(), replica()
    scopes = [model("coder", concurrent=3)]
    answers = await asyncio.gather(*(r.admit(scopes) for r in [a, b] * 10))
    admitted = [x for x in answers if x.allowed]
    assert len(admitted) == 3
    # Shared state needs a round trip: the request path's nowait shortcuts step aside.
    assert a.admit_nowait(scopes) is None and not admitted[0].release_nowait()
    await admitted[0].release()
    await admitted[0].release()  # twice: still one slot
    assert (await b.admit(scopes)).allowed
    assert not (await a.admit(scopes)).allowed


async def test_a_request_denied_by_its_model_takes_nothing_from_its_key(replica: Replica) -> None:
    a, b = replica(), replica()
    k = key("k", rpm=5)
    assert (await a.admit([k, model("coder", rpm=1)])).allowed
    for r in (a, b, a):
        denied = await r.admit([k, model("coder", rpm=1)])
        assert not denied.allowed and denied.denied_by == model("coder", rpm=1)
        assert denied.denied_limit == "requests" and 0 < denied.retry_after <= 60
    other = await b.admit([k])
    assert other.allowed and round(other.levels[0][0]) == 3


async def test_token_estimates_are_settled_across_replicas(replica: Replica) -> None:
    a, b = replica(), replica()
    scopes = [key("k", tpm=60_000)]
    first = await a.admit(scopes, est_tokens=50_000)
    await first.release(actual_tokens=10_000)  # refund 40,000
    second = await b.admit(scopes, est_tokens=45_000)
    assert second.allowed
    await second.release(actual_tokens=75_000)  # charge 30,000 more: into debt
    third = await a.admit(scopes, est_tokens=1)
    assert not third.allowed and third.denied_limit == "tokens"
    assert third.retry_after == pytest.approx(25, abs=0.5)  # 25,000 tokens of debt at 1,000/s


async def test_headers_show_what_every_replica_has_used(replica: Replica) -> None:
    a, b, c = replica(), replica(), replica()
    scopes = [key("k", rpm=10)]
    await a.admit(scopes)
    await b.admit(scopes)
    headers = dict((await c.admit(scopes)).headers())
    assert headers[b"x-ratelimit-remaining-requests"] == b"7"
    assert headers[b"x-ratelimit-limit-requests"] == b"10"


async def test_waiting_the_advertised_retry_after_is_enough(replica: Replica) -> None:
    a = replica()
    scopes = [key("k", rpm=120)]  # 2 per second
    answers = await asyncio.gather(*(a.admit(scopes) for _ in range(130)))
    assert sum(x.allowed for x in answers) == 120
    denied = await a.admit(scopes)
    assert not denied.allowed and 0.4 < denied.retry_after <= 0.5
    await asyncio.sleep(denied.retry_after + 0.01)
    assert (await a.admit(scopes)).allowed


async def test_a_cancelled_request_still_gives_its_slot_back(replica: Replica) -> None:
    a = replica()
    scopes = [model("coder", concurrent=1)]
    admitted = asyncio.Event()

    async def request() -> None:
        admission = await a.admit(scopes)
        admitted.set()
        try:
            await asyncio.sleep(60)
        finally:
            await admission.release(0)

    task = asyncio.create_task(request())
    await admitted.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert (await a.admit(scopes)).allowed


async def test_a_dead_replicas_slots_expire_and_a_live_ones_are_renewed(replica: Replica) -> None:
    live, dying, other = (replica(lease_seconds=0.3) for _ in range(3))
    held = await live.admit([model("live", concurrent=1)])
    assert (await dying.admit([model("dead", concurrent=1)])).allowed
    await dying.close()  # dies without releasing: no renewals any more
    await asyncio.sleep(0.6)
    assert (await other.admit([model("dead", concurrent=1)])).allowed
    assert not (await other.admit([model("live", concurrent=1)])).allowed
    await held.release()
    assert (await other.admit([model("live", concurrent=1)])).allowed


async def test_keys_expire_once_their_buckets_would_be_full_again(
    url: str, replica: Replica
) -> None:
    a = replica()
    await a.admit([key("k", rpm=10, concurrent=2)])
    client = redis.Redis.from_url(split_prefix(url)[0], decode_responses=True)
    try:
        prefix = split_prefix(url)[1]
        keys = sorted(str(k) for k in await client.keys(prefix + "*"))
        assert keys == [prefix + "b:key:k", prefix + "c:key:k"]
        assert 0 < await client.pttl(prefix + "b:key:k") <= 121_000
        assert 0 < await client.pttl(prefix + "c:key:k") <= 120_000
    finally:
        await client.aclose()


# ---------------------------------------------------------------------------- outages


async def test_while_redis_is_down_each_replica_enforces_limits_alone_then_shares_again(
    replica: Replica,
) -> None:
    metrics = Metrics()
    with RedisServer() as own:
        target = own.url + "?prefix=outage:"
        a = replica(target, metrics, retry_seconds=0.2)
        b = replica(target)
        await a.start()
        scopes = [key("k", rpm=2)]
        assert (await a.admit(scopes)).allowed
        own.stop()
        # Redis gone: the local limit still holds (2 per minute, counted from zero here).
        local = [await a.admit(scopes) for _ in range(3)]
        assert [x.allowed for x in local] == [True, True, False]
        sample = metrics.registry.get_sample_value
        assert sample("turnout_ratelimit_backend_errors_total", {"op": "admit"}) == 1
        assert sample("turnout_ratelimit_backend_up") == 0
        own.start()  # empty: nothing is persisted
        await asyncio.sleep(0.25)
        # Back on Redis, and shared with the other replica again.
        assert [(await a.admit(scopes)).allowed for _ in range(2)] == [True, True]
        assert not (await b.admit(scopes)).allowed
        assert sample("turnout_ratelimit_backend_up") == 1
        for answer in local:
            await answer.release()


async def test_a_redis_that_stops_answering_costs_one_request_a_timeout_per_retry(
    replica: Replica,
) -> None:
    with RedisServer() as own:
        a = replica(own.url, timeout_seconds=0.2, retry_seconds=0.3)
        scopes = [key("k", rpm=1000)]
        assert (await a.admit(scopes)).allowed
        own.pause()
        try:

            async def timed() -> float:
                started = time.monotonic()
                assert (await a.admit(scopes)).allowed
                return time.monotonic() - started

            assert await timed() >= 0.2  # finds out
            assert max([await timed() for _ in range(20)]) < 0.1  # local while down
            await asyncio.sleep(0.35)
            waits = await asyncio.gather(*(timed() for _ in range(20)))
            assert sum(w >= 0.2 for w in waits) == 1  # one probe, the others stay local
        finally:
            own.resume()


# ---------------------------------------------------------------------- two processes

WORKER = "tests.test_ratelimit_redis"


async def _worker(url: str, count: int) -> dict[str, int]:
    """One turnout process: wait for "go", then make ``count`` simultaneous requests per scope."""
    limiter = Limiter(RateLimits(), RedisBackend(url))
    await limiter.start()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    per_minute = [key("shared", rpm=30)]
    in_flight = [model("engine", concurrent=7)]
    answers = await asyncio.gather(
        *(limiter.admit(per_minute) for _ in range(count)),
        *(limiter.admit(in_flight) for _ in range(count)),
    )
    result = {
        "rpm": sum(a.allowed for a in answers[:count]),
        "concurrent": sum(a.allowed for a in answers[count:]),
    }
    await limiter.close()  # slots stay held: the other process must have seen them
    return result


def test_two_processes_share_one_limit_exactly(url: str) -> None:
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", WORKER, url, "40"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        results = [json.loads(worker.communicate(timeout=30)[0]) for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    assert sum(r["rpm"] for r in results) == 30
    assert sum(r["concurrent"] for r in results) == 7


if __name__ == "__main__":
    print(json.dumps(asyncio.run(_worker(sys.argv[1], int(sys.argv[2])))))
