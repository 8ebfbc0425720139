"""losstune's service side: the CLI, the Ray Tune driver and MLflow tracking.

Ray and MLflow are imported here (and in ``trainables.tune_trainable``) only, and lazily, so that
``losstune train`` starts without them.
"""

from __future__ import annotations

__version__ = "0.1.0"
