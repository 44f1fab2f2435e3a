"""Moved to executor/core/cluster.py: this name stays until sim/ imports the new one (issue 13, in progress)."""
from executor.core.cluster import *  # noqa: F401,F403
