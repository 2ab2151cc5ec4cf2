"""Pick the native core, or the pure-Python reference when asked.

``RINGCAST_NO_EXTENSIONS=1`` selects the pure-Python twin (slow, for
debugging and for platforms without a wheel). Otherwise the compiled
modules must import: a broken build fails loudly instead of silently
running the slow path.
"""

import os
from typing import Any, Callable, Dict, Optional

USE_EXTENSIONS = os.environ.get("RINGCAST_NO_EXTENSIONS", "") in ("", "0")

if USE_EXTENSIONS:
    from ._ring import Message, Ring, hand_out, policy_code, settle
    from ._router import (
        MAX_SUBJECT_LEN,
        CoreRouter,
        check_message,
        check_messages,
        check_pattern,
        check_subject,
    )
else:  # pragma: no cover - exercised by the impl=py test run
    from ._ring_py import Message, Ring, hand_out, policy_code, settle  # type: ignore[assignment]
    from ._router_py import (  # type: ignore[assignment]
        MAX_SUBJECT_LEN,
        CoreRouter,
        check_message,
        check_messages,
        check_pattern,
        check_subject,
    )

#: message headers: str to str, or None
Headers = Optional[Dict[str, str]]
#: a subscription callback or request handler
Handler = Callable[[Message], Any]

__all__ = [
    "Headers",
    "Handler",
    "USE_EXTENSIONS",
    "Message",
    "Ring",
    "CoreRouter",
    "policy_code",
    "hand_out",
    "settle",
    "check_message",
    "check_messages",
    "check_pattern",
    "check_subject",
    "MAX_SUBJECT_LEN",
]
