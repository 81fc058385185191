"""Full screens pushed over the jobs view: run history (and a run's detail), help."""
