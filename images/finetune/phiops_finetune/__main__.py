"""`python -m phiops_finetune --config FILE`: the training workload of a FineTuneJob."""

from __future__ import annotations

import sys

from phiops_workload.contracts import WorkloadConfig, WorkloadResult
from phiops_workload.runtime import WorkloadError, run


def main(config: WorkloadConfig) -> WorkloadResult:
    # The training itself lands with the FineTuneJob feature; until then the image says so.
    raise WorkloadError("NotImplemented", "the training workload is not part of this build yet")


if __name__ == "__main__":
    sys.exit(run("phiops_finetune", "FineTuneJob", main, sys.argv[1:]))
