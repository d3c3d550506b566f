"""Loaded by the killed subprocess (PYTHONPATH): SIGKILLs the process when a page holding the
record REVIEW_KILL_AT_RECORD is about to commit (in SyncEngine._commit_page, before its writes)."""
import builtins
import os
import signal
import sys

_record = os.environ.get("REVIEW_KILL_AT_RECORD")
if _record:
    _real_import = builtins.__import__
    _state = {"done": False, "busy": False}

    def _hook(name, *args, **kw):
        module = _real_import(name, *args, **kw)
        if not _state["done"] and not _state["busy"] and "consentsync.sync.engine" in sys.modules:
            engine = sys.modules["consentsync.sync.engine"]
            if hasattr(engine, "SyncEngine"):
                _state["done"] = True
                commit = engine.SyncEngine._commit_page

                def killing(self, conn, mapping, page, *a, **k):
                    if any(r.record_id == _record for r in page):
                        os.kill(os.getpid(), signal.SIGKILL)
                    return commit(self, conn, mapping, page, *a, **k)

                engine.SyncEngine._commit_page = killing
                builtins.__import__ = _real_import
        return module

    builtins.__import__ = _hook
