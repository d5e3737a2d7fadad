"""The shipped routing.yaml's `embed` role, as written there, on a real llama-server: its
command (--embeddings, last-token pooling, one batch of the whole context) serves
/v1/embeddings, by the role's name and by its alias."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.engines.engines import llama_server_binary
from tests.gateway_server import config_of, running_gateway

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parent.parent


def shipped_role(name: str) -> dict[str, Any]:
    role: dict[str, Any] = yaml.safe_load((ROOT / "routing.yaml").read_text())["roles"][name]
    return role


async def test_the_shipped_embed_role_answers_embeddings(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    role = shipped_role("embed")
    # The file the role names, under TURNOUT_MODELS: here a tiny model stands in for it.
    (tmp_path / Path(role["model"]).name).symlink_to(tiny_models["tiny-random"])
    env = {"TURNOUT_MODELS": str(tmp_path), "LLAMA_SERVER": str(llama_server_binary())}
    raw = {
        "roles": {"embed": {**role, "start_timeout_seconds": 60}},
        "engines": {"wait_timeout_seconds": 60},
        "routing": {"retries": 0},
    }
    async with running_gateway(config_of(raw, env)) as gw:
        client = gw.openai()
        reply = await client.embeddings.create(model="embed", input=["a cat", "tax law"])
        again = await client.embeddings.create(model="embeddings", input="a cat")
    vectors = [item.embedding for item in reply.data]
    assert len(vectors) == 2 and len(vectors[0]) == len(vectors[1]) > 0
    assert vectors[0] != vectors[1]
    assert again.data[0].embedding == pytest.approx(vectors[0], abs=1e-4)
