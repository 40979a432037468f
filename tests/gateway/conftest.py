"""Set-up the gateway's tests share beyond tests/conftest.py."""

from pathlib import Path

import pytest

from tests.gateway.auditsetup import Idp


@pytest.fixture
def idp(tmp_path: Path) -> Idp:
    """A test identity provider whose JWKS file (``jwks.json`` in the test's folder) the
    ``audit_config`` gateway trusts."""
    return Idp(tmp_path)
