"""`shardspec serve`: an OpenAI-compatible HTTP server over the engine (`app.build_app`).

    app.py          build_app: the parts put together, the lifespan (warm-up, then the engine thread)
    routes.py       the handlers, module-level, reading one ServerState
    streaming.py    a request's deltas as one JSON answer or a stream of OpenAI chunks
    event_stream.py the streamed response, which stops when its client goes away
    engine_loop.py  the engine on its own thread; requests and aborts go through its inbox
    openai_api.py   OpenAI's request and response shapes; http_errors.py its error shape
    metrics.py      Prometheus, from the engine's EngineStats snapshots

The server reads only the engine's public API and its snapshots.
"""
