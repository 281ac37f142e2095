"""Benchmarks behind ``jaxar bench``: name -> module defining ``run(quick) -> list[Result]``."""

BENCHMARKS: dict[str, str] = {
    "kernel_flash_attention": "pallas_kernels.flash_attention.bench",
    "diffusion": "jaxar.bench.diffusion",
}
