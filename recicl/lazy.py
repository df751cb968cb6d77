"""Lazy package exports: a package names its public objects but imports their modules on first use.

Heavy dependencies (torch, transformers, Ray, encoders) would otherwise load whenever a caller
imports the package for a type or a constant, which slows CLI start-up and every Ray Data
worker. A package lists ``name → submodule`` once, imports the same names under
``TYPE_CHECKING`` for type checkers, and installs the two hooks this module returns.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``, whose ``exports`` map a name to its submodule.

    The first access imports ``package.<submodule>`` and caches the object on the package, so
    later accesses never come back here. ``dir()`` lists the lazy names too, so that completion
    and ``help()`` show the package's whole surface before anything is imported.
    """
    table = dict(exports)

    def __getattr__(name: str) -> Any:
        submodule = table.get(name)
        if submodule is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{submodule}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *table})

    return __getattr__, __dir__
