"""What every config section shares: the strict base model, the error type, period syntax."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from recicl.errors import ReciclError


class ConfigError(ReciclError, ValueError):
    """A configuration problem, phrased for the person who wrote the YAML or the flags."""


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, values are validated on set."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def parse_periods(value: Any) -> list[int] | None:
    """``"0-3,7"`` / ``[0, 1]`` / ``5`` → sorted unique period numbers; None stays None."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, str):
        out: set[int] = set()
        for part in value.replace(" ", "").split(","):
            if not part:
                continue
            low, sep, high = part.partition("-")
            try:
                first, last = int(low), int(high) if sep else int(low)
            except ValueError:
                raise ValueError(
                    f"cannot read periods {value!r}: use e.g. '0-5' or '0,2,4-6'"
                ) from None
            if last < first:
                raise ValueError(f"period range {part!r} runs backwards")
            out.update(range(first, last + 1))
        return sorted(out)
    if isinstance(value, (list, tuple)):
        items = [int(v) for v in value]
        return sorted(set(items))
    raise ValueError(f"periods must be a list of ints or a string like '0-5', got {value!r}")
