"""``python -m undesirable_jax.evaluate``: see :mod:`undesirable_jax.evaluate.cli`."""

import sys

from .cli import main

sys.exit(main())
