"""The Milvus side: connect, the collection layout of knowledge.py, incremental bookkeeping,
alias promotion and clean-up. Works the same on milvus-lite (embedded store) and Milvus."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from phiops_workload.knowledge import (
    BM25_FUNCTION,
    FIELD_CHUNK_COUNT,
    FIELD_CHUNK_INDEX,
    FIELD_DOC_HASH,
    FIELD_DOC_ID,
    FIELD_HEADING,
    FIELD_ID,
    FIELD_SOURCE,
    FIELD_SPARSE,
    FIELD_TEXT,
    FIELD_VECTOR,
    StoreConfig,
)
from phiops_workload.store_features import ServerFeatures, features_of

log = logging.getLogger(__name__)

T = TypeVar("T")

# VARCHAR limits of the layout (Milvus counts bytes).
MAX_ID = 64
MAX_DOC_ID = 1024
MAX_SOURCE = 64
MAX_HASH = 64
MAX_HEADING = 1024
MAX_TEXT = 65535
WRITE_BATCH = 1000
DELETE_BATCH = 100
SCAN_BATCH = 10000
CONNECT_TIMEOUT_SECONDS = 10.0


class StoreUnavailable(Exception):
    """Milvus cannot be reached or refuses an operation: the sync is retried later."""


@dataclass(frozen=True)
class StoredDocument:
    doc_hash: str = ""
    chunk_count: int = 0
    complete: bool = False
    """Chunk 0 is written last: without it the document's rows are a killed run's leftovers."""


def literal(value: str) -> str:
    """A Milvus filter string literal (milvus-lite has no filter templating)."""
    escaped = (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'


def clip(text: str, limit: int) -> str:
    """At most `limit` UTF-8 bytes, cut on a character boundary."""
    raw = text.encode()
    return text if len(raw) <= limit else raw[:limit].decode(errors="ignore")


def read_token(token_file: str | None) -> str:
    if not token_file:
        return ""
    try:
        return Path(token_file).read_text().strip()
    except OSError as err:
        raise StoreUnavailable(f"cannot read the Milvus token file: {err}") from err


def guarded(what: str, call: Callable[[], T]) -> T:
    """Run a Milvus call, turning its failures into StoreUnavailable with a readable message."""
    from pymilvus.exceptions import MilvusException

    try:
        return call()
    except MilvusException as err:
        raise StoreUnavailable(f"Milvus {what} failed: {err.message}") from err
    except Exception as err:  # grpc errors surface raw on some paths
        if type(err).__module__.startswith(("grpc", "pymilvus")):
            raise StoreUnavailable(f"Milvus {what} failed: {err}") from err
        raise


def connect(
    uri: str, token: str = "", database: str = "default", create_database: bool = False
) -> Any:
    """A MilvusClient that has answered once (the constructor alone does not connect)."""
    from pymilvus import MilvusClient

    def open_client() -> Any:
        client = MilvusClient(uri=uri, token=token, timeout=CONNECT_TIMEOUT_SECONDS)
        if database != "default":
            if create_database and database not in client.list_databases():
                client.create_database(database)
            # A client opened on the database, not `use_database`: Milvus 2.3 lacks the
            # DescribeDatabase call that one makes.
            client.close()
            client = MilvusClient(
                uri=uri, token=token, db_name=database, timeout=CONNECT_TIMEOUT_SECONDS
            )
        client.list_collections()
        return client

    try:
        return guarded(f"connection to {uri}", open_client)
    except StoreUnavailable:
        raise
    except Exception as err:  # a malformed uri fails in the constructor
        raise StoreUnavailable(f"cannot connect to Milvus at {uri}: {err}") from err


def physical_pattern(alias: str) -> re.Pattern[str]:
    """Exactly the collections `physical_collection(alias, ...)` names: nothing else."""
    return re.compile(re.escape(alias) + r"__[0-9a-f]{12}\Z")


class VectorStore:
    """One physical collection, written by one sync."""

    def __init__(self, client: Any, collection: str) -> None:
        self.client = client
        self.collection = collection

    @classmethod
    def open(cls, store: StoreConfig) -> VectorStore:
        client = connect(store.uri, read_token(store.token_file), store.database, True)
        return cls(client, store.collection)

    def features(self) -> ServerFeatures:
        """What the server can do (asked before creating a collection that needs it)."""
        version = guarded("get_server_version", lambda: self.client.get_server_version())
        return features_of(str(version))

    def ensure_collection(self, store: StoreConfig, dimension: int, description: str) -> bool:
        """Create the collection with the shared layout if absent. True when created."""
        from pymilvus import DataType, Function, FunctionType

        if guarded("has_collection", lambda: self.client.has_collection(self.collection)):
            self.ensure_loaded()
            existing = self.dimension()
            if existing != dimension:
                raise StoreUnavailable(
                    f"collection {self.collection} holds {existing}-d vectors, the model "
                    f"makes {dimension}-d ones"
                )
            return False
        schema = self.client.create_schema(
            auto_id=False, enable_dynamic_field=False, description=description
        )
        schema.add_field(FIELD_ID, DataType.VARCHAR, max_length=MAX_ID, is_primary=True)
        schema.add_field(FIELD_DOC_ID, DataType.VARCHAR, max_length=MAX_DOC_ID)
        schema.add_field(FIELD_SOURCE, DataType.VARCHAR, max_length=MAX_SOURCE)
        schema.add_field(FIELD_DOC_HASH, DataType.VARCHAR, max_length=MAX_HASH)
        schema.add_field(FIELD_CHUNK_INDEX, DataType.INT64)
        schema.add_field(FIELD_CHUNK_COUNT, DataType.INT64)
        schema.add_field(FIELD_HEADING, DataType.VARCHAR, max_length=MAX_HEADING)
        schema.add_field(
            FIELD_TEXT, DataType.VARCHAR, max_length=MAX_TEXT, enable_analyzer=store.hybrid
        )
        schema.add_field(FIELD_VECTOR, DataType.FLOAT_VECTOR, dim=dimension)
        index = self.client.prepare_index_params()
        index.add_index(
            field_name=FIELD_VECTOR, index_type=store.index_type, metric_type=store.metric
        )
        if store.hybrid:
            schema.add_field(FIELD_SPARSE, DataType.SPARSE_FLOAT_VECTOR)
            schema.add_function(
                Function(
                    name=BM25_FUNCTION,
                    function_type=FunctionType.BM25,
                    input_field_names=[FIELD_TEXT],
                    output_field_names=[FIELD_SPARSE],
                )
            )
            index.add_index(
                field_name=FIELD_SPARSE, index_type="SPARSE_INVERTED_INDEX", metric_type="BM25"
            )

        def create() -> None:
            self.client.create_collection(self.collection, schema=schema, index_params=index)

        try:
            guarded("create_collection", create)
        except StoreUnavailable:
            # Another shard of the same sync may have created it a moment ago.
            if not guarded("has_collection", lambda: self.client.has_collection(self.collection)):
                raise
        self.ensure_loaded()
        log.info("created collection %s (%d-d, %s)", self.collection, dimension, store.metric)
        return True

    def dimension(self) -> int:
        info = guarded(
            "describe_collection", partial(self.client.describe_collection, self.collection)
        )
        for field in info["fields"]:
            if field["name"] == FIELD_VECTOR:
                return int(field["params"]["dim"])
        raise StoreUnavailable(f"collection {self.collection} has no {FIELD_VECTOR} field")

    def ensure_loaded(self) -> None:
        """Collections come back released after a restart of milvus-lite."""
        load_collection(self.client, self.collection)

    def scan(self) -> dict[str, StoredDocument]:
        """Every document with rows: its hash and chunk count, and whether it is complete."""
        fields = [FIELD_DOC_ID, FIELD_DOC_HASH, FIELD_CHUNK_INDEX, FIELD_CHUNK_COUNT]
        found: dict[str, StoredDocument] = {}

        def run() -> None:
            # Strong: the rows a killed run wrote a moment ago must be seen, or they would be
            # written twice. (Milvus defaults to Bounded; searches keep that.)
            iterator = self.client.query_iterator(
                self.collection,
                batch_size=SCAN_BATCH,
                filter="",
                output_fields=fields,
                consistency_level="Strong",
            )
            try:
                while rows := iterator.next():
                    for row in rows:
                        doc_id = row[FIELD_DOC_ID]
                        if row[FIELD_CHUNK_INDEX] == 0:
                            found[doc_id] = StoredDocument(
                                row[FIELD_DOC_HASH], int(row[FIELD_CHUNK_COUNT]), True
                            )
                        elif doc_id not in found:
                            found[doc_id] = StoredDocument()
            finally:
                iterator.close()

        guarded("scan", run)
        return found

    def write(self, rows: Sequence[dict[str, Any]], replace: bool) -> None:
        """Insert rows, or upsert them where rows of the same ids may exist already."""
        for begin in range(0, len(rows), WRITE_BATCH):
            batch = list(rows[begin : begin + WRITE_BATCH])
            if replace:
                guarded("upsert", partial(self.client.upsert, self.collection, batch))
            else:
                guarded("insert", partial(self.client.insert, self.collection, batch))

    def delete_tail(self, doc_id: str, keep: int) -> None:
        """Delete the chunks of a document from index `keep` on (it became shorter)."""
        where = f"{FIELD_DOC_ID} == {literal(doc_id)} and {FIELD_CHUNK_INDEX} >= {keep}"
        guarded("delete", lambda: self.client.delete(self.collection, filter=where))

    def delete_documents(self, doc_ids: Iterable[str]) -> None:
        ids = list(doc_ids)
        for begin in range(0, len(ids), DELETE_BATCH):
            batch = ", ".join(literal(d) for d in ids[begin : begin + DELETE_BATCH])
            where = f"{FIELD_DOC_ID} in [{batch}]"
            guarded("delete", partial(self.client.delete, self.collection, filter=where))

    def flush(self) -> None:
        guarded("flush", lambda: self.client.flush(self.collection))

    def promote(self, alias: str) -> list[str]:
        """Point `alias` at this collection, then drop the alias's older collections.

        Readers query the alias, so they switch in one step from one complete collection to
        the next. Returns the collections dropped.
        """
        current = alias_target(self.client, alias)
        if current is None:
            guarded("create_alias", lambda: self.client.create_alias(self.collection, alias))
            log.info("alias %s now points at %s", alias, self.collection)
        elif current != self.collection:
            guarded("alter_alias", lambda: self.client.alter_alias(self.collection, alias))
            log.info("alias %s switched from %s to %s", alias, current, self.collection)
        pattern = physical_pattern(alias)
        names = guarded("list_collections", lambda: self.client.list_collections())
        stale = [n for n in names if pattern.match(n) and n != self.collection]
        for name in stale:
            guarded("drop_collection", partial(self.client.drop_collection, name))
            log.info("dropped the older collection %s", name)
        return stale


def load_collection(client: Any, name: str) -> None:
    from pymilvus.client.types import LoadState

    state = guarded("get_load_state", lambda: client.get_load_state(name))
    if state.get("state") != LoadState.Loaded:
        guarded("load_collection", lambda: client.load_collection(name))


def alias_target(client: Any, alias: str) -> str | None:
    """The collection an alias points at, or None (asked without provoking an error log)."""
    listed = guarded("list_aliases", lambda: client.list_aliases())
    if alias not in listed.get("aliases", []):
        return None
    info = guarded("describe_alias", lambda: client.describe_alias(alias))
    return str(info["collection_name"])


def drop_family(client: Any, alias: str) -> dict[str, Any]:
    """Drop `alias` and every `<alias>__<fingerprint>` collection; never anything else."""
    dropped_alias = alias_target(client, alias) is not None
    if dropped_alias:
        guarded("drop_alias", lambda: client.drop_alias(alias))
    pattern = physical_pattern(alias)
    names = guarded("list_collections", lambda: client.list_collections())
    dropped = sorted(n for n in names if pattern.match(n))
    for name in dropped:
        guarded("drop_collection", partial(client.drop_collection, name))
    return {"alias": alias, "dropped_alias": dropped_alias, "dropped_collections": dropped}


def describe(info: dict[str, Any]) -> str:
    """The collection description: what made the vectors, for people and readers."""
    return json.dumps(info, sort_keys=True)[:1000]
