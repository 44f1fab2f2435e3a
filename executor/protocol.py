"""Moved to executor/core/protocol.py: this name stays until sim/ imports the new one (issue 13, in progress)."""
from executor.core.protocol import *  # noqa: F401,F403
