"""samcpu._util: the argument checks and the atomic write every layer shares."""
import os
import stat

import numpy as np
import pytest

from samcpu._util import atomic_write, check_int, parse_int


@pytest.mark.parametrize("value, minimum, maximum, ok", [
    (3, 1, None, True), (np.int64(3), 1, None, True), (0, 1, None, False), (True, 0, None, False),
    (2.0, 1, None, False), ("3", 1, None, False), (5, 1, 4, False), (None, 1, None, False)])
def test_check_int_names_the_argument(value, minimum, maximum, ok):
    if ok:
        assert check_int("slots", value, minimum, maximum) == int(value)
    else:
        with pytest.raises(ValueError, match="slots"):
            check_int("slots", value, minimum, maximum)


@pytest.mark.parametrize("text, want", [("1000", 1000), ("1e6", 10**6), ("1_000", 1000),
                                        ("2.5", None), ("inf", None), ("nan", None), ("0", None),
                                        ("-5", None), ("x", None)])
def test_parse_int(text, want):
    if want is None:
        with pytest.raises(ValueError, match="expected an integer"):
            parse_int(text)
    else:
        assert parse_int(text) == want


def test_atomic_write_keeps_permissions_and_leaves_nothing_on_failure(tmp_path):
    path = tmp_path / "data.json"
    atomic_write(path, lambda f: f.write(b"one"))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask  # not mkstemp's 0o600
    os.chmod(path, 0o640)
    atomic_write(path, lambda f: f.write(b"two"))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640 and path.read_bytes() == b"two"

    def fail(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, fail)
    assert path.read_bytes() == b"two" and sorted(os.listdir(tmp_path)) == ["data.json"]
