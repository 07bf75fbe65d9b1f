"""The order in which a job's objects are removed (sandbox/cleanup.py)."""

from __future__ import annotations

from typing import Any

from dockguard.sandbox.cleanup import children_first


def test_images_are_removed_children_first_within_one_second() -> None:
    """A job's images are often made within one second (`Created` has whole seconds): the order
    follows `ParentId`, so the engine never refuses a parent whose child is still there."""
    base: dict[str, Any] = {"Id": "sha256:base", "ParentId": "", "Created": 100}
    step: dict[str, Any] = {"Id": "sha256:step", "ParentId": "sha256:base", "Created": 100}
    final: dict[str, Any] = {"Id": "sha256:final", "ParentId": "sha256:step", "Created": 100}
    other: dict[str, Any] = {"Id": "sha256:other", "ParentId": "", "Created": 99}
    for listing in ([base, step, final, other], [other, final, base, step]):
        order = [image["Id"] for image in children_first(listing)]
        assert order.index("sha256:final") < order.index("sha256:step") < order.index("sha256:base")
        assert sorted(order) == sorted(str(image["Id"]) for image in listing)
