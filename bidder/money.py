"""Integer micros: the only unit money is kept in.

Config and the wire carry decimal prices (CPM in currency units); they are
converted once, exactly, through Decimal, so sums never drift.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

MICROS = 1_000_000
# A decimal amount as a person writes it: no spaces, no digit separators, no "inf" or "nan"
_DECIMAL = re.compile(r"-?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?")  # ASCII digits only: "١.٥" is no price
LARGEST_DIGITS = 15  # an amount of 10**15 currency units or more is refused before it is multiplied out


class AmountTooLarge(ValueError):
    """A well-formed amount too large for any price or budget."""


def to_micros(amount: float | int | str) -> int:
    """Currency units -> integer micros, rounding half-even at the micro."""
    text = str(amount)
    if not _DECIMAL.fullmatch(text):
        raise ValueError(f"not a number: {amount!r}")
    try:
        value = Decimal(text)
        if value and value.adjusted() >= LARGEST_DIGITS:  # "1e999990" would take minutes to multiply out
            raise AmountTooLarge(f"too large: {amount!r}")
        return int((value * MICROS).to_integral_value())
    except (InvalidOperation, OverflowError):
        raise ValueError(f"not a number: {amount!r}") from None


def is_whole_micros(amount: float | int | str) -> bool:
    """Whether `amount` (a valid decimal) is a whole number of micros: a finer amount would be rounded away."""
    return (Decimal(str(amount)) * MICROS) % 1 == 0


def to_text(micros: int) -> str:
    """Integer micros -> the exact decimal amount in currency units ("250", "2.5", "0.000001")."""
    sign, micros = ("-", -micros) if micros < 0 else ("", micros)
    units, frac = divmod(micros, MICROS)
    return f"{sign}{units}.{frac:06d}".rstrip("0").rstrip(".") if frac else f"{sign}{units}"


def from_micros(micros: int) -> float:
    """Integer micros -> currency units, for display and the wire only."""
    return micros / MICROS


def cpm_to_impression_micros(cpm_micros: int) -> int:
    """Price of one impression in micros, given a CPM in micros (floor division)."""
    return cpm_micros // 1000
