"""The ground floor of tuner/: writing files safely (``outputs``) and the signatures that make a job folder a
trust boundary (``seal``). Imports nothing else of tuner/."""
