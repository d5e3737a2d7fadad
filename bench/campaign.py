"""The fault, fuzz, security and soak campaign of issue 11, as a re-runnable tool.

    .venv/bin/python -m bench.campaign --quick              # ~2 minutes
    .venv/bin/python -m bench.campaign                      # ~5-8 minutes
    .venv/bin/python -m bench.campaign --ref c44189c --quick   # the code before the fixes

Starts a misbehaving upstream (``bench/campaign_upstream.py``) and five real ``turnout serve``
processes on loopback: a keyless one (rebinding, slowloris, upstream faults, fuzz), one with
keys (count_tokens, /v1/models, usage CSV), a fresh one for the memory-hungry cases (a large
Responses stream, a huge event), whose peak RSS is read from /proc, and two that are loaded and
then killed (usage rows lost to SIGKILL and SIGTERM). Every case is bounded
by its category's timeout and comes out ``clean`` (refused, fell back, clean error, closed),
``failed`` (served, relayed raw or broken, a 500, no envelope) or ``hung``. Prints a table per
category and writes bench/results/campaign-latest.json.

One config is written with every hardening key; each build gets only the keys its
``gateway.config`` knows (an older build refuses unknown keys), and the JSON lists what was
dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import yaml

from bench import campaign_edge as edge
from bench import campaign_faults as faults
from bench.campaign_crash import BLOCKING_TOOL, blocking_tools, usage_after_kill
from bench.campaign_fuzz import fuzz
from bench.campaign_http import Category, session
from bench.procs import Proc, Processes, exit_on_sigterm, free_port, wait_ready
from bench.report import RESULTS, machine, table, write_results
from bench.stacks import ROOT, TurnoutBuild, ref_build, working_tree_build

ADMIN_KEY = "sk-campaign-admin"
FAULTS = ("comments", "drip", "trickle", "gzip", "deflate", "forcegzip", "truncated", "html",
          "badsse")  # fmt: skip
# Short deadlines for the fault provider, so a hang shows within a case timeout.
FAULT_TIMEOUTS = {"connect": 2, "first_byte": 2, "idle": 2, "max_stream": 4,
                  "max_event_bytes": 1 << 20}  # fmt: skip
BULK_TIMEOUTS = {"first_byte": 60, "idle": 10, "max_stream": 600, "max_event_bytes": 1 << 20,
                 "max_body_bytes": 4 << 20}  # fmt: skip
SLOW_CLIENT_SECONDS = 2.0


@dataclass(frozen=True)
class Sizes:
    rebind_names: int
    slow_connections: int
    bulk_mb: int
    huge_mb: int
    huge_ingress: tuple[str, ...]
    load_seconds: float  # before the SIGKILL / SIGTERM


QUICK = Sizes(1, 16, 32, 16, ("chat",), 2.0)
FULL = Sizes(3, 64, 100, 64, ("chat", "messages", "responses"), 5.0)


# --- config per build ----------------------------------------------------------------------


def gateway_config(
    upstream: str, work: Path, name: str, sizes: Sizes, *, plugins: bool
) -> dict[str, Any]:
    """The whole routing document, with every key the campaign wants (pruned per build)."""
    provider = {"kind": "openai", "base_url": f"{upstream}/v1", "local": True}
    models: list[dict[str, Any]] = [
        {"name": "ok", "targets": [{"provider": "healthy", "model": "ok"}]},
        {"name": "fast", "targets": [{"provider": "healthy", "model": "ok"}]},
    ]
    # The upstream reads the size from the model name.
    for big in (f"bulk-{sizes.bulk_mb}", f"huge-{sizes.huge_mb}", f"bigjson-{sizes.huge_mb}"):
        models.append({"name": big, "targets": [{"provider": "bulk", "model": big}]})
    for fault in FAULTS:
        first = {"provider": "faults", "model": fault}
        models.append({"name": fault, "targets": [first]})
        models.append(
            {"name": f"{fault}-fb", "targets": [first, {"provider": "healthy", "model": "ok"}]}
        )
    config: dict[str, Any] = {
        "server": {
            "log_level": "warning",
            "database": str(work / f"{name}.db"),
            "header_timeout_seconds": SLOW_CLIENT_SECONDS,
            "body_timeout_seconds": SLOW_CLIENT_SECONDS,
            "max_connections": 1024,
        },
        "routing": {"retries": 0, "cooldown_seconds": 0},
        "providers": {
            "healthy": provider,
            "faults": {**provider, "timeouts": FAULT_TIMEOUTS},
            "bulk": {**provider, "timeouts": BULK_TIMEOUTS},
        },
        "models": models,
        "auth": {"allowed_hosts": []},
    }
    if plugins:
        config["plugins"] = {"enabled": ["memory", "tools"]}
        config["tools"] = {"python_threads": 4, "registry": [BLOCKING_TOOL]}
    return config


@dataclass(frozen=True)
class BuildRunner:
    """Runs things in the build under test: its ``gateway`` package first on sys.path."""

    build: TurnoutBuild

    @property
    def cwd(self) -> Path:
        return self.build.cwd or ROOT

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": f"{self.cwd}{os.pathsep}{ROOT}"}

    def probe(self, command: str, stdin: str, timeout: float = 120) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "bench.campaign_probe", command],
            input=stdin, capture_output=True, text=True, cwd=self.cwd, env=self.env(),
            timeout=timeout, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"campaign_probe {command} failed:\n{done.stderr[-2000:]}")
        return done.stdout

    def write_config(self, config: dict[str, Any], path: Path) -> list[str]:
        """Write what this build understands; returns the key paths it did not know."""
        answer = json.loads(self.probe("prune", json.dumps(config)))
        path.write_text(yaml.safe_dump(answer["config"], sort_keys=False))
        dropped: list[str] = answer["dropped"]
        return dropped

    def keys(self, config: Path, *args: str) -> str:
        argv = [*self.build.prefix[:-1], "keys", "--config", str(config), "--json", *args]
        done = subprocess.run(
            argv, capture_output=True, text=True, cwd=self.cwd, env=self.env(), timeout=60,
            check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"turnout keys {' '.join(args)}: {done.stderr.strip()[-500:]}")
        return done.stdout

    def create_key(self, config: Path, name: str, agent: str, models: str = "") -> str:
        # "--agent=-2+3": a value starting with "-" must be glued to its option for argparse.
        out = self.keys(
            config, "create", f"--name={name}", f"--agent={agent}", f"--models={models}"
        )
        secret: str = json.loads(out.strip().splitlines()[-1])["key"]
        return secret

    def ssrf(self, urls: list[str]) -> list[dict[str, object]]:
        out = self.probe("ssrf", "\n".join(urls) + "\n")
        return [json.loads(line) for line in out.splitlines() if line.strip()]


# Appended to a ref export's plugin module when the installed entry point names a class the
# old module lacks (older builds registered the module itself as the plugin).
_PLUGIN_SHIM = """

# Added by bench/campaign.py for this export only: the installed entry point names a class;
# in this build the module itself is the plugin, so the "class" gives back the module.
class {attr}:
    def __new__(cls):
        import sys

        return sys.modules[__name__]
"""


def shim_plugins(build: TurnoutBuild) -> list[str]:
    """Let a ref export load the plugins the working tree's installed metadata names."""
    if build.cwd is None:
        return []
    shimmed = []
    for entry in entry_points(group="turnout"):
        module, _, attr = entry.value.partition(":")
        path = build.cwd / (module.replace(".", "/") + ".py")
        if not attr or not path.exists():
            continue
        text = path.read_text()
        if not re.search(rf"^(class|def) {attr}\b|^{attr}\s*=", text, re.MULTILINE):
            path.write_text(text + _PLUGIN_SHIM.format(attr=attr))
            shimmed.append(entry.value)
    return shimmed


@dataclass
class Started:
    proc: Proc
    origin: str
    config: Path
    dropped: list[str]
    database: Path


def start_gateway(
    procs: Processes, runner: BuildRunner, config: dict[str, Any], work: Path, name: str
) -> Started:
    path = work / f"{name}.yaml"
    dropped = runner.write_config(config, path)
    port = free_port()
    # PYTHONPATH: the blocking tool (bench.campaign_blocking). A ref's export stays first on
    # sys.path: ``python -m`` puts its working directory ahead of PYTHONPATH.
    env = {"PYTHONPATH": str(ROOT)}
    proc = procs.spawn(name, runner.build.argv(path, port), env=env, cwd=runner.build.cwd or work)
    origin = f"http://127.0.0.1:{port}"
    wait_ready(proc, origin + "/health", timeout=60, interval=0.05)
    return Started(proc, origin, path, dropped, Path(config["server"]["database"]))


def start_upstream(procs: Processes) -> str:
    port = free_port()
    argv = [sys.executable, "-m", "bench.campaign_upstream", "--port", str(port)]
    proc = procs.spawn("campaign-upstream", argv, cwd=ROOT)
    origin = f"http://127.0.0.1:{port}"
    wait_ready(proc, origin + "/health", timeout=30)
    return origin


@dataclass
class Keys:
    secrets: dict[str, str]
    formulas: dict[str, str]  # agent id → secret, for the formula ids the build accepted


def make_keys(runner: BuildRunner, config: Path) -> Keys:
    """Keys for the keyed gateway: unrestricted, ``fast`` only, one revoked, formula agent ids."""
    secrets = {
        "all": runner.create_key(config, "all", "campaign"),
        "fast": runner.create_key(config, "fast-only", "campaign-fast", "fast"),
        "revoked": runner.create_key(config, "revoked", "campaign-revoked"),
    }
    runner.keys(config, "revoke", "revoked")
    formulas = {}
    for i, formula in enumerate(edge.FORMULAS):
        try:
            formulas[formula] = runner.create_key(config, f"formula-{i}", formula)
        except RuntimeError as exc:
            print(f"  key with agent id {formula!r} refused: {exc}", flush=True)
    return Keys(secrets, formulas)


# --- the run -------------------------------------------------------------------------------


async def timed(name: str, step: Callable[[], Awaitable[Category]], gw: Started) -> Category:
    """Run one category; a crash of the tool or the gateway is noted, and the run goes on."""
    started = time.monotonic()
    print(f"  {name} ...", end="", flush=True)
    try:
        category = await step()
    except Exception as exc:  # the campaign reports a broken category instead of dying
        category = Category(name)
        category.notes["error"] = f"{type(exc).__name__}: {exc}"[:500]
        print(f" error: {category.notes['error']}", flush=True)
    took = time.monotonic() - started
    category.notes["seconds"] = round(took, 1)
    if not gw.proc.alive():
        category.notes["gateway_exited"] = gw.proc.log_tail(5)
    print(f" {category.count('clean')}/{len(category.results)} clean ({took:.0f} s)", flush=True)
    return category


async def run_campaign(
    stacks: Stacks, procs: Processes, runner: BuildRunner, sizes: Sizes
) -> list[Category]:
    results: list[Category] = []
    async with session() as client:
        a = faults.Gateway(stacks.plain.origin, stacks.plain.proc.pid, client)
        keys = stacks.keys.secrets
        b = faults.Gateway(stacks.keyed.origin, stacks.keyed.proc.pid, client, keys=keys)
        c = faults.Gateway(stacks.fresh.origin, stacks.fresh.proc.pid, client)
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        names = edge.REBIND_NAMES[: sizes.rebind_names]
        slow, slow_limit = SLOW_CLIENT_SECONDS, SLOW_CLIENT_SECONDS + 6
        formulas = stacks.keys.formulas
        steps: list[tuple[str, Started, Callable[[], Awaitable[Category]]]] = [
            ("rebinding", stacks.plain, lambda: edge.rebinding(a, names, 10)),
            ("loopback control", stacks.plain, lambda: edge.loopback_names(a, 10)),
            ("slowloris", stacks.plain,
             lambda: edge.slowloris(a, sizes.slow_connections, slow, slow_limit)),
            ("upstream hangs", stacks.plain, lambda: faults.hangs(a, 12)),
            ("gzip", stacks.plain, lambda: faults.gzip(a, 10)),
            ("broken 200", stacks.plain, lambda: faults.broken(a, 10)),
            ("count_tokens auth", stacks.keyed, lambda: edge.count_tokens_auth(b, 10)),
            ("models per key", stacks.keyed, lambda: edge.models_per_key(b, 10)),
            ("usage CSV", stacks.keyed, lambda: edge.csv_injection(b, formulas, admin, 10)),
            ("fuzz", stacks.plain, lambda: fuzz(a, sizes is QUICK, 15)),
            ("blocking tools", stacks.plain, lambda: blocking_tools(a, 15)),
            ("large responses stream", stacks.fresh, lambda: faults.bulk(c, sizes.bulk_mb, 120)),
            ("huge event", stacks.fresh,
             lambda: faults.huge(c, sizes.huge_mb, sizes.huge_ingress, 30)),
        ]  # fmt: skip
        victims = [(v.proc, v.origin, v.database) for v in stacks.victims]
        steps.append(
            ("usage rows after kill", stacks.plain,
             lambda: usage_after_kill(procs, victims, sizes.load_seconds))
        )  # fmt: skip
        # Not through the gateway: the tools plugin's guard, in the build's code.
        steps.append(
            ("SSRF spellings", stacks.plain, lambda: asyncio.to_thread(edge.ssrf, runner.ssrf))
        )
        for name, gw, step in steps:
            results.append(await timed(name, step, gw))
    return results


def totals(categories: list[Category]) -> list[int]:
    return [
        sum(len(c.results) for c in categories),
        *(sum(c.count(v) for c in categories) for v in ("clean", "failed", "hung")),
    ]


def report(categories: list[Category], label: str) -> str:
    rows = [c.row() for c in categories]
    rows.append(["total", *totals(categories)])
    return f"turnout: {label}\n" + table(["category", "tried", "clean", "failed", "hung"], rows)


@dataclass
class Stacks:
    plain: Started  # keyless, plugins on: rebinding, slowloris, upstream faults, fuzz
    keyed: Started  # admin key and virtual keys: count_tokens, /v1/models, usage CSV
    fresh: Started  # untouched until the large stream and the huge event (peak RSS)
    keys: Keys
    victims: list[Started]  # loaded, then SIGKILLed / SIGTERMed


def start_stacks(
    procs: Processes, runner: BuildRunner, upstream: str, work: Path, sizes: Sizes
) -> Stacks:
    plain_config = gateway_config(upstream, work, "plain", sizes, plugins=True)
    plain = start_gateway(procs, runner, plain_config, work, "plain")
    keyed_config = gateway_config(upstream, work, "keyed", sizes, plugins=False)
    keyed_config["auth"]["admin_key"] = ADMIN_KEY
    keyed_path = work / "keyed.yaml"
    runner.write_config(keyed_config, keyed_path)  # `turnout keys` reads the database from it
    keys = make_keys(runner, keyed_path)
    keyed = start_gateway(procs, runner, keyed_config, work, "keyed")
    fresh_config = gateway_config(upstream, work, "fresh", sizes, plugins=False)
    fresh = start_gateway(procs, runner, fresh_config, work, "fresh")
    victims = [
        start_gateway(
            procs, runner, gateway_config(upstream, work, n, sizes, plugins=False), work, n
        )
        for n in ("kill9", "term")
    ]
    return Stacks(plain, keyed, fresh, keys, victims)


def measurements(categories: list[Category]) -> str:
    """The numbers behind the verdicts (sizes, CPU, RSS, stalls, 500 counts)."""
    lines = []
    for category in categories:
        notes = {k: v for k, v in category.notes.items() if k != "seconds"}
        if notes:
            lines.append(f"  {category.name}: {json.dumps(notes)[:400]}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="issue 11's campaign: fault, fuzz, security")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller sizes")
    parser.add_argument("--ref", default=None, help="run turnout at this git ref (git archive)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (configs, DBs)")
    args = parser.parse_args()
    exit_on_sigterm()
    sizes = QUICK if args.quick else FULL
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="turnout-campaign-"))
    build = ref_build(args.ref, work) if args.ref else working_tree_build()
    runner = BuildRunner(build)
    shimmed = shim_plugins(build)
    print(f"campaign against {build.label} ({'quick' if args.quick else 'full'}), work dir {work}")
    if shimmed:
        print(f"  plugin entry points shimmed in the export: {', '.join(shimmed)}")
    with Processes(RESULTS / "logs" / "campaign") as procs:
        stacks = start_stacks(procs, runner, start_upstream(procs), work, sizes)
        dropped = stacks.plain.dropped
        if dropped:
            print(f"  config keys this build does not know (left out): {', '.join(dropped)}")
        categories = asyncio.run(run_campaign(stacks, procs, runner, sizes))
    print()
    print(report(categories, build.label))
    print(measurements(categories))
    data = {
        "build": build.label,
        "quick": args.quick,
        "seconds": round(time.monotonic() - started, 1),
        "machine": machine(),
        "config_keys_dropped": dropped,
        "plugin_shims": shimmed,
        "totals": dict(zip(("tried", "clean", "failed", "hung"), totals(categories), strict=True)),
        "categories": {c.name: c.as_dict() for c in categories},
    }
    # A ref's run is the "before" of a before/after table: it keeps its own latest file.
    path = write_results("campaign-ref" if args.ref else "campaign", data)
    print(f"\nwrote {path} ({data['seconds']:.0f} s)")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
