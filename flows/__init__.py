"""Bytewax dataflows, the supervisor and the ``ticktape`` CLI (the composition root)."""
