"""Building frozen slotted attrs instances without ``__init__`` (internal).

Hot paths (the codec, the bus bridge, feed decoders) create many small frozen attrs
objects. A frozen class's generated ``__init__`` stores every field through
``object.__setattr__`` and parses keyword arguments; creating the instance with
``object.__new__`` and storing each field through its slot descriptor gives the *same*
object (same class, every slot set, equal and hashing alike) at about half the cost.

That is only right while ``__init__`` does nothing but store its arguments:
:func:`plain_init` checks it, and callers fall back to the real constructor when it says no.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

__all__ = ["new_instance", "plain_init", "slot_setter"]

new_instance = object.__new__
"""``new_instance(cls)``: an instance with no slot set yet."""


def plain_init(cls: type) -> bool:
    """True when ``cls`` is a slotted attrs class whose ``__init__`` only stores its
    arguments: no validator, converter, alias, factory default or post-init hook."""
    return (
        attrs.has(cls)
        and "__slots__" in vars(cls)
        and not hasattr(cls, "__attrs_post_init__")
        and all(
            f.init
            and f.validator is None
            and f.converter is None
            and f.alias == f.name
            and not isinstance(f.default, attrs.Factory)  # type: ignore[arg-type]
            for f in attrs.fields(cls)
        )
    )


def slot_setter(cls: type, name: str) -> Callable[[object, Any], None]:
    """The slot descriptor's ``__set__`` for field ``name`` (the slot may live on a base)."""
    for klass in cls.__mro__:
        if name in vars(klass):
            setter: Callable[[object, Any], None] = vars(klass)[name].__set__
            return setter
    raise AttributeError(f"{cls.__name__} has no slot {name!r}")
