r"""Tiny GGUF models for integration tests against a real llama-server.

A model written here is a 2-layer llama (or qwen2) transformer with random weights, so it is a
*real* model to llama.cpp (real graph, real KV cache, real sampling) that costs nothing to run.
It gets a real tokenizer, copied from one of llama.cpp's vocab-only files
(``models/ggml-vocab-*.gguf``), and a Qwen2.5-style ChatML chat template with Hermes-style
``<tool_call>`` support, so ``llama-server --jinja`` accepts ``tools`` and parses tool calls.

Scripted mode (``--script TEXT``) makes the reply deterministic: whenever the last prompt token
is ``--script-after`` (default ``"\n"``, which ends the ChatML generation prompt
``<|im_start|>assistant\n``) the model answers exactly TEXT and then EOS, at any temperature.
It works as a bigram table hidden in the weights:

* TEXT is split into vocabulary tokens t1..tn such that every token is always followed by the
  same token ("\n" -> t1 -> ... -> tn -> EOS).  Any split is fine because the server only
  concatenates the pieces when it detokenizes, so we search the splits for a consistent one.
* Each token that has a successor gets an embedding of length ``EMBED_GAIN`` along the axis
  reserved for that successor; the successor's row of ``output.weight`` points along the same
  axis.  The random layers only add small noise to the residual stream, so after the final
  RMSNorm the successor's logit is about ``TARGET_LOGIT`` and every other logit about 0.

Example tool call script (compact JSON: a token may only ever have one successor):
  --script $'<tool_call>\n{"name":"get_weather","arguments":{"city":"Paris"}}\n</tool_call>'

Usage:
  python -m tests.engines.tiny_gguf --vocab ggml-vocab-qwen2.gguf -o tiny.gguf
  python -m tests.engines.tiny_gguf --vocab ggml-vocab-qwen2.gguf -o hello.gguf \
      --script "Hello! I am a tiny test model."
"""

from __future__ import annotations

import argparse
import math
import os
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from gguf import GGUFValueType, GGUFWriter, LlamaFileType, TokenType

Arch = Literal["llama", "qwen2"]
DType = Literal["f16", "f32"]
Matrix = npt.NDArray[Any]

# The prompt format of Qwen2.5-Instruct (ChatML + Hermes tool calls), written out plainly.
# llama.cpp derives its tool-call parser and grammar by rendering the template with sample
# messages, so what matters is that it renders exactly like the Qwen2.5 original.
QWEN25_CHAT_TEMPLATE = r"""
{%- if messages and messages[0].role == 'system' -%}
    {%- set system_text = messages[0].content -%}
{%- else -%}
    {%- set system_text = 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' -%}
{%- endif -%}
{{- '<|im_start|>system\n' + system_text -}}
{%- if tools -%}
    {{- '\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n' -}}
    {{- 'You are provided with function signatures within <tools></tools> XML tags:\n<tools>' -}}
    {%- for tool in tools -%}
        {{- '\n' + (tool | tojson) -}}
    {%- endfor -%}
    {{- '\n</tools>\n\nFor each function call, return a json object with function name and ' -}}
    {{- 'arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n' -}}
    {{- '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>' -}}
{%- endif -%}
{{- '<|im_end|>\n' -}}
{%- for message in messages -%}
    {%- if message.role == 'system' -%}
        {%- if not loop.first -%}
            {{- '<|im_start|>system\n' + message.content + '<|im_end|>\n' -}}
        {%- endif -%}
    {%- elif message.role == 'user' or (message.role == 'assistant' and not message.tool_calls) -%}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' -}}
    {%- elif message.role == 'assistant' -%}
        {{- '<|im_start|>assistant' -}}
        {%- if message.content -%}
            {{- '\n' + message.content -}}
        {%- endif -%}
        {%- for call in message.tool_calls -%}
            {%- if call.function is defined -%}
                {%- set call = call.function -%}
            {%- endif -%}
            {{- '\n<tool_call>\n{"name": "' + call.name + '", "arguments": ' -}}
            {{- (call.arguments | tojson) + '}\n</tool_call>' -}}
        {%- endfor -%}
        {{- '<|im_end|>\n' -}}
    {%- elif message.role == 'tool' -%}
        {%- if loop.first or messages[loop.index0 - 1].role != 'tool' -%}
            {{- '<|im_start|>user' -}}
        {%- endif -%}
        {{- '\n<tool_response>\n' + message.content + '\n</tool_response>' -}}
        {%- if loop.last or messages[loop.index0 + 1].role != 'tool' -%}
            {{- '<|im_end|>\n' -}}
        {%- endif -%}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|im_start|>assistant\n' -}}
{%- endif -%}
""".strip()

# exp(-64) * 150k tokens ~ 1e-23: the scripted token wins even when sampling at temperature 2.
TARGET_LOGIT = 64.0
# Random layers add a residual update of norm ~0.3; a larger embedding keeps that noise small.
EMBED_GAIN = 4.0
# Bound on the split search, so an impossible script fails fast instead of hanging.
MAX_SEARCH_STEPS = 200_000


class ScriptError(ValueError):
    """The script text cannot be expressed as a bigram chain in this vocabulary."""


# --------------------------------------------------------------------------------------------
# Reading the vocab-only GGUF
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetaValue:
    """One GGUF metadata entry, kept with its on-disk types so it can be re-written verbatim."""

    type: GGUFValueType
    value: Any
    sub_type: GGUFValueType | None = None


_SCALAR_FORMATS: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}


class _MetadataReader:
    """Sequential reader of GGUF metadata.

    gguf.GGUFReader needs ~6 s for the 152k-token qwen2 vocab (it builds numpy views for
    every string); reading just the key/values ourselves takes a fraction of a second.
    """

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def _unpack(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self._data, self._pos)
        self._pos += struct.calcsize(fmt)
        return value

    def _string(self) -> bytes:
        size = self._unpack("<Q")
        start, self._pos = self._pos, self._pos + size
        return self._data[start : self._pos]

    def _array(self) -> MetaValue:
        sub_type = GGUFValueType(self._unpack("<I"))
        count = self._unpack("<Q")
        if sub_type == GGUFValueType.STRING:
            items: list[Any] = [self._string() for _ in range(count)]
        elif sub_type in _SCALAR_FORMATS:
            dtype = np.dtype(_SCALAR_FORMATS[sub_type])
            items = np.frombuffer(self._data, dtype, count, self._pos).tolist()
            self._pos += count * dtype.itemsize
        else:
            raise ValueError(f"nested GGUF arrays are not supported ({sub_type!r})")
        return MetaValue(GGUFValueType.ARRAY, items, sub_type)

    def _value(self, vtype: GGUFValueType) -> MetaValue:
        if vtype == GGUFValueType.ARRAY:
            return self._array()
        if vtype == GGUFValueType.STRING:
            return MetaValue(vtype, self._string().decode("utf-8"))
        return MetaValue(vtype, self._unpack(_SCALAR_FORMATS[vtype]))

    def read(self) -> dict[str, MetaValue]:
        if self._data[:4] != b"GGUF":
            raise ValueError("not a GGUF file")
        self._pos = 8  # magic + version
        _n_tensors = self._unpack("<Q")
        n_entries = self._unpack("<Q")
        entries: dict[str, MetaValue] = {}
        for _ in range(n_entries):
            key = self._string().decode("utf-8")
            entries[key] = self._value(GGUFValueType(self._unpack("<I")))
        return entries


def read_metadata(path: Path) -> dict[str, MetaValue]:
    """All key/value metadata of a little-endian GGUF file."""
    try:
        return _MetadataReader(path.read_bytes()).read()
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


# --------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------


def _gpt2_char_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's byte-level BPE alphabet.

    Printable latin-1 bytes stand for themselves; the other 68 bytes (controls, space, ...)
    are shifted, in byte order, to U+0100 onwards ("\n" is "Ċ", " " is "Ġ").
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {chr(b): b for b in printable}
    shifted = [b for b in range(256) if b not in table.values()]
    table.update({chr(0x100 + i): b for i, b in enumerate(shifted)})
    return table


_GPT2_DECODE = _gpt2_char_to_byte()
_SPM_SPACE = "\u2581"


@dataclass(frozen=True)
class Vocab:
    """The tokenizer of a vocab-only GGUF."""

    entries: dict[str, MetaValue]  # every tokenizer.* key, copied verbatim into new models
    tokens: list[bytes]
    types: list[int]

    @property
    def model(self) -> str:
        """llama.cpp tokenizer kind: "gpt2" (byte-level BPE) or "llama" (SentencePiece)."""
        return str(self.entries["tokenizer.ggml.model"].value)

    def __len__(self) -> int:
        return len(self.tokens)

    def find(self, text: str) -> int | None:
        """Id of the token spelled exactly `text` in the vocab (e.g. "<|im_end|>")."""
        try:
            return self.tokens.index(text.encode("utf-8"))
        except ValueError:
            return None

    def piece(self, token: int) -> bytes | None:
        """Bytes llama.cpp prints for an ordinary token; None for control/special tokens.

        Only NORMAL and BYTE tokens qualify: control tokens are dropped from output and
        user-defined ones are matched as special markers, so a script avoids both.
        """
        text, kind = self.tokens[token].decode("utf-8", "replace"), self.types[token]
        if self.model == "gpt2" and kind == TokenType.NORMAL:
            if all(ch in _GPT2_DECODE for ch in text):
                return bytes(_GPT2_DECODE[ch] for ch in text)
            return None
        if self.model == "llama" and kind == TokenType.NORMAL:
            return text.replace(_SPM_SPACE, " ").encode("utf-8")
        if self.model == "llama" and kind == TokenType.BYTE:
            return bytes([int(text[3:5], 16)])  # "<0x0A>"
        return None

    def pieces(self) -> dict[bytes, list[int]]:
        """Printed bytes -> token ids printing them (NORMAL tokens before BYTE fallbacks)."""
        if self.model not in ("gpt2", "llama"):
            raise ScriptError(f"scripts are not supported for tokenizer {self.model!r}")
        index: dict[bytes, list[int]] = {}
        for token in sorted(range(len(self)), key=lambda t: self.types[t] == TokenType.BYTE):
            piece = self.piece(token)
            if piece:
                index.setdefault(piece, []).append(token)
        return index


def load_vocab(path: Path) -> Vocab:
    """Tokenizer of a vocab-only GGUF such as llama.cpp's models/ggml-vocab-qwen2.gguf."""
    meta = read_metadata(path)
    entries = {k: v for k, v in meta.items() if k.startswith("tokenizer.")}
    if "tokenizer.ggml.tokens" not in entries:
        raise ValueError(f"{path}: no tokenizer.ggml.tokens (not a vocab GGUF?)")
    tokens: list[bytes] = entries["tokenizer.ggml.tokens"].value
    types_entry = entries.get("tokenizer.ggml.token_type")
    types = list(types_entry.value) if types_entry else [int(TokenType.NORMAL)] * len(tokens)
    return Vocab(entries=entries, tokens=tokens, types=types)


def resolve_eos(vocab: Vocab, preferred: str | None) -> int:
    """EOS token id: `preferred` (e.g. ChatML's "<|im_end|>") if the vocab has it, else its own."""
    if preferred is not None and (token := vocab.find(preferred)) is not None:
        return token
    entry = vocab.entries.get("tokenizer.ggml.eos_token_id")
    if entry is None:
        raise ValueError("vocab has no EOS token; pass eos_token")
    return int(entry.value)


# --------------------------------------------------------------------------------------------
# Scripted replies
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Script:
    """A reply split into tokens, and the bigram table that reproduces it."""

    body: list[int]  # the reply's tokens, EOS excluded
    successor: dict[int, int] = field(default_factory=dict)  # token -> the token that follows


def start_token(vocab: Vocab, after: str) -> int:
    """Token the prompt ends with right before the reply (what `after` tokenizes to)."""
    candidates = vocab.pieces().get(after.encode("utf-8"))
    if not candidates:
        raise ScriptError(f"no single token prints {after!r}")
    return candidates[0]


def plan_script(text: str, vocab: Vocab, start: int, eos: int) -> Script:
    """Split `text` so that start -> t1 -> ... -> tn -> eos is a function (one successor each).

    Depth-first search over segmentations. Preferring tokens that have no successor yet keeps
    the table unconstrained; preferring long pieces keeps the reply short.
    """
    target = text.encode("utf-8")
    if not target:
        raise ScriptError("empty script")
    index = vocab.pieces()
    longest = max(map(len, index))
    options = [_options_at(target, pos, index, longest, eos) for pos in range(len(target))]
    successor: dict[int, int] = {}
    body: list[int] = []
    steps = 0

    def extend(pos: int, prev: int) -> bool:
        nonlocal steps
        steps += 1
        if steps > MAX_SEARCH_STEPS:
            raise ScriptError(f"gave up splitting {text!r} after {MAX_SEARCH_STEPS} steps")
        if pos == len(target):
            return successor.setdefault(prev, eos) == eos
        fixed = successor.get(prev)
        choices = [c for c in options[pos] if fixed is None or c[0] == fixed]
        choices.sort(key=lambda c: (c[0] in successor, -c[1]))
        for token, length in choices:
            if fixed is None:
                successor[prev] = token
            body.append(token)
            if extend(pos + length, token):
                return True
            body.pop()
            if fixed is None:
                del successor[prev]
        return False

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 2 * len(target) + 200))  # one frame per token
    try:
        if not extend(0, start):
            raise ScriptError(f"{text!r} has no split where each token has one successor")
    finally:
        sys.setrecursionlimit(limit)
    return Script(body=body, successor=successor)


def _options_at(
    target: bytes, pos: int, index: dict[bytes, list[int]], longest: int, eos: int
) -> list[tuple[int, int]]:
    """(token, length) for every token whose printed bytes start `target` at `pos`."""
    found: list[tuple[int, int]] = []
    for length in range(min(longest, len(target) - pos), 0, -1):
        for token in index.get(target[pos : pos + length], ()):
            if token != eos:
                found.append((token, length))
    return found


def install_script(script: Script, token_embd: Matrix, n_embd: int) -> Matrix:
    """Write the bigram table into `token_embd` (in place); return the matching output.weight.

    Each distinct successor owns one residual axis: tokens it follows are embedded along it
    and its output row reads it.  All other output rows are zero, so their logits stay ~0.
    """
    targets = sorted(set(script.successor.values()))
    if len(targets) > n_embd:
        raise ScriptError(
            f"script needs {len(targets)} distinct next tokens but n_embd is {n_embd}; "
            "use a larger n_embd"
        )
    axis = {token: i for i, token in enumerate(targets)}
    output = np.zeros((token_embd.shape[0], n_embd), dtype=token_embd.dtype)
    # RMSNorm scales the hidden state to norm sqrt(n_embd), all of it on the axis.
    logit_gain = TARGET_LOGIT / math.sqrt(n_embd)
    for token, i in axis.items():
        output[token, i] = logit_gain
    for token, nxt in script.successor.items():
        token_embd[token] = 0
        token_embd[token, axis[nxt]] = EMBED_GAIN
    return output


# --------------------------------------------------------------------------------------------
# Writing the model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """Everything that determines a tiny model file (same spec + same vocab = same bytes)."""

    vocab: Path
    script: str | None = None
    script_after: str = "\n"
    arch: Arch = "llama"
    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int | None = None  # default n_head; lower it for grouped-query attention
    n_ff: int | None = None  # default 4 * n_embd
    context_length: int = 4096
    dtype: DType = "f16"
    seed: int = 0
    std: float = 0.02
    eos_token: str | None = "<|im_end|>"  # ChatML ends turns with it; falls back to vocab EOS
    chat_template: str = QWEN25_CHAT_TEMPLATE
    name: str = "tiny-test"


@dataclass(frozen=True)
class BuiltModel:
    path: Path
    n_vocab: int
    size_bytes: int
    seconds: float
    script_tokens: list[int] | None


@dataclass(frozen=True)
class _Shape:
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


def _shape(spec: ModelSpec) -> _Shape:
    n_head_kv = spec.n_head_kv or spec.n_head
    if spec.n_embd % spec.n_head or spec.n_head % n_head_kv:
        raise ValueError("n_embd must be divisible by n_head, and n_head by n_head_kv")
    return _Shape(spec.n_embd, spec.n_layer, spec.n_head, n_head_kv, spec.n_ff or 4 * spec.n_embd)


def _write_hparams(writer: GGUFWriter, spec: ModelSpec, shape: _Shape, n_vocab: int) -> None:
    writer.add_name(spec.name)
    f16 = spec.dtype == "f16"
    writer.add_file_type(LlamaFileType.MOSTLY_F16 if f16 else LlamaFileType.ALL_F32)
    writer.add_vocab_size(n_vocab)
    writer.add_context_length(spec.context_length)
    writer.add_embedding_length(shape.n_embd)
    writer.add_block_count(shape.n_layer)
    writer.add_feed_forward_length(shape.n_ff)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_head_kv)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)


def _write_tokenizer(writer: GGUFWriter, vocab: Vocab, eos: int, chat_template: str) -> None:
    replaced = {"tokenizer.chat_template", "tokenizer.ggml.eos_token_id"}
    for key, entry in vocab.entries.items():
        if key not in replaced:
            writer.add_key_value(key, entry.value, entry.type, sub_type=entry.sub_type)
    writer.add_eos_token_id(eos)
    if "tokenizer.ggml.add_bos_token" not in vocab.entries:
        # SentencePiece models are trained with BOS, byte-level BPE (Qwen) ones without.
        writer.add_add_bos_token(vocab.model == "llama")
    writer.add_chat_template(chat_template)


class _Weights:
    """Random weight factory; numpy shapes are (out, in), i.e. ggml's ne reversed."""

    def __init__(self, spec: ModelSpec) -> None:
        self._rng = np.random.default_rng(spec.seed)
        self._std = spec.std
        self._dtype = np.float16 if spec.dtype == "f16" else np.float32

    def matrix(self, rows: int, cols: int) -> Matrix:
        values = self._rng.standard_normal((rows, cols), dtype=np.float32) * self._std
        return values.astype(self._dtype)

    @staticmethod
    def ones(n: int) -> Matrix:
        return np.ones(n, dtype=np.float32)  # norms stay f32, as llama.cpp's converters do

    @staticmethod
    def zeros(n: int) -> Matrix:
        return np.zeros(n, dtype=np.float32)


def _write_blocks(writer: GGUFWriter, spec: ModelSpec, shape: _Shape, w: _Weights) -> None:
    q_dim, kv_dim = shape.n_head * shape.head_dim, shape.n_head_kv * shape.head_dim
    for i in range(shape.n_layer):
        blk = f"blk.{i}."
        writer.add_tensor(blk + "attn_norm.weight", w.ones(shape.n_embd))
        writer.add_tensor(blk + "attn_q.weight", w.matrix(q_dim, shape.n_embd))
        writer.add_tensor(blk + "attn_k.weight", w.matrix(kv_dim, shape.n_embd))
        writer.add_tensor(blk + "attn_v.weight", w.matrix(kv_dim, shape.n_embd))
        if spec.arch == "qwen2":  # qwen2 requires q/k/v biases
            writer.add_tensor(blk + "attn_q.bias", w.zeros(q_dim))
            writer.add_tensor(blk + "attn_k.bias", w.zeros(kv_dim))
            writer.add_tensor(blk + "attn_v.bias", w.zeros(kv_dim))
        writer.add_tensor(blk + "attn_output.weight", w.matrix(shape.n_embd, q_dim))
        writer.add_tensor(blk + "ffn_norm.weight", w.ones(shape.n_embd))
        writer.add_tensor(blk + "ffn_gate.weight", w.matrix(shape.n_ff, shape.n_embd))
        writer.add_tensor(blk + "ffn_up.weight", w.matrix(shape.n_ff, shape.n_embd))
        writer.add_tensor(blk + "ffn_down.weight", w.matrix(shape.n_embd, shape.n_ff))


def plan_for_spec(spec: ModelSpec, vocab: Vocab) -> Script | None:
    """The script plan of `spec`, or None for a plain random model."""
    if spec.script is None:
        return None
    start = start_token(vocab, spec.script_after)
    return plan_script(spec.script, vocab, start, resolve_eos(vocab, spec.eos_token))


def build_model(spec: ModelSpec, out: Path) -> BuiltModel:
    """Write the model described by `spec` to `out` (atomically: temp file + rename)."""
    started = time.perf_counter()
    shape = _shape(spec)
    vocab = load_vocab(spec.vocab)
    script = plan_for_spec(spec, vocab)  # before writing anything: fails fast on bad scripts
    weights = _Weights(spec)

    token_embd = weights.matrix(len(vocab), shape.n_embd)
    # Without a script the output layer is tied to token_embd, halving the file.
    output = install_script(script, token_embd, shape.n_embd) if script else None

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
    writer = GGUFWriter(partial, spec.arch)
    try:
        _write_hparams(writer, spec, shape, len(vocab))
        _write_tokenizer(writer, vocab, resolve_eos(vocab, spec.eos_token), spec.chat_template)
        writer.add_tensor("token_embd.weight", token_embd)
        _write_blocks(writer, spec, shape, weights)
        writer.add_tensor("output_norm.weight", weights.ones(shape.n_embd))
        if output is not None:
            writer.add_tensor("output.weight", output)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(partial, out)
    return BuiltModel(
        path=out,
        n_vocab=len(vocab),
        size_bytes=out.stat().st_size,
        seconds=time.perf_counter() - started,
        script_tokens=script.body if script else None,
    )


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m tests.engines.tiny_gguf",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = ModelSpec(vocab=Path())
    ap.add_argument("--vocab", required=True, type=Path, help="vocab-only GGUF")
    ap.add_argument("-o", "--out", required=True, type=Path)
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
    ap.add_argument("--name", default=d.name)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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
        name=args.name,
    )
    try:
        built = build_model(spec, args.out)
    except ValueError as exc:  # includes ScriptError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    script = f", script tokens {built.script_tokens}" if built.script_tokens else ""
    print(
        f"wrote {built.path}: {built.size_bytes / 1e6:.1f} MB, n_vocab={built.n_vocab}"
        f"{script}, {built.seconds:.2f}s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
