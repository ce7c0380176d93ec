"""`python -m phiops_devcluster.node_runtime --state-dir STATE --kubeconfig KUBECONFIG`."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from phiops_devcluster.node_runtime.runtime import DEFAULT_SERVICE_CIDR, NodeRuntime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="phiops_devcluster.node_runtime",
        description="Local node runtime (dev/test only): plays the kubelet for two nodes.",
    )
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument(
        "--service-cidr",
        default=DEFAULT_SERVICE_CIDR,
        help="the apiserver's --service-cluster-ip-range (ClusterIPs outside it are not proxied)",
    )
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)

    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("urllib3").setLevel(logging.WARNING)

    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("node-runtime").info("received %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    NodeRuntime(args.state_dir, args.kubeconfig, args.service_cidr).run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
