"""Settings validation that must hold before anything starts."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError

from dockguard.settings import Settings

KEY_A = Fernet.generate_key().decode()


def test_invalid_keys_stop_the_start_without_showing_a_key() -> None:
    with pytest.raises(ValidationError) as invalid:
        Settings(encryption_key=f"{KEY_A},not-a-fernet-key")
    assert "key 2 of 2 is not a Fernet key" in str(invalid.value)
    assert KEY_A not in str(invalid.value) and "not-a-fernet-key" not in str(invalid.value)
    assert KEY_A not in repr(Settings(encryption_key=KEY_A))
    assert Settings(encryption_key=" ").encryption_key is None
