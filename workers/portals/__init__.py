"""Which portals b24q delivers to: records, state, admission, the registry, limits, tokens (refreshed once), crypto."""
