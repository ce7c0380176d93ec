"""`python -m phiops_serve --config FILE`: the OpenAI-compatible inference server."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from aiohttp import web
from phiops_workload.serving import ServeConfig

from phiops_serve.app import create_admin_app, create_app, work_dir_for
from phiops_serve.engine import Engine
from phiops_serve.engine_args import engine_environment

DEFAULT_CONFIG = "/etc/phiops/serve.json"
log = logging.getLogger("phiops_serve")


async def serve(config: ServeConfig, work_dir: Path) -> None:
    """Both applications until SIGTERM/SIGINT. Handlers are cancelled when their client goes
    away, which aborts the request in vLLM (non-streaming ones included)."""
    engine = Engine(config, work_dir)
    runners = [
        web.AppRunner(create_app(config, engine=engine), handler_cancellation=True),
        web.AppRunner(create_admin_app(engine)),
    ]
    for runner, port in zip(runners, (config.port, config.admin_port), strict=True):
        await runner.setup()
        await web.TCPSite(runner, config.host, port).start()
    log.info(
        "listening on %s:%d (API) and :%d (adapters)", config.host, config.port, config.admin_port
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    for runner in reversed(runners):
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="phiops_serve")
    parser.add_argument("--config", default=os.environ.get("PHIOPS_CONFIG", DEFAULT_CONFIG))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # pymilvus logs a full traceback for every failed call; while Milvus is away that is one
    # per retry. Our own one-line warnings say the same.
    logging.getLogger("pymilvus.decorators").setLevel(logging.CRITICAL)
    config = ServeConfig.load(args.config)
    work_dir = work_dir_for(config)
    # vLLM reads these when imported, and its engine process inherits them; the config wins
    # over what the process inherited.
    os.environ.update(engine_environment(config, work_dir))
    for folder in ("vllm-cache", "ipc", "tmp"):
        (work_dir / folder).mkdir(parents=True, exist_ok=True)
    import torch

    # This process only embeds one short query per request: more threads take cores from
    # vLLM's engine process (measured beside a busy engine on 2 cores: 250 ms per query on
    # 2 threads, 44-80 ms on 1).
    torch.set_num_threads(1)
    asyncio.run(serve(config, work_dir))
    return 0


if __name__ == "__main__":  # vLLM starts its engine process with spawn: keep this guard
    sys.exit(main(sys.argv[1:]))
