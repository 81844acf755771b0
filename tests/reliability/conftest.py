"""The probe loss of the reliability models starts every test fresh (call count, planned NaN, crash)."""

import pytest

from ._models import CONTROL


@pytest.fixture(autouse=True)
def fresh_probe():
    CONTROL.update(calls=0, nan_at=None, crash_once_exists=None)
    yield
    CONTROL.update(calls=0, nan_at=None, crash_once_exists=None)
