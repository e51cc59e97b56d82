"""The one number formatter for tables and log lines (report tables, ``rlaif eval``'s table, the loop's
round summary). Standard library only, so the loop and the evaluation can use it without pandas or
matplotlib.
"""

import math
import numbers

MISSING = "–"


def fmt(x, spec: str = ".2f") -> str:
    """``x`` formatted with ``spec``; None and NaN as ``–``, booleans as yes/no, anything else as ``str(x)``."""
    if type(x).__name__ in ("bool", "bool_"):  # numpy's bool (numpy.bool, numpy.bool_ before 2.0) is not a bool
        return "yes" if x else "no"
    if x is None or (isinstance(x, numbers.Real) and math.isnan(x)):
        return MISSING
    return format(x, spec) if isinstance(x, numbers.Number) else str(x)
