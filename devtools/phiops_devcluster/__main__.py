"""`python -m phiops_devcluster up|down|status` - the local control plane as project tooling."""

from __future__ import annotations

import argparse
import sys

from phiops_devcluster.plane import ControlPlane, default_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="phiops_devcluster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start (or keep) the local control plane and nodes")
    up.add_argument("--no-nodes", action="store_true", help="skip the local node runtime")
    down = sub.add_parser("down", help="stop the processes this tooling started")
    down.add_argument("--wipe", action="store_true", help="also delete etcd data and PKI")
    sub.add_parser("status", help="show which processes are running")
    args = parser.parse_args(argv)

    config = default_config()
    if args.command == "up" and args.no_nodes:
        from dataclasses import replace

        config = replace(config, with_nodes=False)
    plane = ControlPlane(config)
    if args.command == "up":
        plane.up()
        print(f"export KUBECONFIG={config.kubeconfig}")
    elif args.command == "down":
        plane.down(wipe=args.wipe)
    else:
        for name, pid in plane.status().items():
            print(f"{name:26} {f'running (pid {pid})' if pid else 'stopped'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
