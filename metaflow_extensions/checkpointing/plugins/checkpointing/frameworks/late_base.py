"""Classes users import before their framework is: the base class is added when one is made.

``from metaflow import CheckpointCallback`` must not import Lightning, nor
``HFCheckpointCallback`` transformers (``import metaflow`` imports these modules), yet the
frameworks want instances of their own callback base class.  The class users see holds all the
logic; creating one makes an instance of a subclass that also derives from the framework's base
(built once per class, user subclasses included, same name and qualified name so messages and
state keys read as the public class).  ``isinstance(cb, Public)`` and ``isinstance(cb, Base)``
both hold; pickling goes through :func:`rebuild`, since the subclass is made at run time.
"""

from __future__ import annotations

from typing import Any, Callable

#: (public class, base) -> the subclass deriving from both.
_MADE: dict[tuple[type, type], type] = {}


def with_base(cls: type, base: type) -> type:
    """``cls`` itself if it already derives from ``base``, else its subclass that does."""
    if issubclass(cls, base):
        return cls
    key = (cls, base)
    if key not in _MADE:
        _MADE[key] = type(
            cls.__name__,
            (cls, base),
            {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "_public": cls},
        )
    return _MADE[key]


def rebuild(public: type, base_of: Callable[[], type], state: dict) -> Any:
    """Unpickle an instance (module-level so pickle finds it): its class is rebuilt from the
    public class and the framework's base, then its attributes are set back."""
    obj = object.__new__(with_base(public, base_of()))
    obj.__dict__.update(state)
    return obj


def reduce(obj: Any, base_of: Callable[[], type]) -> tuple:
    """``__reduce__`` of such an instance: the public class, the base getter, the attributes."""
    return (rebuild, (getattr(type(obj), "_public", type(obj)), base_of, dict(obj.__dict__)))
