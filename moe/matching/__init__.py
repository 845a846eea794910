"""Client–expert matching: fitness scoring, feasibility, assignment solvers, baselines."""
