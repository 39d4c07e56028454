"""The E oracle: DESIGN section 1's double sum, written out with Python integers.

An independent reference for the package's :func:`emergence_lightning.emergence` (which the tests
compare against it), so it imports nothing from the package.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def emergence_oracle(n: Sequence[int], a: Sequence[int]) -> int:
    """E = sum over i < j of (dead nodes of i) x (active nodes of j) x (the widths between them).

    >>> emergence_oracle([3, 2, 2], [1, 1, 2])  # DESIGN's first hand-checked vector
    12
    """
    return sum(
        (n[i] - a[i]) * a[j] * math.prod(n[i + 1 : j]) for i in range(len(n)) for j in range(i + 1, len(n))
    )
