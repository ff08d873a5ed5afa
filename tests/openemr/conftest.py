"""Fixtures of the OpenEMR bridge tests (helpers live in tests/openemr_support.py)."""

from openemr_support import emulator, key_file, private_pem  # noqa: F401 - fixtures
