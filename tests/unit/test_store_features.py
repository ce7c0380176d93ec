"""Which Milvus servers get a hybrid (BM25) collection: decided from the reported version."""

import pytest
from phiops_workload.knowledge import SyncFigures
from phiops_workload.store_features import (
    FULL_TEXT,
    HYBRID_SEARCH,
    features_of,
    missing_message,
)


@pytest.mark.parametrize(
    ("version", "missing"),
    [
        ("v2.3.5-lite", [FULL_TEXT, HYBRID_SEARCH]),  # the PyPI `milvus` package's server
        ("v2.3.21", [FULL_TEXT, HYBRID_SEARCH]),
        ("v2.4.15", [FULL_TEXT]),  # hybrid_search arrived in 2.4, BM25 in 2.5
        ("v2.5.0", []),
        ("v2.6.3", []),
        ("v3.0.0", []),
        ("milvus_lite-3.2.2", []),  # the embedded store
        ("Zilliz Cloud Vector Database", []),  # no version to go by: try, and say what fails
    ],
)
def test_missing_features_by_version(version: str, missing: list[str]) -> None:
    assert features_of(version).missing(hybrid=True) == missing


def test_a_dense_only_collection_needs_nothing_more() -> None:
    assert features_of("v2.3.5-lite").missing(hybrid=False) == []


def test_message_names_version_feature_and_what_is_served() -> None:
    text = missing_message("v2.3.5-lite", [FULL_TEXT, HYBRID_SEARCH])
    assert "Milvus v2.3.5-lite has no BM25 full-text search or hybrid_search" in text
    assert "Milvus >= 2.5" in text
    assert "dense vector search only" in text


def test_figures_of_an_older_embedder_still_parse() -> None:
    """A sync pod of the previous release reports no server fields."""
    figures = SyncFigures.model_validate(
        {
            "documents": {"total": 1},
            "chunks": 1,
            "collection": "c__1",
            "alias": "c",
            "model": "m",
            "dimension": 4,
            "duration_seconds": 1.0,
        }
    )
    assert (figures.server_version, figures.missing_features) == ("", [])
