"""`python -m phiops_embed --config FILE`: the embedding workload of a KnowledgeBase."""

from __future__ import annotations

import sys

from phiops_workload.contracts import WorkloadConfig, WorkloadResult
from phiops_workload.runtime import WorkloadError, run


def main(config: WorkloadConfig) -> WorkloadResult:
    # The embedding itself lands with the KnowledgeBase feature; until then the image says so.
    raise WorkloadError("NotImplemented", "the embedding workload is not part of this build yet")


if __name__ == "__main__":
    sys.exit(run("phiops_embed", "KnowledgeBase", main, sys.argv[1:]))
