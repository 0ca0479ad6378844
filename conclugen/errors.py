"""The one root of the project's errors.

Every error the project raises on purpose derives from :class:`ConCluGenError`, so that the CLI
has a single place (``conclugen.cli``) that turns them into one ``error: …`` line and exit 1.
Each subclass also keeps the builtin base it had (``ValueError``, ``OSError``, …) so that callers
catching those still work.
"""

from __future__ import annotations


class ConCluGenError(Exception):
    """Base of every project error: a message for a person, naming the thing that is wrong."""
