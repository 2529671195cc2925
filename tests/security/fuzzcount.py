"""How many examples each fuzzer ran in this session (reported by conftest.py)."""

from collections import Counter

EXAMPLES: Counter[str] = Counter()
