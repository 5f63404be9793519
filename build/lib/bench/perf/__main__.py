"""``python -m bench.perf``: see bench/perf/__init__.py."""
import sys

from bench.perf import main

sys.exit(main())
