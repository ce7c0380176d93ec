"""`python -m phiops_serve --config FILE`: the OpenAI-compatible inference server."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from aiohttp import web
from phiops_workload.serving import ServeConfig

from phiops_serve.app import create_app

DEFAULT_CONFIG = "/etc/phiops/serve.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="phiops_serve")
    parser.add_argument("--config", default=os.environ.get("PHIOPS_CONFIG", DEFAULT_CONFIG))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # pymilvus logs a full traceback for every failed call; while Milvus is away that is one
    # per retry. Our own one-line warnings say the same.
    logging.getLogger("pymilvus.decorators").setLevel(logging.CRITICAL)
    config = ServeConfig.load(args.config)
    web.run_app(create_app(config), host=config.host, port=config.port)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
