"""The public face: what forged, flooding, huge, slow or malformed requests cost."""
