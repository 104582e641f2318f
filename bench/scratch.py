"""A benchmark's scratch directory, used by the benchmarks that write data and run directories.

``scratch_dir(keep, prefix)`` yields ``Path(keep)`` when the user asked to keep the files
(``--keep DIR``), else a fresh temporary directory that is removed at the end — after a failure
too, and when ``bench/run_all.py``'s time-out terminates the benchmark (SIGTERM becomes
``SystemExit(143)``, so the ``finally`` runs and Flower's runtime is shut down on the way out).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def scratch_dir(keep: str | None, prefix: str) -> Iterator[Path]:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
