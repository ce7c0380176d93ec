"""`python -m phiops_operator [-A | -n NS ...] [--verbose]`: run the operator."""

from __future__ import annotations

import argparse
import os
import sys

import kopf

from phiops_operator import memory_report, supervise


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="phiops-operator", description=__doc__)
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    scope.add_argument(
        "-n", "--namespace", action="append", default=[], help="watch this namespace (repeatable)"
    )
    parser.add_argument("--verbose", action="store_true", help="log handler activity")
    parser.add_argument("--debug", action="store_true", help="log everything, incl. API bodies")
    parser.add_argument(
        "--liveness-port", type=int, default=8081, help="serve /healthz here (0: off)"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve /metrics here (env PHIOPS_METRICS_PORT)",
    )
    args = parser.parse_args(argv)
    if not args.all_namespaces and not args.namespace:
        args.namespace = [os.environ.get("PHIOPS_WATCH_NAMESPACE") or "default"]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.metrics_port is not None:
        os.environ["PHIOPS_METRICS_PORT"] = str(args.metrics_port)
    memory_report.install()  # only with PHIOPS_MEMORY_REPORT set
    import phiops_operator.handlers  # noqa: F401  (registers the handlers)

    kopf.configure(verbose=args.verbose, debug=args.debug)
    liveness = f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port else None
    supervise.run_until_stopped(
        lambda run: kopf.run(
            standalone=True,  # one active replica (Recreate strategy), no peering objects
            clusterwide=args.all_namespaces,
            namespaces=args.namespace,
            liveness_endpoint=liveness,
            stop_flag=run.stop_flag,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
