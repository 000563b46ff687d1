"""``python -m ijepa.data.shards SRC DST``: the same as ``ijepa shards SRC DST``."""

from .cli import main

raise SystemExit(main())
