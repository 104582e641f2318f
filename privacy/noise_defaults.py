"""The noise of the node's releases besides DP-SGD (values only; :mod:`privacy.dp_release` says why).

Kept apart from the mechanisms so that command help (``fedcredit privacy plan --help``) can
state the values the code uses without importing NumPy.
"""

STATISTICS_NOISE_MULTIPLIER = 10.0
EVALUATION_NOISE_MULTIPLIER = 20.0  # the most noise; a run's plan may lower it (privacy.planning.plan_run_noise)
COUNT_NOISE_MULTIPLIER = 20.0
DRIFT_NOISE_MULTIPLIER = 20.0  # a member's drift release to the operator (fedcredit drift release)
EVALUATION_BINS = 20
#: the score-histogram lengths of a noised evaluation; each divides the next (and SCORE_BINS), so
#: the server pools a mix of them at the coarsest (models.metrics.sum_evaluations)
EVALUATION_BIN_CHOICES = (20, 10, 5)
