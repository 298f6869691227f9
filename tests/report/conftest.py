"""A headless Chromium shared by the report's browser tests (skips without one; fails without one under CI=true)."""
import pytest

from tests.browser import Browser, require_chromium


@pytest.fixture(scope="module")
def browser():
    with Browser(require_chromium()) as b:
        yield b
