"""How long an idle connection to a local engine is kept: shared by both HTTP clients
(aiohttp's pools in connections.py, the lean client in h1.py) without one importing the other."""

# Kept below what local engines advertise (llama-server: 5 s), so the gateway drops an idle
# connection before the engine does instead of racing it.
ENGINE_KEEPALIVE_SECONDS = 3.0
