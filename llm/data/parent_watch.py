"""Preloaded by the workers' fork server, and imported nowhere else: the server SIGKILLs itself within
worker.WATCH_S of the death of the process that started it, instead of exiting through a slow interpreter
shutdown while its workers run on. Its workers follow it (worker.die_with_parent).

A polled os.getppid() rather than PR_SET_PDEATHSIG: that signal fires when the *thread* that started the
server ends, and a pool may be started from a thread that ends before the process does.
"""

import os

from llm.data.worker import kill_self, watch_parent

if hasattr(os, "getppid"):
    watch_parent(kill_self)
