"""MLflow as the record of every job: the parent and trial runs (``records``), the spool every record goes
through (``spool``), the Tune callback that writes it (``callback``), and the tracking stores (``stores``)."""
