"""jaxar.models."""
