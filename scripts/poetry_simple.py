"""Run poetry, resolving PyPI packages through the simple index only.

Some registry mirrors serve PyPI's simple index (PEP 503/691) but not its per-release JSON API,
which poetry's built-in PyPI repository depends on for `lock` and `install`. This wrapper makes
the built-in repository read releases the way poetry's own legacy repositories do (simple index +
wheel metadata), so the lock file and installs stay the standard ones. Against the real index it
behaves exactly like poetry. Usage: `python3 scripts/poetry_simple.py <poetry arguments>`.
"""

from __future__ import annotations

import sys
from typing import Any

from poetry.console.application import main
from poetry.inspection.info import PackageInfo
from poetry.repositories.exceptions import PackageNotFoundError
from poetry.repositories.legacy_repository import LegacyRepository
from poetry.repositories.pypi_repository import PyPiRepository


def _get_release_info(self: PyPiRepository, name: Any, version: Any) -> dict[str, Any]:
    page = self.get_page(name)
    links = list(page.links_for_version(name, version))
    if not links:
        raise PackageNotFoundError(f"Package [{name}] ({version}) not found.")
    info = PackageInfo(
        name=name,
        version=version.text,
        summary="",
        requires_dist=[],
        requires_python=None,
        files=[],
        yanked=page.yanked(name, version),
        cache_version=str(self.CACHE_VERSION),
    )
    return self._links_to_data(links, info)


PyPiRepository._get_release_info = _get_release_info  # type: ignore[method-assign]
PyPiRepository.find_links_for_package = LegacyRepository.find_links_for_package  # type: ignore[method-assign,assignment]

if __name__ == "__main__":
    sys.exit(main())
