"""Signal handlers installed for the span of a command and put back after it."""

import signal
import threading
from contextlib import contextmanager

STOPPING = (signal.SIGTERM, signal.SIGINT)


@contextmanager
def handling(handler, signals=STOPPING):
    """Let ``handler(signum, frame)`` take ``signals`` inside the block (in the main thread
    only: Python delivers signals there), then restore the handlers before."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
