"""Our metric (after Kang et al.) on the shipped lfw CNN over ``lfw+corrupt``: ``eval_digits.py --set lfw``.

    .venv/bin/python benchmarks/eval_lfw.py            # appends the tables to benchmarks/HISTORY.md
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eval_digits  # noqa: E402

if __name__ == "__main__":
    sys.argv[1:1] = ["--set", "lfw"]
    eval_digits.main()
