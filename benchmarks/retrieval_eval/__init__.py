"""A retrieval evaluation set over Debian's own documentation (see corpus.py)."""
