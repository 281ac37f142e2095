"""jaxar.sampling."""
