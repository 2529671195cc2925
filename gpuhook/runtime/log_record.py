"""What one decision-log record may hold: the env keys gpuhook reads and nothing else, every
string cut to a length, every list to a count of items (its full length kept beside it), the
whole record to a byte size (those bounds: log_bounds.py). A pod author writes the env, the
mounts and the ids; none of it may make the log leak a secret or grow without bound."""

from __future__ import annotations

from gpuhook.decide.request import (
    ENV_CUDA_VERSION,
    ENV_DISABLE_REQUIRE,
    ENV_DRIVER_CAPS,
    ENV_MIG_CONFIG,
    ENV_MIG_MONITOR,
    ENV_REQUIRE_PREFIX,
    ENV_VISIBLE,
)
from gpuhook.record import TYPE_CHECKING
from gpuhook.runtime.log_bounds import (
    MAX_LOG_ITEMS,
    MAX_LOG_STRING,
    MAX_LOG_VALUE,
    MAX_RECORD_BYTES,
    bounded_record,
    cut,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["LOGGED_ENV_KEYS", "MAX_LOG_ITEMS", "MAX_LOG_STRING", "MAX_LOG_VALUE",
           "MAX_RECORD_BYTES", "bounded_record", "cut", "loggable_env", "loggable_ignored"]

# The env keys gpuhook acts on (decide/request.py reads exactly these, plus NVIDIA_REQUIRE_*):
# images carry API keys and tokens under the NVIDIA_ prefix too, so the list is closed.
LOGGED_ENV_KEYS = (
    ENV_VISIBLE, ENV_DRIVER_CAPS, ENV_MIG_MONITOR, ENV_MIG_CONFIG, ENV_DISABLE_REQUIRE,
    "NVIDIA_REQUIRE_CUDA", "NVIDIA_REQUIRE_DRIVER", "NVIDIA_REQUIRE_ARCH", "NVIDIA_REQUIRE_BRAND",
    ENV_CUDA_VERSION,
)


def loggable_env(env: Mapping[str, str]) -> dict[str, str]:
    """The fixed list of keys gpuhook reads; other NVIDIA_REQUIRE_* keys (which
    gpuhook evaluates, but whose names are free-form) only counted."""
    out = {k: cut(env[k], MAX_LOG_VALUE) for k in LOGGED_ENV_KEYS if k in env}
    others = sum(1 for k in env if k.startswith(ENV_REQUIRE_PREFIX) and k not in LOGGED_ENV_KEYS)
    if others:
        out["(other NVIDIA_REQUIRE_* keys)"] = str(others)
    return out


def loggable_ignored(ignored: list[dict[str, str]]) -> list[dict[str, str]]:
    """Ignored requests with their (container-written) values cut; bounded_record cuts the
    list itself and keeps its length."""
    return [{**i, "value": cut(i["value"], MAX_LOG_VALUE)} for i in ignored]
