"""Benchmarks behind ``jaxar bench``: name -> module defining ``run(quick) -> list[Result]``."""

BENCHMARKS: dict[str, str] = {}
