"""Research tooling: the synthetic consortium, partitioners, the local simulation runner,
baselines and sweeps."""
