"""Where a job runs: the Ray runtime (``runtime``), the storage of its experiment folder (``storage``), and what
Ray and MLflow may send home (``privacy``)."""
