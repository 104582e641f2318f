"""The Flower ServerApp of the consortium: translates Flower's entry point into one run.

Everything happens in :mod:`server.consortium`; this module only connects it to Flower.
"""

from __future__ import annotations

import sys

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.consortium import run_consortium

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    retry_reply_pulls_promptly(grid)
    resume = context.run_config.get("resume-from") or None
    run_consortium(grid, dict(context.run_config), run_id=context.run_id, resume_from=resume)


def retry_reply_pulls_promptly(grid: Grid) -> None:
    """In deployment the grid (Flower's ``HttpGrid``) pulls each reply's objects from the SuperLink,
    often while the SuperNode is still uploading them: retry those pulls after milliseconds, not
    Flower's second (:mod:`fedcredit.object_pulls`). The simulation's in-memory grid pulls none."""
    grid_module = sys.modules[type(grid).__module__]
    if hasattr(grid_module, "pull_objects"):
        from fedcredit.object_pulls import retry_pulls_promptly

        retry_pulls_promptly(grid_module)
