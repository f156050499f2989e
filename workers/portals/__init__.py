"""Which portals b24q delivers to: records, their state, the registry, limits, tokens (refreshed once), encryption."""
