"""Configs of other gateways (LiteLLM, llama-swap) mapped to routing.yaml: ``turnout import``."""
