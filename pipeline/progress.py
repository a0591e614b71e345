"""Progress bars (rows, rate, ETA) on stderr; silent when disabled."""
from __future__ import annotations

import sys
from typing import Any


def progress_bar(total: int | None, desc: str, enabled: bool = True, unit: str = "rows") -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, disable=not enabled,
                file=sys.stderr, dynamic_ncols=True, mininterval=0.5)
