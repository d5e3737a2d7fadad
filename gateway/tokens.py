"""Token estimates without a tokenizer: every guess turnout makes about a token count.

Each function estimates one thing, from what its caller has at hand without decoding
anything (bytes counted, chunks counted, characters counted), so each has its own ratio and
the reason for it. A real count from the upstream or the engine's tokenizer always wins;
these fill in before it arrives (rate limits, routing) or when it never does (usage rows and
metrics, marked ``estimated``).

A leaf: it imports nothing from ``gateway``. The request path calls several of these per
request, so they stay plain integer arithmetic that builds nothing but the int it returns
(``from_text`` on non-ASCII text encodes a copy; nothing on the request path calls it).
"""

from __future__ import annotations

# English text and code run about four characters a token under BPE vocabularies; so does
# the JSON that carries them. Shared by ``from_text`` (for its ASCII characters),
# ``from_request_bytes`` and ``from_message_parts``.
CHARS_PER_TOKEN = 4

# A stricter ratio for the one estimate that must not come out low: real tokenizers average
# 3.5-4.5 bytes per token on English and code, and 3 errs on the side of routing to a
# larger-context fallback rather than failing inside the engine (``context_need``).
CONTEXT_BYTES_PER_TOKEN = 3

# A whole answer's JSON without usage is mostly framing and field names around its text: a
# rough 6 bytes a token (``completion_from_body``).
ANSWER_BYTES_PER_TOKEN = 6

# Anthropic's count_tokens estimate prices an image (or a document) like Anthropic's own
# estimate for a mid-sized picture, and each turn's role and framing at a few tokens.
TOKENS_PER_IMAGE = 1200
TOKENS_PER_TURN = 3


def from_text(text: str) -> int:
    """A tokenizer-free guess at how many tokens ``text`` is.

    About four ASCII characters per token (English and code under BPE vocabularies), and one
    per other character (CJK, emoji), where four-per-token would undercount several times over.
    """
    if not text:
        return 0
    if text.isascii():  # the common case, answered without encoding a copy
        return max(1, -(-len(text) // CHARS_PER_TOKEN))
    ascii_chars = len(text.encode("ascii", "ignore"))
    return max(1, -(-ascii_chars // CHARS_PER_TOKEN) + len(text) - ascii_chars)


def from_request_bytes(n: int) -> int:
    """Prompt tokens of a request whose body is ``n`` bytes of JSON: ~4 bytes a token.

    The body's field names and framing count too; it only has to be in the right range, for
    a usage row or a metric marked as estimated, or an admission settled afterwards.
    """
    return n // CHARS_PER_TOKEN


def admission_estimate(body_bytes: int, max_tokens: int | None) -> int:
    """A cheap upper-ish guess before the call: the prompt as ``from_request_bytes`` plus the cap.

    It only has to be in the right range: ``Admission.release`` settles the real usage.
    """
    return body_bytes // CHARS_PER_TOKEN + (max_tokens or 0)


def context_need(prompt_bytes: int, max_tokens: int) -> int:
    """A safe upper estimate of a request's context need: its messages' bytes plus the cap.

    Not ``admission_estimate``: this one decides whether a conversation fits an engine's
    context, where a low guess fails inside the engine, so it counts 3 bytes a token
    (``CONTEXT_BYTES_PER_TOKEN``) over the messages alone, not 4 over the whole body.
    """
    return prompt_bytes // CONTEXT_BYTES_PER_TOKEN + max(0, max_tokens)


def completion_from_stream(chunks: int) -> int:
    """Completion tokens of a streamed answer whose usage never came, from its event count.

    A stream counts its upstream events, not their bytes (SSE framing and JSON run ~12 bytes
    a token; counting bytes logged a 10-token reply as 119): llama.cpp, MLX, Ollama and OpenAI
    send about one token per chunk, after one opening chunk that carries only the role.
    Counting costs the relay one integer add per event and no decoding.
    """
    return max(0, chunks - 1)


def completion_from_body(n_bytes: int) -> int:
    """Completion tokens of a whole answer without usage (rare): its JSON bytes at ~6 a token."""
    return n_bytes // ANSWER_BYTES_PER_TOKEN


def from_message_parts(chars: int, images: int, turns: int) -> int:
    """Input tokens of a Messages request from its counted parts (Anthropic's count_tokens).

    Rough but stable, the same for every upstream a model may use: every character at
    ``CHARS_PER_TOKEN`` (unlike ``from_text``, non-ASCII is not counted apart; kept so the
    answers stay what they were), plus a fixed price per image and per turn; at least 1.
    """
    tokens = -(-chars // CHARS_PER_TOKEN) + images * TOKENS_PER_IMAGE + turns * TOKENS_PER_TURN
    return max(1, tokens)
