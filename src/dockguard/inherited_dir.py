"""A private directory handed to the processes a parent starts, through their environment."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def inherited_dir(variable: str, prefix: str) -> Iterator[str]:
    """A new directory of this user's only (mode 0700), named in `variable` of the environment
    for as long as the block runs (processes started in it inherit the name), then removed with
    everything in it, and `variable` restored."""
    path = tempfile.mkdtemp(prefix=prefix)
    previous = os.environ.get(variable)
    os.environ[variable] = path
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = previous
        shutil.rmtree(path, ignore_errors=True)
