"""The examples in functrain's docstrings run as doctests (issue 15: "the examples in
docstrings run as doctests in `make test`").

One test per module, over every module under ``functrain`` (found with
``pkgutil.walk_packages``, so a new module is covered without editing this file). The
docstrings are written as if ``import torch``, ``import functrain`` (also as ``ft``) and
``from functrain import *`` had run, the names a reader of the docs has in scope, so those
are the doctests' globals, under the module's own globals. An example that cannot run
stand-alone (it needs a data set, a config file or a trained model) says so with
``# doctest: +SKIP``; every other one must pass.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from collections.abc import Iterator
from typing import Any

import pytest
import torch

import functrain
from functrain.config.registry_class import Registry


def _module_names() -> list[str]:
    """Every module of the package; an import error fails collection, naming the module."""
    errors: list[str] = []
    names = [
        info.name
        for info in pkgutil.walk_packages(
            functrain.__path__, "functrain.", onerror=lambda name: errors.append(name)
        )
    ]
    if errors:
        raise ImportError(f"cannot import functrain subpackages: {', '.join(errors)}")
    return ["functrain", *names]


MODULES = _module_names()


def _reader_globals() -> dict[str, Any]:
    """The names the docstrings assume: torch, functrain / ft and functrain's public API."""
    public = getattr(functrain, "__all__", None) or [
        n for n in dir(functrain) if not n.startswith("_")
    ]
    names = {n: getattr(functrain, n) for n in public}
    names.update(torch=torch, functrain=functrain, ft=functrain)
    return names


def _registries() -> Iterator[Registry]:
    """Every registry in ``functrain.config`` (an example may register a class in one)."""
    config = importlib.import_module("functrain.config")
    seen: set[int] = set()
    for value in vars(config).values():
        if isinstance(value, Registry) and id(value) not in seen:
            seen.add(id(value))
            yield value


@pytest.fixture
def restore_registries() -> Iterator[None]:
    """Registrations made by an example do not leak into the other tests."""
    saved = [(r, dict(r._entries)) for r in _registries()]
    yield
    for registry, entries in saved:
        registry._entries.clear()
        registry._entries.update(entries)


def _examples(name: str) -> int:
    """How many docstring examples the objects defined in module ``name`` have."""
    module = importlib.import_module(name)
    tests = doctest.DocTestFinder(exclude_empty=True).find(module, name, module=module)
    return sum(len(t.examples) for t in tests)


def test_every_module_is_collected() -> None:
    # Guards the parametrisation below: a walk that silently found nothing would pass.
    assert {"functrain.transforms.base", "functrain.schedules", "functrain.config"} <= set(MODULES)


def test_examples_are_collected() -> None:
    # 300+ examples exist today; a finder that missed them (exclude_empty, a wrong module
    # filter) would make every per-module test below vacuous.
    count = sum(_examples(name) for name in MODULES)
    assert count >= 300, f"only {count} docstring examples found"


@pytest.mark.parametrize("name", [n for n in MODULES if _examples(n)])
def test_docstring_examples(name: str, restore_registries: None) -> None:
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    globs = {**_reader_globals(), **vars(module)}
    # A module's tests are only those of objects defined in it (module=...), so a
    # re-exported function is checked once, where it lives.
    tests = [t for t in finder.find(module, name, module=module, globs=globs) if t.examples]
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report: list[str] = []
    for test in tests:
        runner.run(test, out=report.append)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{results.failed} failing example(s) in {name}:\n" + "".join(
        report
    )
