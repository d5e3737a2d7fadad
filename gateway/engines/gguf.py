"""The few numbers of a GGUF model file that size its KV cache, read from the file's header.

Only the metadata is read: arrays (the tokenizer's, megabytes) are skipped by seeking, tensors
are never touched, so this costs a few small reads even for a 40 GB model.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

# Scalar GGUF value types: type id -> struct format (little-endian).
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class ModelShape:
    """What the KV cache per token depends on."""

    layers: int
    kv_heads: int
    key_length: int
    value_length: int

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of every layer at f16 (llama.cpp's default cache type), 2 bytes each."""
        return self.layers * self.kv_heads * (self.key_length + self.value_length) * 2


def file_size_and_shape(path: str | Path) -> tuple[int, ModelShape | None] | None:
    """A local GGUF model's size in bytes and shape; None when ``path`` is no such file.
    Blocking: call it on a thread."""
    file = Path(path)
    if file.suffix.lower() != ".gguf" or not file.is_file():
        return None
    # A split model (name-00001-of-00003.gguf) weighs all its parts; the first holds the header.
    split = _SPLIT.search(file.name)
    parts = [file]
    if split is not None:
        stem = file.name[: split.start()]
        parts = [
            file.with_name(f"{stem}-{i:05d}-of-{split[2]}.gguf")
            for i in range(1, int(split[2]) + 1)
        ]
    size = sum(p.stat().st_size for p in parts if p.is_file())
    return size, read_shape(file)


def read_shape(path: str | Path) -> ModelShape | None:
    """The model's shape, or None when the file is not a GGUF this reader understands."""
    try:
        with open(path, "rb") as f:
            return _shape(_metadata(f))
    except (OSError, ValueError, struct.error, UnicodeDecodeError):
        return None


def _metadata(f: BinaryIO) -> dict[str, int | float | str | list[int]]:
    if f.read(4) != b"GGUF":
        raise ValueError("not a GGUF file")
    (version,) = struct.unpack("<I", f.read(4))
    count_format = "<I" if version == 1 else "<Q"
    width = struct.calcsize(count_format)
    struct.unpack(count_format, f.read(width))  # tensor count
    (kv_count,) = struct.unpack(count_format, f.read(width))
    found: dict[str, int | float | str | list[int]] = {}
    for _ in range(kv_count):
        key = _string(f, count_format)
        (kind,) = struct.unpack("<I", f.read(4))
        found[key] = _value(f, kind, count_format, keep_array=key.endswith("head_count_kv"))
    return found


def _string(f: BinaryIO, count_format: str) -> str:
    (length,) = struct.unpack(count_format, f.read(struct.calcsize(count_format)))
    return f.read(length).decode()


def _value(
    f: BinaryIO, kind: int, count_format: str, keep_array: bool = False
) -> int | float | str | list[int]:
    if kind in _SCALARS:
        fmt = _SCALARS[kind]
        value: int | float = struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
        return value
    if kind == _STRING:
        return _string(f, count_format)
    if kind != _ARRAY:
        raise ValueError(f"unknown GGUF value type {kind}")
    (item_kind,) = struct.unpack("<I", f.read(4))
    (count,) = struct.unpack(count_format, f.read(struct.calcsize(count_format)))
    if item_kind in _SCALARS and not keep_array:
        f.seek(count * struct.calcsize(_SCALARS[item_kind]), 1)
        return []
    if item_kind == _STRING and not keep_array:
        width = struct.calcsize(count_format)
        for _ in range(count):  # the vocabulary: lengths only, the text is skipped
            (length,) = struct.unpack(count_format, f.read(width))
            f.seek(length, 1)
        return []
    items = [_value(f, item_kind, count_format) for _ in range(count)]
    return [int(i) for i in items if isinstance(i, int | float)] if keep_array else []


def _shape(meta: dict[str, int | float | str | list[int]]) -> ModelShape | None:
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        return None

    def number(key: str, default: int = 0) -> int:
        value = meta.get(f"{arch}.{key}", default)
        if isinstance(value, list):  # per-layer head counts: the largest bounds the cache
            return max(value, default=default)
        return int(value) if isinstance(value, int | float) else default

    layers = number("block_count")
    heads = number("attention.head_count")
    embedding = number("embedding_length")
    if not layers or not heads or not embedding:
        return None
    head_dim = embedding // heads
    return ModelShape(
        layers=layers,
        kv_heads=number("attention.head_count_kv", heads),
        key_length=number("attention.key_length", head_dim),
        value_length=number("attention.value_length", head_dim),
    )
