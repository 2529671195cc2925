"""Records for the hot path: `@dataclass`, `field` and `replace` with the standard library's
meaning, at a fraction of its start-up cost.

Every runc command of a GPU container runs a fresh interpreter that imports decide/, inventory/,
enforce/ and runtime/. With `dataclasses` that costs ~8 ms to import (it pulls in `inspect`,
`ast`, `dis`, `tokenize`, `copy`) and ~0.3 ms per class, because each class's `__init__`,
`__repr__`, `__eq__`, `__hash__`, `__setattr__` and `__delattr__` are generated as source text
and compiled with `exec`: with ~45 record classes that is most of what a GPU start costs beyond
the interpreter (bench/run P2, RSS). Here the methods are written once and shared: making a
record class is a dict of its fields, no compiling.

mypy checks the modules against the standard library's `dataclasses` (the `TYPE_CHECKING`
branch), so the typing of every record is exactly a frozen dataclass's. At run time only the
subset gpuhook uses exists, and anything else fails at import rather than behaving otherwise:
`@dataclass` or `@dataclass(frozen=True)` with no other option, `field(default=...)` or
`field(default_factory=...)`, `replace(obj, **changes)` and `__post_init__`. Instances behave as
a dataclass's: keyword or positional construction with the same errors for missing and unknown
arguments, fields compared in order and only with the same class, `Name(a=1, b='x')` as repr;
a frozen one is hashed as the tuple of its values and raises `FrozenInstanceError` (an
AttributeError) on assignment, a mutable one is unhashable. tests/unit/test_record.py holds them
side by side with `dataclasses`.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)

__all__ = ["TYPE_CHECKING", "FrozenInstanceError", "dataclass", "field", "fields", "replace"]

if TYPE_CHECKING:
    from dataclasses import FrozenInstanceError, dataclass, field, replace

    def fields(obj: object) -> tuple[str, ...]:
        """The field names of a record (class or instance), in order."""
else:
    class FrozenInstanceError(AttributeError):
        pass

    _MISSING = object()

    class _Field:
        __slots__ = ("default", "factory")

        def __init__(self, default, factory):
            self.default = default
            self.factory = factory

    def field(*, default=_MISSING, default_factory=_MISSING):
        if default is not _MISSING and default_factory is not _MISSING:
            raise ValueError("cannot specify both default and default_factory")
        return _Field(default, default_factory)

    class _Spec:
        """A record class's fields: names in order, plain defaults, default factories."""

        __slots__ = ("defaults", "factories", "names", "nameset", "post_init")

        def __init__(self, names, defaults, factories, post_init):
            self.names = names
            self.nameset = frozenset(names)
            self.defaults = defaults
            self.factories = factories
            self.post_init = post_init

    def _init(self, *args, **kwargs):
        spec = self.__record__
        names = spec.names
        if len(args) > len(names):
            _too_many(self, spec, len(args))
        values = dict(zip(names, args, strict=False))
        if kwargs:
            if not spec.nameset.issuperset(kwargs):
                unknown = next(k for k in kwargs if k not in spec.nameset)
                raise TypeError(f"{_where(self)} got an unexpected keyword argument {unknown!r}")
            for name, value in kwargs.items():
                if name in values:
                    raise TypeError(f"{_where(self)} got multiple values for argument {name!r}")
                values[name] = value
        if len(values) != len(names):
            missing = []
            for name in names:
                if name in values:
                    continue
                if name in spec.defaults:
                    values[name] = spec.defaults[name]
                elif name in spec.factories:
                    values[name] = spec.factories[name]()
                else:
                    missing.append(repr(name))
            if missing:
                listed = (missing[0] if len(missing) == 1 else
                          " and ".join(missing) if len(missing) == 2 else
                          ", ".join(missing[:-1]) + ", and " + missing[-1])
                raise TypeError(f"{_where(self)} missing {len(missing)} required positional "
                                f"argument{'s' if len(missing) > 1 else ''}: {listed}")
        self.__dict__.update(values)
        if spec.post_init:
            self.__post_init__()

    def _where(self):
        return f"{type(self).__qualname__}.__init__()"

    def _too_many(self, spec, given):
        most = len(spec.names) + 1
        least = most - len(spec.defaults) - len(spec.factories)
        takes = f"{most}" if least == most else f"from {least} to {most}"
        raise TypeError(f"{_where(self)} takes {takes} positional argument"
                        f"{'s' if most > 1 else ''} but {given + 1} were given")

    def _values(self):
        d = self.__dict__
        return tuple([d[name] for name in self.__record__.names])

    def _eq(self, other):
        if other.__class__ is self.__class__:
            return _values(self) == _values(other)
        return NotImplemented

    def _hash(self):
        return hash(_values(self))

    _repr_running = set()

    def _repr(self):
        key = (id(self), self.__class__)
        if key in _repr_running:
            return "..."
        _repr_running.add(key)
        try:
            d = self.__dict__
            inner = ", ".join(f"{n}={d[n]!r}" for n in self.__record__.names)
        finally:
            _repr_running.discard(key)
        return f"{self.__class__.__qualname__}({inner})"

    def _setattr(self, name, value):
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def _delattr(self, name):
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def dataclass(cls=None, /, *, frozen=False):
        if cls is None:
            return lambda c: _make(c, frozen)
        return _make(cls, frozen)

    def _make(cls, frozen):
        names = []
        defaults = {}
        factories = {}
        for base in reversed(cls.__mro__[1:]):
            spec = base.__dict__.get("__record__")
            if spec is not None:
                for name in spec.names:
                    if name not in names:
                        names.append(name)
                defaults.update(spec.defaults)
                factories.update(spec.factories)
        own = cls.__dict__.get("__annotations__", {})  # noqa: RUF063 (inspect: the cost avoided)
        for name, annotation in own.items():
            if str(annotation).startswith(("ClassVar", "InitVar", "typing.ClassVar")):
                raise TypeError(f"{cls.__qualname__}.{name}: ClassVar/InitVar unsupported")
            if name not in names:
                names.append(name)
            value = cls.__dict__.get(name, _MISSING)
            defaults.pop(name, None)
            factories.pop(name, None)
            if isinstance(value, _Field):
                if value.factory is not _MISSING:
                    factories[name] = value.factory
                    delattr(cls, name)
                elif value.default is not _MISSING:
                    defaults[name] = value.default
                    setattr(cls, name, value.default)
                else:
                    delattr(cls, name)
            elif value is not _MISSING:
                if value.__class__.__hash__ is None:  # as dataclasses judges "mutable"
                    raise ValueError(f"mutable default {type(value)} for field {name} is not "
                                     "allowed: use default_factory")
                defaults[name] = value
        seen_default = None
        for name in names:
            if name in defaults or name in factories:
                seen_default = name
            elif seen_default is not None:
                raise TypeError(f"non-default argument {name!r} follows default argument")
        cls.__record__ = _Spec(tuple(names), defaults, factories,
                               hasattr(cls, "__post_init__"))
        for attr, method in (("__init__", _init), ("__repr__", _repr), ("__eq__", _eq)):
            if attr not in cls.__dict__:
                setattr(cls, attr, method)
        if frozen:
            for attr, method in (("__setattr__", _setattr), ("__delattr__", _delattr)):
                if attr in cls.__dict__:
                    raise TypeError(f"cannot overwrite attribute {attr} in class {cls.__name__}")
                setattr(cls, attr, method)
        own_hash = cls.__dict__.get("__hash__", _MISSING)
        if own_hash is _MISSING or (own_hash is None and "__eq__" in cls.__dict__):
            cls.__hash__ = _hash if frozen else None
        cls.__match_args__ = tuple(names)
        return cls

    def fields(obj):
        """The field names of a record (class or instance), in order."""
        return obj.__record__.names

    def replace(obj, /, **changes):
        spec = obj.__record__
        d = obj.__dict__
        for name in spec.names:
            if name not in changes:
                changes[name] = d[name]
        return obj.__class__(**changes)
