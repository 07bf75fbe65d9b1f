"""tests/trivydb.py refuses input trivy would misread (tests/e2e/test_trivydb.py checks what
it writes against the real trivy)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.trivydb import Vulnerability, write_db

UPDATED_AT = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
VULN = Vulnerability(id="CVE-2099-0001", package="dgtest", fixed_version="1.0-2", severity="HIGH")


def test_write_db_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        write_db(tmp_path / "naive", [VULN], updated_at=datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="severity"):
        write_db(
            tmp_path / "sev", [Vulnerability("CVE-1", "p", "1", "SEVERE")], updated_at=UPDATED_AT
        )
    with pytest.raises(ValueError, match="duplicate"):
        write_db(tmp_path / "dup", [VULN, VULN], updated_at=UPDATED_AT)
