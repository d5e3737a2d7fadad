"""``turnout import litellm``: a LiteLLM proxy ``config.yaml`` mapped to routing.yaml (pure).

LiteLLM's deployments sharing a ``model_name`` become one logical model whose targets are the
deployments (LiteLLM load-balances them; so does ``balance: weighted``); ``litellm_params.model``'s
prefix (``azure/``, ``anthropic/``, ``ollama/``...) picks the provider kind, one provider per
distinct endpoint and key. ``os.environ/NAME`` becomes ``${NAME}``, which routing.yaml fills
from the environment in the same way. ``fallbacks`` become lower-priority targets (turnout tries
them after the model's own), ``num_retries`` / ``cooldown_time`` / ``retry_after`` the
``routing`` section, per-deployment ``rpm`` / ``tpm`` weights and a per-model limit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from gateway.errors import NotAConfig
from gateway.imports.report import Imported

ENV_PREFIX = "os.environ/"


@dataclass(frozen=True, slots=True)
class Preset:
    """A LiteLLM provider prefix as a turnout provider."""

    kind: str
    # "": LiteLLM needs ``api_base`` for it (a server of your own).
    base_url: str
    # The variable LiteLLM reads when a deployment gives no ``api_key``.
    key_env: str = ""


# LiteLLM's provider prefixes (docs.litellm.ai/docs/providers) that speak a wire format turnout
# has an adapter for. Others (bedrock, vertex_ai, sagemaker, ...) are reported, not guessed.
PRESETS: dict[str, Preset] = {
    "openai": Preset("openai", "https://api.openai.com/v1", "OPENAI_API_KEY"),
    "anthropic": Preset("anthropic", "https://api.anthropic.com", "ANTHROPIC_API_KEY"),
    "deepseek": Preset("deepseek", "https://api.deepseek.com/v1", "DEEPSEEK_API_KEY"),
    "ollama": Preset("ollama", "http://localhost:11434"),
    "ollama_chat": Preset("ollama", "http://localhost:11434"),
    "hosted_vllm": Preset("vllm", ""),
    "lm_studio": Preset("lmstudio", "http://localhost:1234/v1"),
    "xinference": Preset("openai-compatible", ""),
    "huggingface": Preset("openai-compatible", "", "HUGGINGFACE_API_KEY"),
    "openrouter": Preset("openai-compatible", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
    "groq": Preset("openai-compatible", "https://api.groq.com/openai/v1", "GROQ_API_KEY"),
    "mistral": Preset("openai-compatible", "https://api.mistral.ai/v1", "MISTRAL_API_KEY"),
    "together_ai": Preset("openai-compatible", "https://api.together.xyz/v1", "TOGETHERAI_API_KEY"),
    "gemini": Preset(
        "openai-compatible",
        "https://generativelanguage.googleapis.com/v1beta/openai",
        "GEMINI_API_KEY",
    ),
    "xai": Preset("openai-compatible", "https://api.x.ai/v1", "XAI_API_KEY"),
    "fireworks_ai": Preset(
        "openai-compatible", "https://api.fireworks.ai/inference/v1", "FIREWORKS_AI_API_KEY"
    ),
    "deepinfra": Preset(
        "openai-compatible", "https://api.deepinfra.com/v1/openai", "DEEPINFRA_API_KEY"
    ),
    "cerebras": Preset("openai-compatible", "https://api.cerebras.ai/v1", "CEREBRAS_API_KEY"),
    "perplexity": Preset("openai-compatible", "https://api.perplexity.ai", "PERPLEXITYAI_API_KEY"),
    # Azure OpenAI's v1 API is OpenAI's format at <resource>/openai/v1 (see _azure).
    "azure": Preset("openai-compatible", "", "AZURE_API_KEY"),
}

# litellm_settings / router_settings keys mapped here; the rest are reported.
ROUTING_KEYS = frozenset(
    {
        "fallbacks",
        "num_retries",
        "cooldown_time",
        "retry_after",
        "timeout",
        "request_timeout",
        "routing_strategy",
        "model_group_alias",
    }
)
# LiteLLM's routing_strategy as turnout's balance across a model's deployments.
BALANCE = {"simple-shuffle": "weighted", "least-busy": "least_inflight"}
# litellm_params turnout maps; any other is a request default turnout does not set.
DEPLOYMENT_KEYS = frozenset(
    {
        "model",
        "api_key",
        "api_base",
        "rpm",
        "tpm",
        "timeout",
        "extra_headers",
        "organization",
        "api_version",
        "input_cost_per_token",
        "output_cost_per_token",
    }
)


# The sections written, in this order (empty ones are left out), with their comments.
SECTIONS = (
    ("routing", "Retries and cooldowns, from LiteLLM's router settings."),
    ("providers", "Upstreams: one per distinct endpoint and key of the model_list."),
    (
        "models",
        "Logical models: one per LiteLLM model_name, its deployments as targets. Targets sharing\n"
        "a priority are balanced; a failed one falls back to the next (fallbacks: priority 1+).",
    ),
    ("limits", "LiteLLM's per-deployment rpm/tpm, summed: a limit on each model as a whole."),
    ("prices", "USD per million tokens (LiteLLM's cost per token x 1e6)."),
    ("auth", "Who may call."),
)


@dataclass(frozen=True, slots=True)
class Deployment:
    """One model_list entry, mapped: the model it serves and its target."""

    model_name: str
    target: dict[str, Any]
    rpm: int | None
    tpm: int | None


def from_litellm(raw: Any) -> Imported:
    """Map a parsed LiteLLM config; raises NotAConfig when ``raw`` is not one."""
    if not isinstance(raw, dict) or not isinstance(raw.get("model_list"), list):
        raise NotAConfig("not a LiteLLM config: expected a mapping with a model_list")
    raw = _env_refs(raw)
    out = Imported("LiteLLM")
    for name, comment in SECTIONS:
        out.section(name, comment)
    settings = _settings(raw, out)
    timeout = settings.get("timeout", settings.get("request_timeout"))
    providers = _Providers(timeout if isinstance(timeout, int | float) else None)
    deployments = [
        d
        for i, entry in enumerate(raw["model_list"])
        if (d := _deployment(f"model_list[{i}]", entry, providers, out)) is not None
    ]
    groups: dict[str, list[Deployment]] = {}
    for deployment in deployments:
        groups.setdefault(deployment.model_name, []).append(deployment)
    _prices(raw["model_list"], out)
    for name, body in providers.bodies.items():
        out.section("providers").add(name, body)
    _models(groups, settings, out)
    _routing(settings, out)
    _general(raw.get("general_settings"), out)
    for key in raw:
        if key not in ("model_list", "litellm_settings", "router_settings", "general_settings"):
            why = (
                "set these in the environment turnout runs in"
                if key == "environment_variables"
                else "no turnout equivalent"
            )
            out.skip(key, why)
    return out


def _env_refs(node: Any) -> Any:
    """``os.environ/NAME`` → ``${NAME}``, anywhere."""
    if isinstance(node, str) and node.startswith(ENV_PREFIX):
        return "${" + node[len(ENV_PREFIX) :] + "}"
    if isinstance(node, dict):
        return {k: _env_refs(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_env_refs(v) for v in node]
    return node


def _settings(raw: dict[str, Any], out: Imported) -> dict[str, Any]:
    """The routing keys of litellm_settings and router_settings (the router's win)."""
    merged: dict[str, Any] = {}
    for section in ("litellm_settings", "router_settings"):
        body = raw.get(section)
        if body is None:
            continue
        if not isinstance(body, dict):
            out.skip(section, "expected a mapping")
            continue
        for key, value in body.items():
            if key in ROUTING_KEYS:
                merged[key] = value
            elif key.startswith("redis_"):
                out.skip(f"{section}.{key}", "shared state: turnout's is limits.backend: redis://…")
            else:
                out.skip(f"{section}.{key}", "no turnout equivalent")
    return merged


class _Providers:
    """Providers by what they are (kind, endpoint, key, headers): equal ones are shared."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self.bodies: dict[str, dict[str, Any]] = {}
        self._names: dict[str, str] = {}

    def add(self, stem: str, body: dict[str, Any]) -> str:
        if self.timeout is not None and "timeouts" not in body:
            body = {**body, "timeouts": {"first_byte": self.timeout}}
        key = json.dumps(body, sort_keys=True)
        if key in self._names:
            return self._names[key]
        name, n = stem, 1
        while name in self.bodies:
            n += 1
            name = f"{stem}-{n}"
        self.bodies[name] = body
        self._names[key] = name
        return name


def _deployment(where: str, entry: Any, providers: _Providers, out: Imported) -> Deployment | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("litellm_params"), dict):
        out.skip(where, "expected model_name and litellm_params")
        return None
    model_name = str(entry.get("model_name") or "")
    params: dict[str, Any] = entry["litellm_params"]
    if not model_name:
        out.skip(where, "expected a model_name")
        return None
    model = str(params.get("model", ""))
    where = f"{where} ({model_name})"
    if "*" in model_name or "*" in model:
        out.skip(where, "wildcard routing: turnout routes names it knows (see models[].patterns)")
        return None
    prefix, _, rest = model.partition("/")
    if not rest:
        # No prefix: LiteLLM infers the provider from the model's name.
        prefix, rest = ("anthropic" if model.startswith("claude") else "openai"), model
    preset = PRESETS.get(prefix)
    if preset is None:
        out.skip(
            where, f"provider {prefix!r} (litellm_params.model {model!r}) has no turnout adapter"
        )
        return None
    body = _provider(where, prefix, preset, params, out)
    if body is None:
        return None
    for key in params:
        if key not in DEPLOYMENT_KEYS:
            out.skip(f"{where}.litellm_params.{key}", "a request default turnout does not set")
    for key in entry:
        if key not in ("model_name", "litellm_params", "model_info", "rpm", "tpm"):
            out.skip(f"{where}.{key}", "no turnout equivalent")
    if isinstance(entry.get("model_info"), dict):
        extra = sorted(
            set(entry["model_info"]) - {"id", "input_cost_per_token", "output_cost_per_token"}
        )
        if extra:
            out.skip(f"{where}.model_info", f"{', '.join(extra)}: no turnout equivalent")
    stem = prefix if not params.get("api_base") or prefix == "azure" else _host_stem(body)
    target = {"provider": providers.add(stem, body), "model": rest}
    rpm, tpm = entry.get("rpm", params.get("rpm")), entry.get("tpm", params.get("tpm"))
    return Deployment(model_name, target, _count(rpm), _count(tpm))


def _provider(
    where: str, prefix: str, preset: Preset, params: dict[str, Any], out: Imported
) -> dict[str, Any] | None:
    base = str(params.get("api_base") or preset.base_url)
    if not base:
        out.skip(where, f"{prefix}/ needs litellm_params.api_base")
        return None
    kind = preset.kind
    headers = {str(k): str(v) for k, v in (params.get("extra_headers") or {}).items()}
    if prefix == "azure":
        base = base.rstrip("/") + "/openai/v1"
        out.approximate(
            "azure/ deployments",
            "Azure OpenAI as its v1 API (<api_base>/openai/v1, model = deployment name); "
            "api_version is not used by that API",
        )
    elif prefix == "openai" and params.get("api_base"):
        kind = "openai-compatible"  # a server of your own speaking OpenAI's format
    elif prefix == "huggingface" and not urlsplit(base).path.strip("/"):
        base = base.rstrip("/") + "/v1"
        out.approximate(
            "huggingface/ deployments",
            "Hugging Face endpoint as OpenAI-compatible at <api_base>/v1",
        )
    if not base.startswith(("http://", "https://", "${")):
        out.skip(where, f"api_base {base!r} is not an http(s) URL")
        return None
    key = params.get("api_key")
    if key is None and preset.key_env:
        # A server of your own may need no key: unset, the provider stays available.
        key = "${" + preset.key_env + (":-}" if params.get("api_base") else "}")
    if prefix == "azure" and key:
        headers["api-key"] = str(key)  # Azure's key header; Bearer is for Entra ID tokens
        key = None
    if isinstance(params.get("organization"), str):
        headers["OpenAI-Organization"] = params["organization"]
    if params.get("api_version") and prefix != "azure":
        out.skip(f"{where}.litellm_params.api_version", "no turnout equivalent")
    body: dict[str, Any] = {"kind": kind, "base_url": base}
    if key not in (None, "", "none"):
        body["api_key"] = str(key)
    if headers:
        body["headers"] = headers
    if isinstance(params.get("timeout"), int | float):
        body["timeouts"] = {"first_byte": params["timeout"]}
    return body


def _host_stem(body: dict[str, Any]) -> str:
    host = urlsplit(str(body["base_url"])).hostname or "local"
    if host in ("0.0.0.0", "127.0.0.1", "localhost"):
        return "local"
    return host.split(".")[0] or "upstream"


def _count(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float) and value > 0:
        return int(value)
    return None


def _models(groups: dict[str, list[Deployment]], settings: dict[str, Any], out: Imported) -> None:
    models = out.section("models")
    strategy = str(settings.get("routing_strategy", "simple-shuffle"))
    balance = BALANCE.get(strategy)
    if balance is None:
        out.skip("routing_strategy", f"{strategy!r}: turnout balances weighted or least_inflight")
        balance = "weighted"
    aliases = _aliases(settings.get("model_group_alias"), groups, out)
    fallbacks = _fallbacks(settings.get("fallbacks"), groups, out)
    limits: dict[str, dict[str, int]] = {}
    for name, deployments in groups.items():
        targets = (
            [_weighted(d) for d in deployments]
            if _all_counted(deployments)
            else [dict(d.target) for d in deployments]
        )
        for priority, other in enumerate(fallbacks.get(name, []), start=1):
            targets += [{**d.target, "priority": priority} for d in groups[other]]
        body: dict[str, Any] = {"name": name}
        if aliases.get(name):
            body["aliases"] = aliases[name]
        if len(deployments) > 1:
            body["balance"] = balance
        body["targets"] = targets
        comment = f"fallbacks: {', '.join(fallbacks[name])}" if fallbacks.get(name) else ""
        models.add(None, body, comment)
        if limit := _limit(deployments):
            limits[name] = limit
    if limits:
        out.section("limits").add("models", limits)
        out.approximate("rpm/tpm", "per-deployment limits became per-model limits and weights")


def _all_counted(deployments: list[Deployment]) -> bool:
    return len(deployments) > 1 and (
        all(d.rpm for d in deployments) or all(d.tpm for d in deployments)
    )


def _weighted(deployment: Deployment) -> dict[str, Any]:
    # LiteLLM's simple-shuffle picks by rpm (else tpm) when every deployment has one.
    return {**deployment.target, "weight": deployment.rpm or deployment.tpm}


def _limit(deployments: list[Deployment]) -> dict[str, int]:
    limit: dict[str, int] = {}
    if all(d.rpm for d in deployments):
        limit["rpm"] = sum(d.rpm or 0 for d in deployments)
    if all(d.tpm for d in deployments):
        limit["tpm"] = sum(d.tpm or 0 for d in deployments)
    return limit


def _aliases(
    value: Any, groups: dict[str, list[Deployment]], out: Imported
) -> dict[str, list[str]]:
    aliases: dict[str, list[str]] = {}
    if not isinstance(value, dict):
        return aliases
    for alias, target in value.items():
        name = target.get("model") if isinstance(target, dict) else target
        if name not in groups:
            out.skip(f"model_group_alias.{alias}", f"unknown model {name!r}")
        elif alias in groups:
            out.skip(f"model_group_alias.{alias}", "already a model of its own")
        else:
            aliases.setdefault(str(name), []).append(str(alias))
    return aliases


def _fallbacks(
    value: Any, groups: dict[str, list[Deployment]], out: Imported
) -> dict[str, list[str]]:
    chains: dict[str, list[str]] = {}
    for item in value if isinstance(value, list) else []:
        for name, others in item.items() if isinstance(item, dict) else []:
            if name not in groups:
                out.skip(f"fallbacks.{name}", "unknown (or unmapped) model")
                continue
            for other in others if isinstance(others, list) else [others]:
                if other in groups and other != name:
                    chains.setdefault(name, []).append(other)
                else:
                    out.skip(f"fallbacks.{name}", f"fallback {other!r} is unknown or unmapped")
    return chains


def _routing(settings: dict[str, Any], out: Imported) -> None:
    section = out.section("routing")
    for theirs, ours in (
        ("num_retries", "retries"),
        ("cooldown_time", "cooldown_seconds"),
        ("retry_after", "backoff_seconds"),
    ):
        value = settings.get(theirs)
        if isinstance(value, int | float) and not isinstance(value, bool):
            section.add(ours, value, f"{theirs}: {value}")
    if "num_retries" in settings:
        out.approximate(
            "num_retries", "turnout retries a model's whole target list (routing.retries)"
        )


def _general(value: Any, out: Imported) -> None:
    if not isinstance(value, dict):
        return
    for key, setting in value.items():
        if key == "master_key":
            out.section("auth").add(
                "admin_key",
                setting,
                "LiteLLM's master_key; callers' keys: turnout keys create",
            )
            out.approximate(
                "general_settings.master_key",
                "became auth.admin_key; give clients virtual keys (turnout keys create)",
            )
        else:
            out.skip(f"general_settings.{key}", "no turnout equivalent")


def _prices(model_list: list[Any], out: Imported) -> None:
    """USD per token in litellm_params or model_info → turnout's USD per million tokens."""
    for entry in model_list:
        if not isinstance(entry, dict):
            continue
        found: dict[str, float] = {}
        for source in (entry.get("model_info"), entry.get("litellm_params")):
            for theirs, ours in (
                ("input_cost_per_token", "input"),
                ("output_cost_per_token", "output"),
            ):
                value = source.get(theirs) if isinstance(source, dict) else None
                if isinstance(value, int | float):
                    found[ours] = round(float(value) * 1_000_000, 6)
        if found:
            out.section("prices").add(str(entry.get("model_name")), found)
