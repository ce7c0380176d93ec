"""`python -m phiops_embed <subcommand>`: see `phiops_embed.cli`."""

from __future__ import annotations

import sys

from phiops_embed.cli import main

if __name__ == "__main__":
    sys.exit(main())
