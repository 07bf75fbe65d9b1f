"""The build egress proxy's default allowlist, read from a fake root's apt and pip config."""

from __future__ import annotations

import json
from pathlib import Path

from dockguard.sandbox import egress


def test_default_allowlist_is_this_machines_apt_and_pip_sources(tmp_path: Path) -> None:
    apt = tmp_path / "etc/apt/sources.list.d"
    apt.mkdir(parents=True)
    (tmp_path / "etc/apt/sources.list").write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main\n"
        "deb-src https://src.example/debian bookworm main\n"
    )
    (apt / "debian.sources").write_text(
        "Types: deb\nURIs: http://deb.example/debian http://deb2.example/debian\n"
        "Suites: bookworm\n\nTypes: deb\nURIs: http://disabled.example/x\nEnabled: no\n"
    )
    (apt / "off.list.disabled").write_text("deb http://ignored.example/ x main\n")
    (tmp_path / "etc/pip.conf").write_text("[global]\nindex-url = https://pip.example/simple\n")
    environ = {"HOME": "/root", "PIP_EXTRA_INDEX_URL": "https://extra.example/simple file:///w"}
    assert egress.host_allowlist(tmp_path, environ) == sorted(
        [
            "mirror.example",
            "src.example",
            "deb.example",
            "deb2.example",
            "pip.example",
            "extra.example",
        ]
    )
    # No pip index configured: pip's default, PyPI.
    assert egress.host_allowlist(tmp_path / "none", {}) == ["files.pythonhosted.org", "pypi.org"]
    assert json.loads(json.dumps(egress.proxy_build_args()))["NO_PROXY"] == ""
