"""FastAPI status and control API: a separate reader and commander (never imports flows)."""
