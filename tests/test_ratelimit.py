"""Rate limits: pure bucket rules on an injected clock, then the in-memory backend and facade."""

from __future__ import annotations

import asyncio

import pytest

from gateway.config import Limits, RateLimits
from gateway.errors import ConfigError
from gateway.identity import Identity
from gateway.metrics import Metrics
from gateway.ratelimit.admission import Admission, format_duration
from gateway.ratelimit.limiter import Limiter
from gateway.ratelimit.memory import MemoryBackend
from gateway.ratelimit.policy import (
    Scope,
    check,
    fresh,
    refill,
    refilled,
    scopes_for,
    settle,
)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def memory_limiter(clock: FakeClock | None = None) -> Limiter:
    return Limiter(RateLimits(), MemoryBackend(clock or FakeClock()), Metrics())


def key(name: str, **limits: int) -> Scope:
    return Scope("key", name, Limits(**limits))


def model(name: str, **limits: int) -> Scope:
    return Scope("model", name, Limits(**limits))


# ---------------------------------------------------------------------------- buckets


def test_a_full_bucket_lets_a_minute_of_requests_through_then_refills_at_the_steady_rate() -> None:
    limits, clock = Limits(rpm=60), 0.0
    state = fresh(limits, clock)
    for _ in range(60):
        state, wait, _ = check(limits, state, 0, clock)
        assert wait == 0
    _, wait, limit = check(limits, state, 0, clock)
    assert limit == "requests" and wait == pytest.approx(1.0)
    assert check(limits, state, 0, clock + 0.5)[2] == "requests"
    assert check(limits, state, 0, clock + 1.0)[2] is None


def test_refill_stops_at_capacity() -> None:
    assert refill(10, 60, elapsed=1000) == 60
    assert refill(10, 60, elapsed=2) == pytest.approx(12)


def test_a_clock_that_steps_back_neither_drains_nor_fills_the_buckets() -> None:
    limits = Limits(rpm=60, tpm=600)
    assert refilled(limits, (10, 100, 50.0, 0), 40.0) == (10, 100, 40.0, 0)


def test_a_take_that_does_not_fit_leaves_the_level_and_says_how_long_to_wait() -> None:
    limits = Limits(tpm=60)  # one token a second
    state, wait, limit = check(limits, (0, 2, 0.0, 0), est_tokens=5, now=0.0)
    assert state[1] == 2 and limit == "tokens" and wait == pytest.approx(3.0)
    state, wait, limit = check(limits, (0, 4, 0.0, 0), est_tokens=5, now=1.0)
    assert state == (0, 0, 1.0, 0) and wait == 0.0 and limit is None


def test_an_estimate_above_a_minutes_allowance_waits_for_a_full_bucket_then_runs_into_debt() -> (
    None
):
    limits = Limits(tpm=1000)
    assert check(limits, (0, 999, 0.0, 0), 3000, 0.0)[1] > 0
    state, wait, _ = check(limits, (0, 1000, 0.0, 0), 3000, 0.0)
    # Debt stops at minus one minute's allowance: two minutes until the next big request.
    assert wait == 0 and state[1] == -1000
    assert check(limits, state, 3000, 0.0)[1] == pytest.approx(120.0)


def test_settling_refunds_up_to_capacity_and_debits_down_to_minus_capacity() -> None:
    limits = Limits(tpm=1000)
    assert settle(limits, (0, 900, 0.0, 0), -500, 0.0)[1] == 1000
    assert settle(limits, (0, 100, 0.0, 0), 300, 0.0)[1] == -200
    assert settle(limits, (0, 100, 0.0, 0), 10**9, 0.0)[1] == -1000


def test_settling_a_charge_on_a_full_bucket_refills_before_charging() -> None:
    limits = Limits(rpm=60, tpm=600)  # 10 tokens a second
    # Full for the last 5 s: that refill is lost, not credited against the charge.
    assert settle(limits, (60, 600, 0.0, 0), 30, now=5.0) == (60, 570, 5.0, 0)


# ----------------------------------------------------------------------- one scope, pure


def test_the_longest_wait_among_a_scopes_limits_is_the_one_reported() -> None:
    limits = Limits(rpm=60, tpm=600, concurrent=1)
    _, wait, limit = check(limits, (0, 0, 0.0, 1), est_tokens=300, now=0.0)
    # requests: 1 s, tokens: 30 s, concurrency: 1 s.
    assert limit == "tokens" and wait == pytest.approx(30.0)


def test_concurrency_counts_slots_and_settle_gives_them_back() -> None:
    limits = Limits(concurrent=2)
    state = fresh(limits, 0.0)
    state = check(limits, state, 0, 0.0)[0]
    state = check(limits, state, 0, 0.0)[0]
    _, wait, limit = check(limits, state, 0, 0.0)
    assert limit == "concurrent" and wait == 1.0
    state = settle(limits, state, 0, 0.0)
    assert check(limits, state, 0, 0.0)[2] is None


def test_settle_never_counts_a_slot_below_zero() -> None:
    limits = Limits(concurrent=2)
    assert settle(limits, fresh(limits, 0.0), 0, 0.0)[3] == 0


def test_settle_refills_before_charging_the_difference() -> None:
    limits = Limits(tpm=600)  # 10 tokens a second
    assert settle(limits, (0, 100, 0.0, 0), 50, now=2.0) == (0, 70, 2.0, 0)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.0001, "1ms"),
        (0.02, "20ms"),
        (0.999, "999ms"),
        (1, "1s"),
        (8.64, "8.64s"),
        (86.4, "1m26.4s"),
        (360, "6m0s"),
        (3600, "1h0m0s"),
        (3725.5, "1h2m5.5s"),
    ],
)
def test_durations_read_like_openais_reset_headers(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# ------------------------------------------------------------------------------ scopes


LIMITS = RateLimits(
    default_key=Limits(rpm=100),
    agents={"planner": Limits(tpm=5000), "*": Limits(concurrent=4)},
    models={"coder": Limits(concurrent=1)},
)


def test_a_key_without_limits_of_its_own_gets_the_default_and_its_agent_and_model_limits() -> None:
    caller = Identity(key_id="k1", agent_id="planner")
    assert scopes_for(LIMITS, caller, "coder") == (
        Scope("key", "k1", Limits(rpm=100)),
        Scope("agent", "planner", Limits(tpm=5000)),
        Scope("model", "coder", Limits(concurrent=1)),
    )


def test_a_keys_own_limits_replace_the_default_and_star_covers_agents_without_an_entry() -> None:
    caller = Identity(key_id="k2", agent_id="scout", limits=Limits(rpm=7))
    assert scopes_for(LIMITS, caller, "chat") == (
        Scope("key", "k2", Limits(rpm=7)),
        Scope("agent", "scout", Limits(concurrent=4)),
    )


def test_keyless_local_callers_and_the_admin_have_no_key_scope_but_models_still_limit_them() -> (
    None
):
    for caller in (
        Identity(key_id=None, agent_id="local"),
        Identity(key_id="admin", agent_id="admin", is_admin=True),
    ):
        kinds = [s.kind for s in scopes_for(LIMITS, caller, "coder")]
        assert kinds == ["agent", "model"]


def test_an_agents_own_entry_wins_over_star_even_when_it_lifts_every_limit() -> None:
    config = RateLimits(agents={"*": Limits(rpm=10), "ops": Limits()})
    assert scopes_for(config, Identity(key_id=None, agent_id="ops"), "m") == ()


def test_a_key_whose_limits_are_all_zero_is_unlimited() -> None:
    caller = Identity(key_id="k3", agent_id="a", limits=Limits())
    assert scopes_for(RateLimits(), caller, "m") == ()


# ---------------------------------------------------------------- in-memory backend


async def test_with_concurrent_n_exactly_n_of_m_simultaneous_requests_get_in() -> None:
    limiter = memory_limiter()
    scopes = [model("coder", concurrent=5)]
    answers = await asyncio.gather(*(limiter.admit(scopes) for _ in range(40)))
    admitted = [a for a in answers if a.allowed]
    assert len(admitted) == 5
    await admitted[0].release()
    assert (await limiter.admit(scopes)).allowed
    assert not (await limiter.admit(scopes)).allowed


async def test_with_rpm_n_exactly_n_of_m_simultaneous_requests_get_in() -> None:
    limiter = memory_limiter()
    answers = await asyncio.gather(*(limiter.admit([key("k", rpm=25)]) for _ in range(100)))
    assert sum(a.allowed for a in answers) == 25


async def test_releasing_twice_frees_one_slot_only() -> None:
    limiter = memory_limiter()
    scopes = [key("k", concurrent=2)]
    first, _ = await limiter.admit(scopes), await limiter.admit(scopes)
    await first.release()
    await first.release()
    assert (await limiter.admit(scopes)).allowed
    assert not (await limiter.admit(scopes)).allowed


async def test_a_request_denied_by_one_scope_takes_nothing_from_the_others() -> None:
    limiter = memory_limiter()
    k, m = key("k", rpm=10, tpm=1000), model("coder", rpm=1)
    assert (await limiter.admit([k, m], 100)).allowed
    for _ in range(5):
        denied = await limiter.admit([k, m], 100)
        assert not denied.allowed and denied.denied_by == m
    # The key paid for one request only.
    other = await limiter.admit([k], 100)
    assert other.levels[0][:2] == (8, 800)


async def test_an_overestimate_is_refunded_and_an_underestimate_charged_when_released() -> None:
    limiter = memory_limiter()
    scopes = [key("k", tpm=1000)]
    first = await limiter.admit(scopes, est_tokens=600)
    assert first.levels[0][1] == 400
    await first.release(actual_tokens=100)
    second = await limiter.admit(scopes, est_tokens=900)
    assert second.allowed and second.levels[0][1] == 0
    await second.release(actual_tokens=1400)  # 500 more than estimated: debt
    third = await limiter.admit(scopes, est_tokens=1)
    assert not third.allowed and third.denied_limit == "tokens"
    assert third.retry_after == pytest.approx(501 / (1000 / 60))


async def test_releasing_without_a_usage_count_keeps_the_estimate_charged() -> None:
    limiter = memory_limiter()
    scopes = [key("k", tpm=1000)]
    await (await limiter.admit(scopes, est_tokens=600)).release(None)
    assert (await limiter.admit(scopes, est_tokens=0)).levels[0][1] == 400


async def test_a_denied_request_tells_the_client_when_to_retry_in_openai_headers() -> None:
    clock = FakeClock()
    limiter = memory_limiter(clock=clock)
    scopes = [key("k", rpm=2, tpm=600)]
    await limiter.admit(scopes, 100)
    allowed = await limiter.admit(scopes, 100)
    assert dict(allowed.headers()) == {
        b"x-ratelimit-limit-requests": b"2",
        b"x-ratelimit-remaining-requests": b"0",
        b"x-ratelimit-reset-requests": b"1m0s",
        b"x-ratelimit-limit-tokens": b"600",
        b"x-ratelimit-remaining-tokens": b"400",
        b"x-ratelimit-reset-tokens": b"20s",
    }
    clock.advance(10)
    denied = await limiter.admit(scopes, 100)
    headers = dict(denied.headers())
    assert headers[b"retry-after"] == b"20"
    assert headers[b"retry-after-ms"] == b"20000"
    assert headers[b"x-ratelimit-remaining-requests"] == b"0"
    assert headers[b"x-ratelimit-reset-requests"] == b"50s"
    assert denied.message() == (
        "Rate limit reached for key 'k': 2 requests per minute. Please try again in 20s."
    )


async def test_headers_describe_the_tightest_scope_of_each_kind() -> None:
    limiter = memory_limiter()
    answer = await limiter.admit([key("k", rpm=100, tpm=500), model("m", rpm=10)], 50)
    headers = dict(answer.headers())
    assert headers[b"x-ratelimit-limit-requests"] == b"10"
    assert headers[b"x-ratelimit-remaining-requests"] == b"9"
    assert headers[b"x-ratelimit-limit-tokens"] == b"500"
    assert b"retry-after" not in headers


async def test_concurrency_denials_ask_for_a_one_second_wait() -> None:
    limiter = memory_limiter()
    scopes = [model("coder", concurrent=1)]
    await limiter.admit(scopes)
    denied = await limiter.admit(scopes)
    assert denied.denied_limit == "concurrent"
    assert dict(denied.headers()) == {b"retry-after": b"1", b"retry-after-ms": b"1000"}
    assert "1 requests at once" in denied.message()


async def test_idle_scopes_are_forgotten_once_the_table_grows() -> None:
    clock = FakeClock()
    backend = MemoryBackend(clock)
    for i in range(4000):
        await backend.admit([key(f"k{i}", rpm=10)], 0)
    held = await backend.admit([key("busy", concurrent=1)], 0)
    clock.advance(121)
    for i in range(200):
        await backend.admit([key(f"new{i}", rpm=10)], 0)
    assert len(backend._states) < 300
    # The scope with a request in flight survived the sweep.
    assert not (await backend.admit([key("busy", concurrent=1)], 0)).allowed
    await held.release()


# ------------------------------------------------------------------------------ facade


async def test_with_no_limits_configured_every_request_gets_the_same_free_answer() -> None:
    limiter = memory_limiter()
    caller = Identity(key_id="k", agent_id="a")
    assert limiter.scopes(caller, "m") == ()
    first, second = await limiter.admit(()), await limiter.admit(())
    assert first is second and first.allowed and first.headers() == []
    await first.release(10)
    assert (await limiter.admit(())).allowed


async def test_a_key_with_its_own_limits_is_limited_even_when_nothing_else_is() -> None:
    limiter = memory_limiter()
    caller = Identity(key_id="k", agent_id="a", limits=Limits(rpm=1))
    assert (await limiter.admit(limiter.scopes(caller, "m"))).allowed
    assert not (await limiter.admit(limiter.scopes(caller, "m"))).allowed


async def test_refusals_are_counted_by_scope_kind_and_limit() -> None:
    metrics = Metrics()
    limiter = Limiter(RateLimits(), MemoryBackend(FakeClock()), metrics)
    for _ in range(3):
        await limiter.admit([key("k", rpm=10), model("m", rpm=1)])
    sample = metrics.registry.get_sample_value
    labels = {"scope": "model", "limit": "requests"}
    assert sample("turnout_ratelimit_rejections_total", labels) == 2
    assert (
        sample("turnout_ratelimit_rejections_total", {"scope": "key", "limit": "requests"}) is None
    )


async def test_the_nowait_paths_decide_and_count_like_the_awaited_ones() -> None:
    metrics = Metrics()
    limiter = Limiter(RateLimits(), MemoryBackend(FakeClock()), metrics)
    scopes = [key("k", rpm=1, concurrent=1)]
    admitted = limiter.admit_nowait(scopes, 0)
    assert admitted is not None and admitted.allowed
    refused = limiter.admit_nowait(scopes, 0)
    assert refused is not None and not refused.allowed and refused.denied_limit == "requests"
    labels = {"scope": "key", "limit": "requests"}
    assert metrics.registry.get_sample_value("turnout_ratelimit_rejections_total", labels) == 1
    # Released without awaiting, once: the concurrency slot is free again, a second call no-op.
    assert admitted.release_nowait(None) and admitted.release_nowait(None)
    assert refused.release_nowait(None)  # nothing was taken, nothing to give back
    assert limiter.admit_nowait((), 0) is limiter.admit_nowait((), 0)


def test_an_unknown_backend_is_a_config_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"limits\.backend: expected 'memory' or a redis://"):
        Limiter.from_config(RateLimits(backend="memcached://x"))


def test_an_unlimited_admission_is_allowed_and_has_nothing_to_release() -> None:
    answer = Admission((), 0, ())
    assert answer.allowed and answer.denied_by is None and answer.message() == "request admitted"
