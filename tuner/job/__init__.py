"""A tuning job from spec to winner: the spec and its plan, the Tune runs (``launch``, ``arms``), the winner on
held-out data, and the commands that act on a job folder (train, predict, ablate, sync, trust)."""
