"""`python -m app`: check the configuration, then serve with uvicorn."""

from __future__ import annotations

import sys

import uvicorn
from pydantic import ValidationError

from app.config import Settings
from app.observability.logs import configure_logging
from app.preflight import preflight


def main() -> int:
    try:
        settings = Settings()
    except ValidationError as e:
        for error in e.errors():
            name = "XMR_" + "_".join(str(part) for part in error["loc"]).upper()
            print(f"xmr: cannot start: {name}: {error['msg']}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    problem = preflight(settings)
    if problem:
        print(f"xmr: cannot start: {problem}", file=sys.stderr)
        return 2
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # keep configure_logging's handler and format
        access_log=False,  # the request middleware writes one line per request
        timeout_graceful_shutdown=25,
        # above the idle time after which clients and load balancers drop pooled connections
        # (httpx 5 s, nginx 60 s, AWS ALB 60 s): a server that closes first resets requests
        # the client is already sending on a connection it believed open
        timeout_keep_alive=75,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
