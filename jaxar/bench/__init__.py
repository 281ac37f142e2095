"""Benchmarks behind ``jaxar bench``: name -> module defining ``run(quick) -> list[Result]``."""

BENCHMARKS: dict[str, str] = {
    "kernel_flash_attention": "pallas_kernels.flash_attention.bench",
    "kernel_linear_scan": "pallas_kernels.linear_scan.bench",
    "kernel_gateloop": "pallas_kernels.gateloop.bench",
    "kernel_linear_attention": "pallas_kernels.gateloop.bench_vs_attention",
    "diffusion": "jaxar.bench.diffusion",
    "heads": "jaxar.bench.heads",
    "recurrence": "jaxar.bench.recurrence",
    "attention": "jaxar.bench.attention",
    "train_step": "jaxar.bench.train_step",
    "remat": "jaxar.bench.remat",
    "decode": "jaxar.bench.decode",
    "mdm_inference": "jaxar.bench.mdm_inference",
    "visual": "jaxar.bench.visual",
    "decoding": "jaxar.bench.decoding",
}
