"""`python -m app`: check the configuration, then serve with uvicorn."""

from __future__ import annotations

import logging
import sys

import uvicorn

from app.config import Settings
from app.preflight import preflight


def main() -> int:
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
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
        timeout_graceful_shutdown=25,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
