"""jaxar.data."""
