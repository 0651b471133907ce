"""The error every unsupported Ray name raises: what is not there, and what to use instead."""

from __future__ import annotations

from typing import Any, Callable, Dict

from .._client import RtuneError

DOC = "docs/from-ray-tune.md"


class UnsupportedError(RtuneError, NotImplementedError):
    """A Ray Tune feature rtune.ray does not provide; the message names the alternative."""


def unsupported(what: str, alternative: str) -> UnsupportedError:
    return UnsupportedError(f"rtune.ray: {what} is not supported: {alternative} ({DOC})")


def module_getattr(module: str, alternatives: Dict[str, str]) -> Callable[[str], Any]:
    """A module __getattr__ that explains the Ray names the module does not have."""

    def __getattr__(name: str) -> Any:
        if name in alternatives:
            raise unsupported(f"{module}.{name}", alternatives[name])
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(f"module {module!r} has no attribute {name!r}: rtune.ray provides "
                             f"the names listed in {DOC}")

    return __getattr__
