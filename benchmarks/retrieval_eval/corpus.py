"""The evaluation corpus: which of Debian's own documents, and how they become text.

Nothing here is a copy of those documents: the recipe names installed files (manual pages
and /usr/share/doc texts of packages a stock Debian 12 machine with this project's setup
has: coreutils, git, apt, tar, grep, sed, make, bash, openssh-client...) and extracts them
at run time. Manual pages are rendered by man-db the same way every time (80 columns, ASCII,
no hyphenation or justification, so words are never split across lines); the other texts are
read as they are (gunzipped where compressed).
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

MAN = Path("/usr/share/man")
DOC = Path("/usr/share/doc")


class CorpusMissing(Exception):
    """A document of the recipe is not on this machine (or cannot be rendered)."""


@dataclass(frozen=True)
class Document:
    name: str
    """Stable id, also the file name the knowledge base sees (plus `suffix`)."""
    path: Path
    kind: str
    """`man` (rendered with man-db) or `text` (read as is)."""
    package: str
    suffix: str = ".txt"

    @property
    def file_name(self) -> str:
        return self.name + self.suffix


def _man(section: int, page: str, package: str) -> Document:
    path = MAN / f"man{section}" / f"{page}.{section}.gz"
    return Document(f"{page}.{section}", path, "man", package)


def _doc(name: str, relative: str, package: str, suffix: str = ".txt") -> Document:
    return Document(name, DOC / relative, "text", package, suffix)


DOCUMENTS: list[Document] = [
    # coreutils
    _man(1, "sort", "coreutils"),
    _man(1, "date", "coreutils"),
    _man(1, "du", "coreutils"),
    _man(1, "ls", "coreutils"),
    _man(1, "cp", "coreutils"),
    _man(1, "chmod", "coreutils"),
    _man(1, "split", "coreutils"),
    _man(1, "timeout", "coreutils"),
    _man(1, "tail", "coreutils"),
    _man(1, "dd", "coreutils"),
    _man(1, "ln", "coreutils"),
    _man(1, "touch", "coreutils"),
    _doc("coreutils-README", "coreutils/README.gz", "coreutils"),
    # archiving, searching, building
    _man(1, "tar", "tar"),
    _man(1, "gzip", "gzip"),
    _man(1, "grep", "grep"),
    _man(1, "sed", "sed"),
    _man(1, "xargs", "findutils"),
    _man(1, "make", "make"),
    _doc("xz-faq", "xz-utils/faq.txt.gz", "xz-utils"),
    # git
    _man(1, "git-stash", "git-man"),
    _man(1, "git-bisect", "git-man"),
    _man(1, "git-clean", "git-man"),
    _man(1, "git-worktree", "git-man"),
    _man(1, "git-tag", "git-man"),
    _man(5, "gitignore", "git-man"),
    _doc("git-README", "git/README.md", "git", ".md"),
    # apt
    _man(8, "apt-get", "apt"),
    _man(8, "apt-cache", "apt"),
    _man(5, "sources.list", "apt"),
    _doc("apt-README", "apt/README.md.gz", "apt", ".md"),
    # system
    _man(5, "hosts", "manpages"),
    _man(5, "fstab", "util-linux"),
    _doc("bash-POSIX", "bash/POSIX.gz", "bash"),
    _doc("bash-RBASH", "bash/RBASH", "bash"),
    _doc("openssh-README.dns", "openssh-client/README.dns", "openssh-client"),
    _doc("ca-certificates-README.Debian", "ca-certificates/README.Debian", "ca-certificates"),
    _doc("procps-bugs", "procps/bugs.md", "procps", ".md"),
]

BY_NAME = {d.name: d for d in DOCUMENTS}


def extract(document: Document) -> str:
    """The document's text, the same on every run on the same packages."""
    if not document.path.is_file():
        raise CorpusMissing(
            f"{document.path} is missing (document {document.name!r}, Debian package "
            f"{document.package!r}): install the package, with its documentation "
            "(no dpkg path-exclude of /usr/share/man or /usr/share/doc)"
        )
    if document.kind == "man":
        return _render_man(document)
    raw = document.path.read_bytes()
    if document.path.suffix == ".gz":
        raw = gzip.decompress(raw)
    return raw.decode("utf-8", errors="replace")


def _render_man(document: Document) -> str:
    man = shutil.which("man")
    if man is None:
        raise CorpusMissing("the `man` command (Debian package man-db) is missing")
    env = {**os.environ, "LC_ALL": "C.UTF-8", "MANWIDTH": "80", "MANPAGER": "cat"}
    env.pop("MAN_KEEP_FORMATTING", None)  # no bold/underline overstrikes
    # -l: this very file; -E ascii: plain ASCII; --nh --nj: no hyphenation, ragged right.
    command = [man, "--nh", "--nj", "-E", "ascii", "-P", "cat", "-l", str(document.path)]
    result = subprocess.run(command, env=env, capture_output=True, timeout=60, check=False)
    text = result.stdout.decode("ascii", errors="replace")
    if result.returncode != 0 or not text.strip():
        raise CorpusMissing(
            f"cannot render {document.path} with man-db: {result.stderr.decode()[:300]}"
        )
    return text


def materialise(folder: Path, documents: list[Document] | None = None) -> dict[str, str]:
    """Extract every document into `folder` (as a knowledge base source); name -> text."""
    folder.mkdir(parents=True, exist_ok=True)
    texts: dict[str, str] = {}
    for document in documents or DOCUMENTS:
        text = extract(document)
        (folder / document.file_name).write_text(text)
        texts[document.name] = text
    return texts
