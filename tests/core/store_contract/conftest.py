"""The fixtures of the store contract suite: fresh engines of every kind (harness.ENGINES)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.core.store_contract.harness import ENGINES, Engine


@pytest.fixture(params=sorted(ENGINES))
def new_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Engine]]:
    """A factory of fresh, empty engines of one kind; each is closed when the test ends."""
    opened: list[Engine] = []
    counter = itertools.count()

    def make() -> Engine:
        directory = tmp_path / f"engine-{next(counter)}"
        directory.mkdir()
        engine = ENGINES[request.param](directory)
        opened.append(engine)
        return engine

    yield make
    for engine in opened:
        engine.close()


@pytest.fixture
def engine(new_engine: Callable[[], Engine]) -> Engine:
    return new_engine()
