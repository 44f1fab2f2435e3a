"""Moved to executor/core/jobs.py: this name stays until sim/ imports the new one (issue 13, in progress)."""
from executor.core.jobs import *  # noqa: F401,F403
