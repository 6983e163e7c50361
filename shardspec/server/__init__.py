"""`shardspec serve`: an OpenAI-compatible HTTP server over the engine (`app.build_app`).

The engine runs on its own thread (`engine_loop.py`); the server reads only
the engine's public API and its `EngineStats` snapshots.
"""
