"""The online service (DESIGN §6): a thin FastAPI shell around a plain ``Recommender``.

``create_app(settings)`` (service.app) builds the app; ``cdrec serve`` (service.cli) runs it under uvicorn.
The Recommender talks to three outside systems, each behind a small Protocol (service.ports) with one real
adapter: ``RedisSequenceStore`` (live sequences), ``OnnxEncoder`` (user encoders and bridges) and
``FaissItemIndex`` (item retrieval). This package imports core only: never torch, training or export.
"""
