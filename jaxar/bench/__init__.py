"""jaxar.bench."""
