"""transformers version handling: which versions are tested, and the API names that moved."""

from __future__ import annotations

import inspect
import os
import warnings
from typing import Optional, Tuple

import transformers

# Versions the test suite runs against; others get a warning (newer) or an ImportError
# (older than the cache and attention interfaces this package builds on).
SUPPORTED_TRANSFORMERS = ((5, 17), (5, 18))
_OLDEST = (5, 17)
# The continuous-batching engine whose paged cache and step inputs paged|hydrogen reads
# (5.18 reorganised the paged cache; 5.24 accepts only its own implementation names).
CONTINUOUS_BATCHING_TRANSFORMERS = ((5, 17),)


def continuous_batching_unsupported() -> Optional[str]:
    """Why the installed transformers' continuous batching cannot run paged|hydrogen, or None."""
    if _major_minor(transformers.__version__) in CONTINUOUS_BATCHING_TRANSFORMERS:
        return None
    tested = ", ".join(f"{a}.{b}" for a, b in CONTINUOUS_BATCHING_TRANSFORMERS)
    return (
        f"paged|hydrogen drives the continuous-batching engine of transformers {tested}, whose paged cache "
        f"and step inputs it reads; transformers {transformers.__version__} is installed. Install "
        f'"transformers=={tested}.*" for continuous batching, or use attn_implementation="hydrogen" with '
        "generate(), which shares prefixes on this version."
    )


def _major_minor(version: str) -> Optional[Tuple[int, int]]:
    parts = version.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (ValueError, IndexError):
        return None


def check_transformers_version() -> None:
    """Refuse transformers older than 5.17; warn for any version not in the tested list."""
    found = transformers.__version__
    major_minor = _major_minor(found)
    tested = ", ".join(f"{a}.{b}.x" for a, b in SUPPORTED_TRANSFORMERS)
    if major_minor is not None and major_minor < _OLDEST:
        raise ImportError(
            f"hydrogen_ops.hf needs transformers >= {_OLDEST[0]}.{_OLDEST[1]} (tested: {tested}); "
            f"found {found}. Upgrade with: pip install \"hydrogen_ops[hf]\""
        )
    if major_minor in SUPPORTED_TRANSFORMERS:
        return
    if os.environ.get("HYDROGEN_HF_SKIP_VERSION_CHECK", "0") not in ("", "0"):
        return
    warnings.warn(
        f"hydrogen_ops.hf is tested with transformers {tested}; found {found}. It should work, and it "
        "checks its results' preconditions, but this version is untested "
        "(set HYDROGEN_HF_SKIP_VERSION_CHECK=1 to silence this warning).",
        UserWarning,
        stacklevel=3,
    )


def cache_argument(model) -> str:
    """Name under which ``model.forward`` and ``generate()`` take the KV cache.

    transformers renamed ``past_key_values`` to ``cache`` after 5.18.
    """
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params and "past_key_values" not in params else "past_key_values"
