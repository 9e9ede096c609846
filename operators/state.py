"""Pickling for the objects of the hot path, the same whether they run as Python or compiled.

``make native`` compiles the per-tick modules with mypyc (see the Makefile). A compiled
class keeps its attributes in a C struct, has no ``__slots__`` at run time and cannot be
created without running its ``__init__``, so Python's default pickling of slotted objects
does not work for it. :class:`PickleByAttributes` gives a class one pickle format for both
builds: the object is created from ``blank`` (any valid constructor arguments), then every
attribute is set from ``{name: value}``. A Bytewax snapshot taken by one build therefore loads
in the other. Snapshots taken before 2026-12-03 (by the sources, which pickled without
constructor arguments) load in the source build only: a compiled class cannot be created
without its ``__init__`` arguments, so restoring one of those needs ``make pure`` once.

>>> class Point(PickleByAttributes):
...     __slots__ = ("x", "y")
...     blank = (0.0,)
...     def __init__(self, x: float) -> None:
...         self.x, self.y = x, x * 2
>>> import copy  # copies through the same __reduce_ex__ as pickle
>>> p = Point(1.5)
>>> p.y = 7.0
>>> q = copy.deepcopy(p)
>>> q.x, q.y
(1.5, 7.0)
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = ["PickleByAttributes", "state_names"]

_NAMES: dict[type, tuple[str, ...]] = {}


def state_names(cls: type) -> tuple[str, ...]:
    """The attributes that make up the state of ``cls``'s instances: each class's
    ``__slots__`` along the hierarchy, or for a compiled class the attributes it declares
    (``__mypyc_attrs__``), base classes first.

    >>> class A(PickleByAttributes):
    ...     __slots__ = ("a",)
    >>> class B(A):
    ...     __slots__ = ("b", "a2")
    >>> state_names(B)
    ('a', 'b', 'a2')
    """
    names = _NAMES.get(cls)
    if names is None:
        found: list[str] = []
        for k in reversed(cls.__mro__):
            declared = k.__dict__.get("__mypyc_attrs__", k.__dict__.get("__slots__", ()))
            for n in (declared,) if isinstance(declared, str) else declared:
                if n not in found and n not in ("__dict__", "__weakref__"):
                    found.append(n)
        names = _NAMES[cls] = tuple(found)
    return names


class PickleByAttributes:
    """Base class: pickles as ``{attribute: value}`` and unpickles through ``cls(*blank)``."""

    __slots__ = ()

    blank: ClassVar[tuple[Any, ...]] = ()  # constructor arguments to unpickle into

    def __getnewargs__(self) -> tuple[Any, ...]:
        return self.blank

    def __getstate__(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in state_names(type(self)) if hasattr(self, k)}

    def __setstate__(self, state: dict[str, Any] | tuple[None, dict[str, Any]]) -> None:
        # (None, {slot: value}) is Python's own format for slotted objects, which snapshots
        # taken by the sources before this class existed (2026-12-03) hold.
        for k, v in (state[1] if isinstance(state, tuple) else state).items():
            setattr(self, k, v)
