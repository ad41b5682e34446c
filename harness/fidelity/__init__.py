"""The harness's fidelity benchmark: its real load path against the sim's ground truth (issue 3 §3)."""
