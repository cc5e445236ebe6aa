"""``python -m orchestr.cli``: the ``orchestr`` command without its console script."""

from __future__ import annotations

from ._app import main

if __name__ == "__main__":
    main()
