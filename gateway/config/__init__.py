"""routing.yaml → typed, validated msgspec Structs.

Defaults live in the Struct declarations here and only here. A validation error names the key path
(``models[2].targets[0].provider``) and what was expected, so ``turnout check`` can print something
a user can act on.

The modules, from the bottom up: ``upstreams`` (providers, models, targets), ``engines`` (local
roles and their engines), ``schema`` (the document's root and gateway-wide sections), ``roles``
(roles made routable), ``validation`` (cross-checks and warnings), ``interpolation``
(``${VAR}``), ``sections`` (plugins' own sections) and ``loading``, which runs them in order and
alone asks the engine-kind registry which kinds exist. Only ``loading`` sits above the engine
layer; the rest import nothing above ``gateway.errors``. The modules the registry reaches still
import this package (which re-exports ``loading``), so tests/test_layers.py lists
loading → engines.registry as a known cycle until they import the leaf modules instead.
"""

from gateway.config.engines import TEMPLATE_VARIABLES, Engines, Group, KvCache, Role
from gateway.config.loading import from_mapping, load, parse
from gateway.config.roles import (
    ROLE_PREFIX,
    expand_roles,
    role_provider_name,
    role_upstream_model,
    validate_roles,
)
from gateway.config.schema import (
    Auth,
    Config,
    Layer,
    Limits,
    Plugins,
    Price,
    Prompt,
    Prompts,
    RateLimits,
    Server,
    Usage,
)
from gateway.config.sections import section
from gateway.config.upstreams import (
    Balance,
    Model,
    Provider,
    Routing,
    Target,
    Timeouts,
)
from gateway.config.validation import validate, warnings

__all__ = [
    "ROLE_PREFIX",
    "TEMPLATE_VARIABLES",
    "Auth",
    "Balance",
    "Config",
    "Engines",
    "Group",
    "KvCache",
    "Layer",
    "Limits",
    "Model",
    "Plugins",
    "Price",
    "Prompt",
    "Prompts",
    "Provider",
    "RateLimits",
    "Role",
    "Routing",
    "Server",
    "Target",
    "Timeouts",
    "Usage",
    "expand_roles",
    "from_mapping",
    "load",
    "parse",
    "role_provider_name",
    "role_upstream_model",
    "section",
    "validate",
    "validate_roles",
    "warnings",
]
