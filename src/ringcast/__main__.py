"""``python -m ringcast``: the same as the ``ringcast`` command."""

from .cli import main

raise SystemExit(main())
