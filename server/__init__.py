"""The consortium operator's side: the Flower ServerApp, strategies, update checks,
checkpoints and resume, the signed ledger, model export and the report."""
