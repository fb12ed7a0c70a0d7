"""What lets the sans-IO core run on PyPy 3.9 as well as CPython 3.10+: the simulator
(bench/simulate.py) runs about twice as fast under PyPy, whose packaged release here speaks 3.9.

The product itself needs 3.10+; only what the core's modules use at run time is covered here
(type annotations are strings, `from __future__ import annotations`, and never evaluated). Type
unions built at import are `typing.Union`, and storage.py writes with one pwrite where PyPy has no
os.pwritev. tests/test_pypy.py runs the core's unit tests under PyPy.
"""

from __future__ import annotations

import sys
from typing import Any

# Dataclass options: slots where the interpreter has them (3.10+).
SLOTS: dict[str, Any] = {"slots": True} if sys.version_info >= (3, 10) else {}


_BIT_COUNT = getattr(int, "bit_count", None)  # 3.10+


def popcount(n: int) -> int:
    """The number of one bits in a non-negative int."""
    if _BIT_COUNT is not None:
        return int(_BIT_COUNT(n))
    return bin(n).count("1")
