"""Local roles made routable (``role:`` providers, implicit models) and their cross-checks."""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from gateway.config.engines import ALL_GPUS, AUTO_GPUS, GpuSpec, KvCache, Role
from gateway.config.schema import Config
from gateway.config.upstreams import Model, Target

ROLE_PREFIX = "role:"


def role_provider_name(role: str) -> str:
    return ROLE_PREFIX + role


def role_upstream_model(name: str, role: Role) -> str:
    """The ``model`` a request to this role's engine carries.

    Loading fills ``upstream_model`` in from the role's engine kind (``EngineKind.upstream_model``)
    where the role leaves it empty.
    """
    return role.upstream_model or role.model


def expand_roles(config: Config, upstream_model: Callable[[str, Role], str]) -> Config:
    """Make roles routable: ``role:`` targets become providers, and every role is a model too.

    A role named ``coder`` answers ``model: coder`` (and its aliases) unless a model of that
    name exists; such implicit models are ``local_only``: they are the local engine, by definition.
    ``upstream_model`` names the model each role's engine expects (its kind decides).
    """
    config = msgspec.structs.replace(
        config,
        roles={
            name: msgspec.structs.replace(role, upstream_model=upstream_model(name, role))
            for name, role in config.roles.items()
        },
    )

    def resolve(target: Target) -> Target:
        if not target.role:
            return target
        role = config.roles[target.role]
        return msgspec.structs.replace(
            target,
            provider=role_provider_name(target.role),
            model=target.model or role_upstream_model(target.role, role),
        )

    models = [
        msgspec.structs.replace(m, targets=tuple(resolve(t) for t in m.targets))
        for m in config.models
    ]
    taken = {n for m in models for n in (m.name, *m.aliases)}
    for name, role in config.roles.items():
        if name in taken:
            continue
        target = Target(provider=role_provider_name(name), model=role_upstream_model(name, role))
        aliases = tuple(a for a in role.aliases if a not in taken)
        models.append(
            Model(
                name=name,
                targets=(target,),
                aliases=aliases,
                local_only=True,
                description=role.description or f"local {role.engine} role",
            )
        )
    return msgspec.structs.replace(config, models=tuple(models))


def validate_roles(config: Config) -> list[str]:
    problems: list[str] = []
    roles = config.roles
    for name, role in roles.items():
        where = f"roles.{name}"
        # What a role's engine kind demands of it is checked by the kind (EngineKinds).
        for other in role.fallback:
            if other not in roles:
                problems.append(
                    f"{where}.fallback: unknown role {other!r} (roles: {', '.join(sorted(roles))})"
                )
            elif other == name:
                problems.append(f"{where}.fallback: a role cannot fall back to itself")
        if problem := _gpus_problem(role.gpus):
            problems.append(f"{where}.gpus: {problem}")
    seen: dict[str, str] = {}
    for group_name, group in config.engines.groups.items():
        where = f"engines.groups.{group_name}"
        if group.max_loaded < 1:
            problems.append(f"{where}.max_loaded: expected a number >= 1")
        for member in group.members:
            if member not in roles:
                problems.append(f"{where}.members: unknown role {member!r}")
            elif member in seen:
                problems.append(
                    f"{where}.members: role {member!r} is already in group {seen[member]}"
                )
            seen[member] = group_name
        for member in group.persistent:
            if member not in group.members:
                problems.append(f"{where}.persistent: {member!r} is not a member of this group")
        if len(group.persistent) > group.max_loaded:
            problems.append(f"{where}.persistent: more persistent roles than max_loaded allows")
    for name in config.engines.preload:
        if name not in roles:
            problems.append(f"engines.preload: unknown role {name!r}")
    problems.extend(_kv_cache_problems(config.engines.kv_cache))
    problems.extend(_scheduling_problems(config))
    for i, model in enumerate(config.models):
        for j, target in enumerate(model.targets):
            where = f"models[{i}].targets[{j}]"
            if bool(target.role) == bool(target.provider):
                problems.append(f"{where}: expected either provider (with model) or role")
            elif target.role and target.role not in roles:
                problems.append(
                    f"{where}.role: unknown role {target.role!r} (roles: {', '.join(sorted(roles)) or 'none'})"
                )
            elif target.provider and not target.model:
                problems.append(f"{where}.model: expected the upstream model name")
    return problems


def _gpus_problem(spec: GpuSpec) -> str:
    if isinstance(spec, str):
        if spec in (AUTO_GPUS, ALL_GPUS):
            return ""
        return f"expected {AUTO_GPUS}, {ALL_GPUS} or a list of GPU indices such as [0, 1], got {spec!r}"
    if not spec or any(i < 0 for i in spec) or len(set(spec)) != len(spec):
        return "expected distinct GPU indices >= 0 as nvidia-smi numbers them, e.g. [0, 1]"
    return ""


def _scheduling_problems(config: Config) -> list[str]:
    engines, roles = config.engines, config.roles
    problems = [
        f"engines.{key}: expected a number >= 0"
        for key in ("max_wait_seconds", "min_residency_seconds", "return_after_idle_seconds")
        if getattr(engines, key) < 0
    ]
    if engines.memory_budget_mb < 0:
        problems.append("engines.memory_budget_mb: expected MB >= 0 (0: the machine's free memory)")
    if engines.default_role and engines.default_role not in roles:
        problems.append(
            f"engines.default_role: unknown role {engines.default_role!r} "
            f"(roles: {', '.join(sorted(roles)) or 'none'})"
        )
    if engines.return_after_idle_seconds > 0 and not engines.default_role:
        problems.append("engines.return_after_idle_seconds: expected engines.default_role too")
    return problems


def _kv_cache_problems(kv: KvCache) -> list[str]:
    problems = [
        f"engines.kv_cache.{key}: expected a number >= 0 (0: no cap)"
        for key in ("max_bytes_per_role", "max_bytes_total")
        if getattr(kv, key) < 0
    ]
    problems.extend(
        f"engines.kv_cache.{key}: expected a number > 0"
        for key in ("save_timeout_seconds", "restore_timeout_seconds")
        if getattr(kv, key) <= 0
    )
    return problems
