"""`python -m phiops_serve --config FILE`: the inference workload of a PhiDeployment."""

from __future__ import annotations

import sys

from phiops_workload.contracts import WorkloadConfig, WorkloadResult
from phiops_workload.runtime import WorkloadError, run


def main(config: WorkloadConfig) -> WorkloadResult:
    # The inference itself lands with the PhiDeployment feature; until then the image says so.
    raise WorkloadError("NotImplemented", "the inference workload is not part of this build yet")


if __name__ == "__main__":
    sys.exit(run("phiops_serve", "PhiDeployment", main, sys.argv[1:]))
