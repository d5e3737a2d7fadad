"""`turnout batch`: reading JSONL, JSON, YAML and CSV; running against a real gateway; resuming.

The gateway and its fake upstream run on a thread of the test process; the batch runs as a
real `turnout` subprocess, interrupted with a real SIGINT where the test says so.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.client.batch_items import Item, ItemError, read_items
from gateway.client.progress import Progress
from tests.cli_harness import ADMIN_KEY, ROOT, Served, cli_env, serve_in_thread, turnout
from tests.fakes.openai_upstream import FakeOpenAI

# --- reading the input --------------------------------------------------------------------------


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def test_jsonl_items_default_their_id_to_the_line_number(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(
        '{"prompt": "one"}\n'
        "\n"
        '{"id": "x", "messages": [{"role": "user", "content": "two"}], "model": "m",'
        ' "temperature": 0.2}\n'
        '{"prompt": "three", "system": "be brief", "max_tokens": 5}\n'
    )
    assert read_items(path) == [
        Item(1, user("one")),
        Item("x", user("two"), "m", {"temperature": 0.2}),
        Item(
            4, [{"role": "system", "content": "be brief"}, *user("three")], None, {"max_tokens": 5}
        ),
    ]


def test_yaml_and_json_lists_take_strings_or_mappings(tmp_path: Path) -> None:
    yaml_path = tmp_path / "in.yaml"
    yaml_path.write_text("# prompts\n- just a prompt\n- {id: b, prompt: second, model: m}\n")
    json_path = tmp_path / "in.json"
    json_path.write_text('["just a prompt", {"id": "b", "prompt": "second", "model": "m"}]')
    expected = [Item(1, user("just a prompt")), Item("b", user("second"), "m")]
    assert read_items(yaml_path) == expected
    assert read_items(json_path) == expected


def test_csv_cells_that_read_as_json_are_sent_as_values(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text(
        "id,prompt,model,temperature,response_format,note\n"
        'a,"hello, world",m,0.5,"{""type"": ""json_object""}",plain text\n'
        ",second,,,,\n"
    )
    assert read_items(path) == [
        Item(
            "a",
            user("hello, world"),
            "m",
            {"temperature": 0.5, "response_format": {"type": "json_object"}, "note": "plain text"},
        ),
        Item(2, user("second")),
    ]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.jsonl", '{"prompt": "ok"}\n{"prompt": \n', r"a.jsonl:2: invalid JSON"),
        ("b.jsonl", '{"model": "m"}\n', r"b.jsonl:1: needs a prompt or messages"),
        (
            "c.jsonl",
            '{"prompt": "a", "messages": []}\n',
            r"c.jsonl:1: has both prompt and messages",
        ),
        (
            "d.jsonl",
            '{"id": 1, "prompt": "a"}\n{"id": "1", "prompt": "b"}\n',
            r"id '1' appears twice",
        ),
        ("e.yaml", "prompt: not a list\n", r"e.yaml: expected a list of items, got dict"),
        ("f.csv", "id,question\n1,what\n", r"f.csv: the header needs a prompt column"),
        ("g.txt", "hello\n", r"cannot tell the format from '.txt'"),
        ("h.yaml", "- [1, 2]\n", r"h.yaml:1: an item is a mapping or a prompt string, not list"),
    ],
)
def test_bad_input_names_the_file_and_the_item(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ItemError, match=message):
        read_items(path)


def test_the_progress_bar_is_plain_text() -> None:
    progress = Progress(100, done=40, enabled=False, width=10)
    progress.advance(True)
    progress.advance(False)
    assert progress.line().startswith("[====>     ] 42/100 1 failed ")
    done = Progress(2, done=2, enabled=False, width=10)
    assert done.line().startswith("[==========] 2/2 ")


# --- against a real gateway ---------------------------------------------------------------------


def raw_config(fake: FakeOpenAI | None) -> dict[str, Any]:
    assert fake is not None
    up = {"kind": "openai", "base_url": fake.url, "local": True}
    return {
        "providers": {"up": up},
        "models": [
            {"name": "chat", "targets": [{"provider": "up", "model": "ok"}]},
            {"name": "other", "targets": [{"provider": "up", "model": "gpt-4o"}]},
            {"name": "slow", "targets": [{"provider": "up", "model": "slow-first-byte"}]},
            {"name": "broken", "targets": [{"provider": "up", "model": "error-400"}]},
        ],
        "routing": {"retries": 0},
        "auth": {"admin_key": ADMIN_KEY},
    }


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with serve_in_thread(raw_config, FakeOpenAI(first_byte_delay=0.3)) as running:
        yield running


@pytest.fixture
def fake(served: Served) -> Iterator[FakeOpenAI]:
    assert served.fake is not None
    served.fake.requests.clear()
    yield served.fake


@pytest.fixture
def env(served: Served, tmp_path: Path) -> dict[str, str]:
    return cli_env(tmp_path, TURNOUT_URL=served.url, TURNOUT_API_KEY=ADMIN_KEY)


def results(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def posts(fake: FakeOpenAI) -> list[Any]:
    return [r for r in fake.requests if r.method == "POST"]


INPUTS = {
    "jsonl": (
        "in.jsonl",
        '{"prompt": "alpha"}\n{"id": "b", "prompt": "beta", "model": "other"}\n'
        '{"messages": [{"role": "user", "content": "gamma"}], "max_tokens": 2}\n',
    ),
    "yaml": (
        "in.yaml",
        "- alpha\n- {id: b, prompt: beta, model: other}\n"
        "- {messages: [{role: user, content: gamma}], max_tokens: 2}\n",
    ),
    "csv": ("in.csv", "id,prompt,model,max_tokens\n,alpha,,\nb,beta,other,\n,gamma,,2\n"),
}


@pytest.mark.parametrize("fmt", sorted(INPUTS))
def test_each_format_runs_and_writes_one_result_line_per_item(
    fmt: str, env: dict[str, str], fake: FakeOpenAI, tmp_path: Path
) -> None:
    name, text = INPUTS[fmt]
    (tmp_path / name).write_text(text)
    result = turnout("batch", str(tmp_path / name), "--model", "chat", env=env)
    assert result.returncode == 0, result.stderr
    records = {r["id"]: r for r in results(tmp_path / f"{name}.results.jsonl")}
    # default ids: the line (JSONL), position (YAML) or row (CSV), which agree here
    assert set(records) == {1, "b", 3}
    assert records[1]["response"] == "echo: alpha" and records[1]["model"] == "chat"
    assert records["b"]["model"] == "other" and records["b"]["response"] == "echo: beta"
    # max_tokens went through: the fake truncates the reply to two deltas
    assert records[3]["finish_reason"] == "length"
    for record in records.values():
        assert record["ok"] is True and record["error"] is None
        assert record["usage"]["total_tokens"] > 0 and record["latency_ms"] > 0
    assert {p.body["model"] for p in posts(fake)} == {"ok", "gpt-4o"}
    assert "[==============================] 3/3" in result.stderr
    assert "3 items: 3 ok, 0 failed in " in result.stderr


def test_concurrency_limits_requests_in_flight(
    env: dict[str, str], fake: FakeOpenAI, tmp_path: Path
) -> None:
    path = tmp_path / "slow.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(6)))
    started = time.monotonic()
    result = turnout("batch", str(path), "--model", "slow", "--concurrency", "3", env=env)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    arrivals = sorted(p.received_at for p in posts(fake))
    assert len(arrivals) == 6
    # Three go out together; the fourth only once one of them answered (0.3 s later).
    assert arrivals[2] - arrivals[0] < 0.25
    assert arrivals[3] - arrivals[0] >= 0.25
    assert elapsed >= 0.6
    assert sorted(r["id"] for r in results(tmp_path / "slow.jsonl.results.jsonl")) == list(
        range(1, 7)
    )


def test_a_failing_item_is_recorded_and_only_it_is_retried(
    env: dict[str, str], fake: FakeOpenAI, tmp_path: Path
) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_text(
        '{"id": "good", "prompt": "fine"}\n{"id": "bad", "prompt": "no", "model": "broken"}\n'
    )
    out = tmp_path / "out" / "results.jsonl"
    args = ("batch", str(path), "--model", "chat", "--output", str(out), "--json")
    first = turnout(*args, env=env)
    assert first.returncode == 1
    summary = json.loads(first.stdout)
    assert summary == {**summary, "total": 2, "ok": 1, "failed": 1, "skipped": 0, "remaining": 0}
    bad = next(r for r in results(out) if r["id"] == "bad")
    assert bad["ok"] is False and bad["response"] is None
    assert bad["error"].startswith("HTTP 400: upstream returned HTTP 400")
    assert "1 failed" in first.stderr

    fake.requests.clear()
    second = turnout(*args, env=env)
    assert second.returncode == 1
    assert json.loads(second.stdout)["skipped"] == 1
    assert [p.body["model"] for p in posts(fake)] == ["error-400"]  # only the failed item again
    lines = results(out)
    assert sorted(r["id"] for r in lines) == ["bad", "bad", "good"] and lines[-1]["id"] == "bad"


def test_interrupted_run_resumes_without_duplicates(
    served: Served, env: dict[str, str], fake: FakeOpenAI, tmp_path: Path
) -> None:
    path = tmp_path / "many.csv"
    path.write_text("prompt\n" + "".join(f"question {i}\n" for i in range(24)))
    out = tmp_path / "many.csv.results.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "batch", str(path), "--model", "slow"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not out.exists() or len(out.read_text().splitlines()) < 5:
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    assert "interrupted with" in stderr and "run the same command again" in stderr
    assert "Traceback" not in stderr
    done_first = results(out)  # every line is whole JSON
    assert 5 <= len(done_first) < 24 and all(r["ok"] for r in done_first)

    again = turnout("batch", str(path), "--model", "slow", "--concurrency", "8", env=env)
    assert again.returncode == 0, again.stderr
    assert f"{len(done_first)} already done" in again.stderr
    ids = [r["id"] for r in results(out)]
    assert Counter(ids) == Counter(range(1, 25)), "an item is missing or was written twice"
    # Each item reached the upstream once, give or take the few abandoned in flight at Ctrl-C.
    assert 24 <= len(posts(fake)) <= 24 + 4


def test_a_cut_off_last_line_is_ignored_and_the_run_goes_on(
    env: dict[str, str], fake: FakeOpenAI, tmp_path: Path
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    out = tmp_path / "in.jsonl.results.jsonl"
    out.write_text(
        json.dumps({"id": 1, "ok": True, "response": "earlier"}) + '\n{"id": 2, "ok": tr'
    )
    result = turnout("batch", str(path), "--model", "chat", "--quiet", env=env)
    assert result.returncode == 0, result.stderr
    lines = out.read_text().splitlines()
    assert lines[1] == '{"id": 2, "ok": tr'
    assert json.loads(lines[2])["id"] == 2 and json.loads(lines[2])["ok"] is True
    assert [p.body["messages"][-1]["content"] for p in posts(fake)] == ["b"]
    assert "[" not in result.stderr  # --quiet: no progress bar


def test_nothing_left_and_missing_models_are_reported(
    env: dict[str, str], fake: FakeOpenAI, tmp_path: Path
) -> None:
    path = tmp_path / "in.yaml"
    path.write_text("- one\n- two\n")
    refused = turnout("batch", str(path), env=env)
    assert refused.returncode == 1
    assert (
        refused.stderr == "error: items 1, 2 name no model: pass --model (or set TURNOUT_MODEL)\n"
    )
    assert turnout("batch", str(path), env={**env, "TURNOUT_MODEL": "chat"}).returncode == 0
    again = turnout("batch", str(path), "--json", env={**env, "TURNOUT_MODEL": "chat"})
    assert json.loads(again.stdout)["skipped"] == 2 and len(posts(fake)) == 2
    bad = turnout("batch", str(tmp_path / "missing.jsonl"), env=env)
    assert bad.returncode == 1 and bad.stderr.startswith("error: ") and "cannot read" in bad.stderr


def test_an_item_slower_than_the_timeout_fails_alone(
    env: dict[str, str], fake: FakeOpenAI, tmp_path: Path
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(
        '{"id": "fast", "prompt": "a"}\n{"id": "late", "prompt": "b", "model": "slow"}\n'
    )
    result = turnout("batch", str(path), "--model", "chat", "--timeout", "0.1", env=env)
    assert result.returncode == 1
    records = {r["id"]: r for r in results(tmp_path / "in.jsonl.results.jsonl")}
    assert records["fast"]["ok"] is True
    assert records["late"]["ok"] is False
    assert records["late"]["error"].startswith("no answer from turnout at http://127.0.0.1:")
    assert records["late"]["error"].endswith("within 0.1 s")
