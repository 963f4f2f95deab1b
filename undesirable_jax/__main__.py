"""``python -m undesirable_jax …``: the same command line as ``undesirable-jax``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
