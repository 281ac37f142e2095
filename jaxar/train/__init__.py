"""jaxar.train."""
