"""Old keyword names kept as aliases: ``@renamed_keywords(norm="normalization")`` lets callers still write
``f(norm=...)`` for ``f(normalization=...)``, with a ``DeprecationWarning``; giving both is a ``ConfigError``."""
from __future__ import annotations

import functools
import inspect
import warnings
from typing import Any, Callable, TypeVar

from .errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])


def renamed_keywords(**renames: str) -> Callable[[F], F]:
    """Decorator: each ``old=new`` pair makes keyword ``old`` an alias of ``new`` (same value, same result)
    with a ``DeprecationWarning``; ``old`` and ``new`` together are refused with a ``ConfigError``."""
    def wrap(func: F) -> F:
        signature = inspect.signature(func)

        @functools.wraps(func)
        def inner(*args: Any, **kwargs: Any) -> Any:
            for old, new in renames.items():
                if old not in kwargs:
                    continue
                if new in kwargs or new in signature.bind_partial(*args).arguments:
                    raise ConfigError(f"{func.__name__}: give {new}= or its old name {old}=, not both")
                warnings.warn(f"{func.__name__}: {old}= is deprecated, use {new}=", DeprecationWarning,
                              stacklevel=2)
                kwargs[new] = kwargs.pop(old)
            return func(*args, **kwargs)
        return inner  # type: ignore[return-value]
    return wrap


__all__ = ["renamed_keywords"]
