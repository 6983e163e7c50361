"""`shardspec serve`: an OpenAI-compatible HTTP server over the engine (`app.build_app`)."""
