"""Run a workload's `main(config)`: read the config, write the result, exit meaningfully."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar, cast

from pydantic import BaseModel, ValidationError

from phiops_workload.contracts import ResourceIdentity, WorkloadConfig, WorkloadResult

DEFAULT_CONFIG = "/etc/phiops/config.json"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"

# Exit codes the operator tells apart (a pod's exit code survives when its message does not).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_CONFIG = 2
EXIT_OUT_OF_MEMORY = 3  # CUDA out-of-memory: retrying the same pod cannot help


class WorkloadError(Exception):
    """A failure with a reason the operator shows as a condition."""

    def __init__(self, reason: str, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.reason = reason
        self.exit_code = exit_code


def write_result(result: WorkloadResult) -> None:
    path = Path(os.environ.get("PHIOPS_TERMINATION_LOG", DEFAULT_TERMINATION_LOG))
    try:
        path.write_text(result.to_message())
    except OSError as err:  # outside Kubernetes there may be no such file to write
        logging.getLogger(__name__).warning("could not write %s: %s", path, err)
    print(result.model_dump_json(), flush=True)


class _Identified(Protocol):
    """A workload config: it says which custom resource it is for."""

    @property
    def resource(self) -> ResourceIdentity: ...


Config = TypeVar("Config", bound=BaseModel)


def run_job(
    name: str,
    config_path: str,
    config_model: type[Config],
    kind: str,
    main: Callable[[Config], WorkloadResult],
) -> int:
    """Read and check the config, run `main`, and always leave a termination message behind:
    the one loop every workload image shares, whatever its config model."""
    try:
        config = config_model.model_validate_json(Path(config_path).read_text())
    except (OSError, ValidationError) as err:
        write_result(WorkloadResult(outcome="Failed", reason="InvalidConfig", message=str(err)))
        return EXIT_BAD_CONFIG
    found = cast(_Identified, config).resource.kind
    if found != kind:
        message = f"{name} serves a {kind}, but the config is for a {found}"
        write_result(WorkloadResult(outcome="Failed", reason="InvalidConfig", message=message))
        return EXIT_BAD_CONFIG
    try:
        result = main(config)
    except WorkloadError as err:
        logging.getLogger(name).error("%s: %s", err.reason, err)
        write_result(WorkloadResult(outcome="Failed", reason=err.reason, message=str(err)))
        return err.exit_code
    write_result(result)
    return EXIT_OK if result.outcome == "Succeeded" else EXIT_FAILED


def run(
    name: str,
    kind: str,
    main: Callable[[WorkloadConfig], WorkloadResult],
    argv: list[str] | None,
) -> int:
    """Entry point for images whose config is the generic `WorkloadConfig`."""
    parser = argparse.ArgumentParser(prog=name)
    parser.add_argument("--config", default=os.environ.get("PHIOPS_CONFIG", DEFAULT_CONFIG))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return run_job(name, args.config, WorkloadConfig, kind, main)
