"""jaxar.nn."""
