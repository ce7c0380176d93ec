"""`python -m phiops_finetune <subcommand>`: see `phiops_finetune.cli`."""

from __future__ import annotations

import sys

from phiops_finetune.cli import main

if __name__ == "__main__":
    sys.exit(main())
