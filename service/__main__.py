"""python -m service [--host H] [--port P]: serve with uvicorn; everything else comes from IMDN_* settings."""

from __future__ import annotations

import argparse
import sys

from service.tuning import set_openmp_wait_policy, tune_malloc

set_openmp_wait_policy()  # before the imports below load torch

from service.config import get_settings  # noqa: E402
from service.logs import configure_logging  # noqa: E402
from service.server import exit_now, serve  # noqa: E402
from service.workers import supervise  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in containers)")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    tune_malloc()
    try:
        settings = get_settings()
    except Exception as exc:  # noqa: BLE001 - a settings error is the operator's to fix: say what, exit
        print(f"error: invalid settings: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if settings.workers > 1:
        return supervise(settings, args.host, args.port)
    return serve(settings, args.host, args.port)


if __name__ == "__main__":
    exit_now(main())  # no interpreter teardown: see exit_now
