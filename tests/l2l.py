"""Import learn2learn if installed (scripts/install_learn2learn.sh); tests skip with the reason otherwise."""

import pytest

try:
    import learn2learn

    L2L_REASON = ""
except ImportError as error:  # pragma: no cover - depends on the machine
    learn2learn = None
    L2L_REASON = (
        f"learn2learn is not importable ({error}); PyPI's 0.2.0 does not build on Python 3.11 by itself: "
        "run `bash scripts/install_learn2learn.sh`"
    )

needs_l2l = pytest.mark.skipif(learn2learn is None, reason=L2L_REASON)
