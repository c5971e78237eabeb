"""The long soak of issue 19, on demand: 20,000 deliveries (30% junk), 500 builds with 1 MB logs,
retention on — tests/reliability/test_soak.py with ``MLSHIP_SOAK=full`` (its docstring derives the
memory bound; the figures go to docs/reliability.md).

    .venv/bin/python bench/soak.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    test = "tests/reliability/test_soak.py"
    env = {**os.environ, "MLSHIP_SOAK": "full"}
    argv = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "--timeout", "3600", test]
    sys.exit(subprocess.run(argv, cwd=ROOT, env=env, check=False).returncode)
