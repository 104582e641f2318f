"""The Flower ServerApp of the consortium: translates Flower's entry point into one run.

Everything happens in :mod:`server.consortium`; this module only connects it to Flower.
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.consortium import run_consortium

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    resume = context.run_config.get("resume-from") or None
    run_consortium(grid, dict(context.run_config), run_id=context.run_id, resume_from=resume)
