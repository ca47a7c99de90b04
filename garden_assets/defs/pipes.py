"""A Pipes message reader that never parses half a line."""

import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager

import dagster as dg


class CompleteLineMessageReader(dg.PipesFileMessageReader):
    """Tails a per-session temporary file like ``PipesTempFileMessageReader``, but hands over only whole lines.

    Dagster's own reader (``tail_file``) yields whatever ``readline()`` returns, which is half a message when it
    catches the writer mid-line; seen under load during training (JSONDecodeError, reader thread dead, the final
    materialization and the closed message lost). Here a partial line waits for its newline.
    """

    def __init__(self, include_stdio_in_messages: bool = False):
        super().__init__(path="", include_stdio_in_messages=include_stdio_in_messages)

    @contextmanager
    def read_messages(self, handler):
        with tempfile.TemporaryDirectory(prefix="garden_pipes_") as tmp:
            self._path = os.path.join(tmp, "messages")
            with super().read_messages(handler) as params:
                yield params

    def _reader_thread(self, handler, is_resource_complete) -> None:
        try:
            pending = ""
            with open(self._path, encoding="utf-8") as stream:
                while True:
                    pending += stream.readline()
                    if pending.endswith("\n"):
                        handler.handle_message(json.loads(pending))
                        pending = ""
                    elif is_resource_complete.is_set() and not pending:
                        break
                    elif is_resource_complete.is_set():
                        # the writer is gone: whatever is left can never complete
                        handler.handle_message(json.loads(pending)) if pending.strip() else None
                        break
                    else:
                        time.sleep(0.01)
        except Exception:
            handler.report_pipes_framework_exception(f"{self.__class__.__name__} reader thread", sys.exc_info())
            raise
