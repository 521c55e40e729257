"""Integer micros: the only unit money is kept in.

Config and the wire carry decimal prices (CPM in currency units); they are
converted once, exactly, through Decimal, so sums never drift.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

MICROS = 1_000_000


def to_micros(amount: float | int | str) -> int:
    """Currency units -> integer micros, rounding half-even at the micro."""
    try:
        return int((Decimal(str(amount)) * MICROS).to_integral_value())
    except (InvalidOperation, ValueError):
        raise ValueError(f"not a number: {amount!r}") from None


def from_micros(micros: int) -> float:
    """Integer micros -> currency units, for display and the wire only."""
    return micros / MICROS


def cpm_to_impression_micros(cpm_micros: int) -> int:
    """Price of one impression in micros, given a CPM in micros (floor division)."""
    return cpm_micros // 1000
