"""Which portals b24q delivers to: records, limits, tokens (refreshed once for the pool), encryption at rest."""
