"""Under ctest (PINS_NO_SKIP=1) a test that cannot run fails instead of being skipped.

The test modules skip when a tool they drive is missing (buf, curl, redis-server, PostgreSQL 15).
tools/deps.sh installs all of them, so under ctest a missing tool is a broken setup, and a skip
would let a check that never ran count as passed. Importing this module before the test modules
define their classes turns unittest's skip decorators, TestCase.skipTest and unittest.SkipTest
into failures naming the reason.
"""
import functools
import os
import unittest

STRICT = os.environ.get("PINS_NO_SKIP") == "1"


class MissingRequirement(AssertionError):
    """Raised where a test would have been skipped."""


def _failing(reason):
    def deco(obj):
        if isinstance(obj, type):
            def set_up_class(cls, _reason=reason):
                raise MissingRequirement("cannot run: " + _reason)
            obj.setUpClass = classmethod(set_up_class)
            return obj

        @functools.wraps(obj)
        def wrapper(*args, **kwargs):
            raise MissingRequirement("cannot run: " + reason)
        return wrapper
    return deco


def _identity(obj):
    return obj


if STRICT:
    unittest.skip = _failing
    unittest.skipUnless = lambda cond, reason: _identity if cond else _failing(reason)
    unittest.skipIf = lambda cond, reason: _failing(reason) if cond else _identity

    def _skip_test(self, reason):
        raise MissingRequirement("cannot run: " + reason)
    unittest.TestCase.skipTest = _skip_test
    unittest.SkipTest = MissingRequirement
