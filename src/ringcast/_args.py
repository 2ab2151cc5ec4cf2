"""Checks of the numbers callers pass (buffer sizes, credit, timeouts),
shared by the embedded router and both clients: one bad argument gets the
same typed error on either side, before anything is sent or built, instead
of an OverflowError from deep inside the encoder."""

from threading import TIMEOUT_MAX
from typing import Any, Optional

from . import errors

#: the largest count a client sends for capacity, credit or concurrency (the
#: broker holds each to its own, smaller limits)
MAX_COUNT = (1 << 32) - 1


def check_count(name: str, value: Any, least: int = 1, most: int = MAX_COUNT) -> int:
    """``value`` if it is an int in least..most, else LimitExceeded."""
    if type(value) is not int or not least <= value <= most:
        raise errors.LimitExceeded(f"{name} must be an int in {least}..{most}, got {value!r}")
    return value


def check_timeout(timeout: Any, optional: bool = True) -> Optional[float]:
    """``timeout`` if it is a number of seconds >= 0, or None (wait for good)
    where that is ``optional``."""
    if timeout is None and optional:
        return None
    if type(timeout) is bool or not isinstance(timeout, (int, float)):
        raise errors.WrongType(
            f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
    if not timeout >= 0:   # also NaN
        raise errors.LimitExceeded(f"timeout must be >= 0, got {timeout!r}")
    # longer (infinity included) is as good as forever, and the most that
    # threading's waits take
    return min(float(timeout), TIMEOUT_MAX)


def check_request_timeout(timeout: Any) -> float:
    """A request's timeout in seconds: None (as ``float("inf")``) means no
    deadline, as it does for an embedded request."""
    if (type(timeout) is float or type(timeout) is int) and 0 <= timeout < TIMEOUT_MAX:
        return timeout   # the usual case, taken without a call (NaN fails the test)
    seconds = check_timeout(timeout)
    return TIMEOUT_MAX if seconds is None else seconds
