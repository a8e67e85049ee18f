"""``python -m replicarouter.testing``: see ``replicarouter.testing.cli``."""

from .cli import main

raise SystemExit(main())
