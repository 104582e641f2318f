"""The in-process Grid the ServerApp tests use: :mod:`simulation.inprocess_grid` (moved there so
benchmarks can run the real ServerApp and ClientApp without Ray)."""

from simulation.inprocess_grid import InProcessGrid  # noqa: F401
