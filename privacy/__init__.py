"""Record-level differential privacy: DP-SGD on Opacus, the persistent lifetime accountant and
budget guard, noise planning, DP statistics and the membership-inference audit. No Flower code."""
