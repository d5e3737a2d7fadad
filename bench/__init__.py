"""Side-by-side benchmarks: turnout vs the upstream directly vs LiteLLM. See bench/README.md."""
