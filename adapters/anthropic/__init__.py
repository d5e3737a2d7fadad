"""Anthropic's Messages API as an upstream (kind ``anthropic``).

``adapter`` speaks HTTP to Anthropic (and sends an Anthropic client's request as it came);
``translate`` turns OpenAI chat into Messages and Anthropic's answers back into OpenAI chat.
"""

from __future__ import annotations

from adapters.anthropic.adapter import AnthropicAdapter, AnthropicStream, register

__all__ = ["AnthropicAdapter", "AnthropicStream", "register"]
