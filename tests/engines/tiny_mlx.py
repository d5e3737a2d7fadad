r"""Tiny MLX models for integration tests against a real ``mlx_lm.server``.

The same tiny transformers as ``tiny_gguf.py`` (same spec, same scripted-reply trick, same
vocabulary), stored the way ``mlx_lm`` loads a model: a Hugging Face model directory.

* ``config.json`` / ``model.safetensors``: a 2-layer llama (or qwen2), HF tensor names.
* ``tokenizer.json``: a ``tokenizers`` byte-level BPE rebuilt from the llama.cpp vocab-only GGUF,
  so token ids match the GGUF models exactly (a scripted reply depends on those ids).
* ``tokenizer_config.json``: the Qwen2.5 ChatML template of ``tiny_gguf.py``, and
  ``tool_parser_type: json_tools`` so ``mlx_lm.server`` turns ``<tool_call>{...}</tool_call>``
  into OpenAI ``tool_calls`` (it infers a parser from template wording that ours does not use).

Building needs numpy, gguf, tokenizers and safetensors: the MLX venv made by
``tests/engines/setup_mlx.sh`` has them all, so ``ensure_mlx_models()`` (called from the project
venv, which lacks tokenizers) runs this module there, once, and caches the directories under
``~/.cache/turnout/models-mlx/<hash>/``.

Usage (with the MLX venv's python, from the repository root):
  python -m tests.engines.tiny_mlx --vocab ggml-vocab-qwen2.gguf -o tiny-hello \
      --script "Hello! I am a tiny test model."
  mlx_lm.server --model tiny-hello --port 8090
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from gguf import TokenType

from tests.engines.engines import (
    HELLO_TEXT,
    TOOL_CALL_TEXT,
    ModelRecipe,
    cache_root,
    engine_dir,
    mlx_server_binary,
    mlx_venv,
)
from tests.engines.tiny_gguf import (
    QWEN25_CHAT_TEMPLATE,
    BuiltModel,
    Matrix,
    ModelSpec,
    Vocab,
    install_script,
    load_vocab,
    plan_for_spec,
    resolve_eos,
)

# Split patterns of the byte-level BPE pre-tokenizers we support, keyed by llama.cpp's
# ``tokenizer.ggml.pre``; the same expressions llama.cpp and the upstream tokenizers use.
PRE_TOKENIZER_PATTERNS = {
    "qwen2": (
        r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
        r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    ),
}

MLX_RECIPES: tuple[ModelRecipe, ...] = (
    ModelRecipe("tiny-random", "ggml-vocab-qwen2.gguf"),
    ModelRecipe("tiny-hello", "ggml-vocab-qwen2.gguf", HELLO_TEXT),
    ModelRecipe("tiny-toolcall", "ggml-vocab-qwen2.gguf", TOOL_CALL_TEXT),
)

_REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


def hf_tokenizer(vocab: Vocab) -> Any:
    """A ``tokenizers.Tokenizer`` that splits text into the same ids as llama.cpp does."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
    )

    pre = str(vocab.entries["tokenizer.ggml.pre"].value) if vocab.model == "gpt2" else ""
    if pre not in PRE_TOKENIZER_PATTERNS:
        raise ValueError(f"only byte-level BPE vocabs {sorted(PRE_TOKENIZER_PATTERNS)} supported")
    texts = [token.decode("utf-8") for token in vocab.tokens]
    n_normal = vocab.types.count(TokenType.NORMAL)
    if any(kind != TokenType.NORMAL for kind in vocab.types[:n_normal]):
        raise ValueError("expected the ordinary tokens first, then the special ones")
    merges = [
        tuple(m.decode("utf-8").split(" ", 1)) for m in vocab.entries["tokenizer.ggml.merges"].value
    ]

    bpe = models.BPE(vocab={t: i for i, t in enumerate(texts[:n_normal])}, merges=merges)
    tokenizer = Tokenizer(bpe)  # no NFC normalizer (Qwen's own has one): llama.cpp has none
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRE_TOKENIZER_PATTERNS[pre]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    # Control tokens (<|im_end|> ...) are special; user-defined ones ([PAD...]) are plain markers.
    tokenizer.add_tokens(
        [
            AddedToken(texts[i], special=vocab.types[i] == TokenType.CONTROL, normalized=False)
            for i in range(n_normal, len(texts))
        ]
    )
    for i in range(n_normal, len(texts)):
        if tokenizer.token_to_id(texts[i]) != i:
            raise ValueError(
                f"token {texts[i]!r} got id {tokenizer.token_to_id(texts[i])}, not {i}"
            )
    return tokenizer


def tokenizer_config(vocab: Vocab, eos: int, spec: ModelSpec) -> dict[str, Any]:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": vocab.tokens[eos].decode("utf-8"),
        "pad_token": vocab.tokens[_pad_id(vocab, eos)].decode("utf-8"),
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": spec.context_length,
        "chat_template": spec.chat_template,
        "tool_parser_type": "json_tools",
    }


def _pad_id(vocab: Vocab, eos: int) -> int:
    entry = vocab.entries.get("tokenizer.ggml.padding_token_id")
    return int(entry.value) if entry else eos


# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------


def model_config(spec: ModelSpec, n_vocab: int, eos: int, tied: bool) -> dict[str, Any]:
    n_head_kv = spec.n_head_kv or spec.n_head
    if spec.n_embd % spec.n_head or spec.n_head % n_head_kv:
        raise ValueError("n_embd must be divisible by n_head, and n_head by n_head_kv")
    return {
        "architectures": ["Qwen2ForCausalLM" if spec.arch == "qwen2" else "LlamaForCausalLM"],
        "model_type": spec.arch,
        "hidden_size": spec.n_embd,
        "intermediate_size": spec.n_ff or 4 * spec.n_embd,
        "num_hidden_layers": spec.n_layer,
        "num_attention_heads": spec.n_head,
        "num_key_value_heads": n_head_kv,
        "head_dim": spec.n_embd // spec.n_head,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": spec.context_length,
        "vocab_size": n_vocab,
        "tie_word_embeddings": tied,
        "torch_dtype": "float16" if spec.dtype == "f16" else "float32",
        "eos_token_id": eos,
    }


def model_tensors(spec: ModelSpec, config: dict[str, Any], embed: Matrix) -> dict[str, Matrix]:
    """Random transformer blocks around `embed`, named as Hugging Face's llama/qwen2 do."""
    rng = np.random.default_rng(spec.seed + 1)  # `embed` drew from seed already
    dtype = embed.dtype
    n_embd, n_ff = config["hidden_size"], config["intermediate_size"]
    q_dim = config["num_attention_heads"] * config["head_dim"]
    kv_dim = config["num_key_value_heads"] * config["head_dim"]

    def matrix(rows: int, cols: int) -> Matrix:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * spec.std).astype(dtype)

    tensors = {"model.embed_tokens.weight": embed, "model.norm.weight": np.ones(n_embd, dtype)}
    for i in range(config["num_hidden_layers"]):
        layer = f"model.layers.{i}."
        tensors[layer + "input_layernorm.weight"] = np.ones(n_embd, dtype)
        tensors[layer + "post_attention_layernorm.weight"] = np.ones(n_embd, dtype)
        for name, rows in (("q", q_dim), ("k", kv_dim), ("v", kv_dim)):
            tensors[f"{layer}self_attn.{name}_proj.weight"] = matrix(rows, n_embd)
            if spec.arch == "qwen2":  # qwen2 has q/k/v biases
                tensors[f"{layer}self_attn.{name}_proj.bias"] = np.zeros(rows, dtype)
        tensors[layer + "self_attn.o_proj.weight"] = matrix(n_embd, q_dim)
        tensors[layer + "mlp.gate_proj.weight"] = matrix(n_ff, n_embd)
        tensors[layer + "mlp.up_proj.weight"] = matrix(n_ff, n_embd)
        tensors[layer + "mlp.down_proj.weight"] = matrix(n_embd, n_ff)
    return tensors


# --------------------------------------------------------------------------------------------
# Writing the model directory
# --------------------------------------------------------------------------------------------


def build_model_dir(spec: ModelSpec, out: Path) -> BuiltModel:
    """Write the model described by `spec` as directory `out` (atomically: temp dir + rename)."""
    from safetensors.numpy import save_file

    started = time.perf_counter()
    vocab = load_vocab(spec.vocab)
    eos = resolve_eos(vocab, spec.eos_token)
    script = plan_for_spec(spec, vocab)  # before writing anything: fails fast on bad scripts
    dtype = np.float16 if spec.dtype == "f16" else np.float32
    rng = np.random.default_rng(spec.seed)
    embed = (rng.standard_normal((len(vocab), spec.n_embd), dtype=np.float32) * spec.std).astype(
        dtype
    )
    # Without a script the output layer is tied to the embeddings, halving the file.
    output = install_script(script, embed, spec.n_embd) if script else None
    config = model_config(spec, len(vocab), eos, tied=output is None)
    tensors = model_tensors(spec, config, embed)
    if output is not None:
        tensors["lm_head.weight"] = output

    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    hf_tokenizer(vocab).save(str(partial / "tokenizer.json"))
    _write_json(partial / "tokenizer_config.json", tokenizer_config(vocab, eos, spec))
    _write_json(partial / "config.json", config)
    _write_json(partial / "generation_config.json", {"eos_token_id": eos})
    save_file(tensors, str(partial / "model.safetensors"), metadata={"format": "mlx"})
    shutil.rmtree(out, ignore_errors=True)
    os.replace(partial, out)
    return BuiltModel(
        path=out,
        n_vocab=len(vocab),
        size_bytes=sum(f.stat().st_size for f in out.iterdir()),
        seconds=time.perf_counter() - started,
        script_tokens=script.body if script else None,
    )


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------
# The cached test set (called from the project venv)
# --------------------------------------------------------------------------------------------


def _models_key(vocab_dir: Path) -> str:
    """Hash of everything the directories depend on, so edits invalidate the cache."""
    digest = hashlib.sha256()
    for source in ("tiny_mlx.py", "tiny_gguf.py"):
        digest.update((Path(__file__).parent / source).read_bytes())
    digest.update(repr(MLX_RECIPES).encode())
    for name in sorted({r.vocab for r in MLX_RECIPES}):
        digest.update((vocab_dir / name).read_bytes())
    digest.update(mlx_venv().name.encode())  # the tokenizers/safetensors that write the files
    return digest.hexdigest()[:16]


def ensure_mlx_models(
    cache_dir: Path | None = None, vocab_dir: Path | None = None
) -> dict[str, Path]:
    """Build the tiny MLX model directories once; return {name: dir}, e.g. {"tiny-hello": ...}.

    Directories live in ``<cache_dir>/models-mlx/<hash>/``; a lock file keeps concurrent
    pytest processes from building the same set twice.  Needs the MLX venv (setup_mlx.sh).
    """
    server = mlx_server_binary()
    if server is None:
        raise FileNotFoundError("no MLX venv: run tests/engines/setup_mlx.sh")
    vocab_dir = vocab_dir or engine_dir() / "vocab"
    for recipe in MLX_RECIPES:
        if not (vocab_dir / recipe.vocab).is_file():
            raise FileNotFoundError(
                f"{vocab_dir / recipe.vocab} missing: run tests/engines/build_llama_server.sh"
            )
    target = (cache_dir or cache_root()) / "models-mlx" / _models_key(vocab_dir)
    paths = {r.name: target / r.name for r in MLX_RECIPES}
    done = target / ".ok"
    if done.is_file():
        return paths
    target.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not done.is_file():  # another process may have built them while we waited
            _build_in_mlx_venv(server.with_name("python"), paths, vocab_dir)
            done.touch()
    return paths


def _build_in_mlx_venv(python: Path, paths: dict[str, Path], vocab_dir: Path) -> None:
    jobs = [
        {"vocab": str(vocab_dir / r.vocab), "script": r.script, "out": str(paths[r.name])}
        for r in MLX_RECIPES
    ]
    # One interpreter for the whole set: importing tokenizers and reading the vocab dominate.
    subprocess.run(
        [str(python), "-m", "tests.engines.tiny_mlx", "--jobs", json.dumps(jobs)],
        cwd=_REPO,
        env={**os.environ, "PYTHONPATH": str(_REPO)},
        check=True,
    )


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m tests.engines.tiny_mlx",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = ModelSpec(vocab=Path())
    ap.add_argument("--vocab", type=Path, help="vocab-only GGUF (byte-level BPE: qwen2)")
    ap.add_argument("-o", "--out", type=Path, help="model directory to write")
    ap.add_argument("--script", help="reply exactly this text, then EOS")
    ap.add_argument("--script-after", default=d.script_after, help="token preceding the reply")
    ap.add_argument("--arch", choices=["llama", "qwen2"], default=d.arch)
    ap.add_argument("--n-embd", type=int, default=d.n_embd)
    ap.add_argument("--n-layer", type=int, default=d.n_layer)
    ap.add_argument("--n-head", type=int, default=d.n_head)
    ap.add_argument("--n-head-kv", type=int, help="default: --n-head")
    ap.add_argument("--n-ff", type=int, help="default: 4 * --n-embd")
    ap.add_argument("--ctx", type=int, default=d.context_length, help="trained context length")
    ap.add_argument("--dtype", choices=["f16", "f32"], default=d.dtype)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--std", type=float, default=d.std, help="stddev of the random weights")
    ap.add_argument("--eos-token", default=d.eos_token, help="EOS token text, if in the vocab")
    ap.add_argument("--chat-template-file", type=Path, help="default: built-in Qwen2.5 ChatML")
    ap.add_argument(
        "--jobs", help='JSON list of {"vocab", "script", "out"}: build several default models'
    )
    return ap


def _specs(args: argparse.Namespace) -> list[tuple[ModelSpec, Path]]:
    if args.jobs:
        return [
            (ModelSpec(vocab=Path(j["vocab"]), script=j.get("script")), Path(j["out"]))
            for j in json.loads(args.jobs)
        ]
    if args.vocab is None or args.out is None:
        raise SystemExit("--vocab and --out are required (or --jobs)")
    template = args.chat_template_file.read_text() if args.chat_template_file else None
    spec = ModelSpec(
        vocab=args.vocab,
        script=args.script,
        script_after=args.script_after,
        arch=args.arch,
        n_embd=args.n_embd,
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_head_kv=args.n_head_kv,
        n_ff=args.n_ff,
        context_length=args.ctx,
        dtype=args.dtype,
        seed=args.seed,
        std=args.std,
        eos_token=args.eos_token,
        chat_template=template or QWEN25_CHAT_TEMPLATE,
    )
    return [(spec, args.out)]


def main(argv: Sequence[str] | None = None) -> int:
    for spec, out in _specs(_parser().parse_args(argv)):
        try:
            built = build_model_dir(spec, out)
        except ValueError as exc:  # includes ScriptError
            print(f"error: {out}: {exc}", file=sys.stderr)
            return 2
        script = f", script tokens {built.script_tokens}" if built.script_tokens else ""
        print(
            f"wrote {built.path}/: {built.size_bytes / 1e6:.1f} MB, n_vocab={built.n_vocab}"
            f"{script}, {built.seconds:.2f}s",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
