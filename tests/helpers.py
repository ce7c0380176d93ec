"""Shared test helpers (no fixtures here)."""

from __future__ import annotations

import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CRD_DIR = REPO / "crds"
SAMPLES_DIR = CRD_DIR / "samples"
INPUTS_DIR = REPO / "tests" / "inputs"
EXPECT = "test.phiops.dev/expect"  # rejected (by the API server), invalid or waiting
EXPECT_FIELD = "test.phiops.dev/field"  # what the error or condition message must name
EXPECT_REASON = "test.phiops.dev/reason"  # the Ready reason of a waiting resource


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def samples() -> list[dict[str, Any]]:
    """Every phiops custom object in crds/samples/."""
    return [
        doc
        for path in sorted(SAMPLES_DIR.glob("*.yaml"))
        for doc in load_all(path)
        if doc["apiVersion"].startswith("phiops.dev/")
    ]


def hostile_inputs() -> list[tuple[str, dict[str, Any]]]:
    """(file stem, resource) of every file of the hostile-input corpus in tests/inputs/."""
    return [
        (path.stem, doc) for path in sorted(INPUTS_DIR.glob("*.yaml")) for doc in load_all(path)
    ]


def eventually(
    check: Callable[[], Any], timeout: float = 30, what: str = "", interval: float = 1
) -> Any:
    """Poll `check` every `interval` seconds until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what or check}: last={last!r}")


def models_claim(size: str = "1Gi", name: str = "models") -> dict[str, Any]:
    """The claim the tiny Phi-3 is made on (`tiny_model_pod`), or another of its kind."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}},
    }


# Pod Security "restricted" for the tests' own pods, as the test namespaces are labelled.
RESTRICTED_POD = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "fsGroup": 10001,
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def tiny_model_pod(folder: str = "tiny") -> dict[str, Any]:
    """A pod of the trainer image making a tiny random-weight Phi-3 (the real architecture,
    a few small layers) in `folder` of the `models` claim: no model hub is reachable here."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "make-tiny-model"},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": RESTRICTED_POD,
            "containers": [
                {
                    "name": "make",
                    "image": "phiops-finetune:test",
                    "args": ["make-tiny-model", "--out", f"/models/{folder}"],
                    "volumeMounts": [{"name": "models", "mountPath": "/models"}],
                    "securityContext": RESTRICTED_CONTAINER,
                }
            ],
            "volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": "models"}}],
        },
    }


HostPaths = dict[Path, tuple[int, ...] | None]


def host_paths(paths: Iterable[Path | str]) -> HostPaths:
    """What the host holds at `paths` and at each of their parents (see `_host_entry`)."""
    return {each: _host_entry(each) for path in paths for each in (Path(path), *Path(path).parents)}


def _host_entry(path: Path) -> tuple[int, ...] | None:
    """None where nothing is, a directory's inode, a file's (or link's) inode, size and mtime;
    not a directory's mtime: other processes change /tmp's."""
    if not os.path.lexists(path):
        return None
    info = path.lstat()
    if stat.S_ISDIR(info.st_mode):
        return (info.st_ino,)
    return (info.st_ino, info.st_size, info.st_mtime_ns)


def remove_created(before: HostPaths) -> None:
    """Remove what appeared where `before` saw nothing (so that a failing test cleans up)."""
    for path in sorted((p for p, v in before.items() if v is None), key=lambda p: len(p.parts)):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            path.unlink()


class Streamer:
    """A client streaming answers of `model` to `question` one after another, on a thread of
    its own, until the block ends; counts the answers and keeps every failure (a hot reload
    must cause none)."""

    def __init__(self, client: Any, model: str, question: str, max_tokens: int) -> None:
        self.client, self.model = client, model
        self.question, self.max_tokens = question, max_tokens
        self.done = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                chunks = self.client.chat.completions.create(
                    model=self.model,
                    messages=[{"role": "user", "content": self.question}],
                    max_tokens=self.max_tokens,
                    stream=True,
                    extra_body={"ignore_eos": True},
                )
                if not any(c.choices and c.choices[0].delta.content for c in chunks):
                    raise AssertionError("an empty answer")
                self.done += 1
            except Exception as err:
                self.failures.append(repr(err))

    def __enter__(self) -> Streamer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(120)


class Asker:
    """A client asking `models` in turn (plain, non-streaming chat completions, which the
    openai client retries on a dropped connection) one after another on a thread of its
    own until the block ends; keeps when each answer came and every failure."""

    def __init__(self, client: Any, models: list[str], question: str, max_tokens: int) -> None:
        self.client, self.models = client, models
        self.question, self.max_tokens = question, max_tokens
        self.answered: list[float] = []  # time.monotonic() of each answer
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asked = 0
        while not self._stop.is_set():
            model = self.models[asked % len(self.models)]
            asked += 1
            try:
                completion = self.client.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": self.question}],
                    max_tokens=self.max_tokens,
                    # A random-weight model may pick its end token first, an empty answer no
                    # different from a server that answered nothing; run to max_tokens instead.
                    extra_body={"ignore_eos": True},
                )
                if completion.model != model or not completion.choices[0].message.content:
                    raise AssertionError(f"a wrong or empty answer: {completion!r}")
                self.answered.append(time.monotonic())
            except Exception as err:
                self.failures.append(f"{model}: {err!r}")

    def __enter__(self) -> Asker:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(180)
