"""What the Milvus behind a URI can do, decided by the embedder before it creates a
collection, and reported to the operator in `SyncFigures`.

A Milvus older than 2.5 has no BM25 function or sparse index (creating a collection with them
leaves it half made: later inserts fail) and one older than 2.4 no hybrid_search. Asking the
server's version first lets a sync make a dense-only collection and say what is missing,
instead of failing obscurely. milvus-lite (the embedded store) has every feature phiops uses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FULL_TEXT = "BM25 full-text search"
HYBRID_SEARCH = "hybrid_search"
# The first Milvus releases with each feature.
FULL_TEXT_SINCE = (2, 5)
HYBRID_SEARCH_SINCE = (2, 4)

_VERSION = re.compile(r"(\d+)\.(\d+)")


@dataclass(frozen=True)
class ServerFeatures:
    version: str
    """As the server reports it, e.g. `v2.3.5` or `milvus_lite-3.2.2`."""
    full_text: bool
    hybrid_search: bool

    def missing(self, hybrid: bool) -> list[str]:
        """The features a collection with `hybrid` needs that this server lacks."""
        if not hybrid:
            return []
        gaps = [] if self.full_text else [FULL_TEXT]
        return [*gaps, *([] if self.hybrid_search else [HYBRID_SEARCH])]


def features_of(version: str) -> ServerFeatures:
    """Features from a version string. One that names no version (a managed service's own
    wording) is taken to have them: creating the collection then says what fails."""
    if version.startswith("milvus_lite"):
        return ServerFeatures(version, True, True)
    found = _VERSION.search(version)
    if found is None:
        return ServerFeatures(version, True, True)
    release = (int(found.group(1)), int(found.group(2)))
    return ServerFeatures(version, release >= FULL_TEXT_SINCE, release >= HYBRID_SEARCH_SINCE)


def missing_message(version: str, missing: list[str]) -> str:
    """What a user reads in the KnowledgeBase's StoreFeaturesMissing condition."""
    since = f"{FULL_TEXT_SINCE[0]}.{FULL_TEXT_SINCE[1]}"
    return (
        f"Milvus {version or '(unknown version)'} has no {' or '.join(missing)} (Milvus >= "
        f"{since} has them): vectorStore.milvus.hybrid is served as dense vector search only"
    )
