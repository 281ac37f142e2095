"""A trained image tokenizer read back from its run directory, for the token families.

``load_tokenizer(workdir)`` reads ``workdir/config.json`` (a ``vq`` family run), rebuilds
its :class:`jaxar.models.vq.VQConfig` exactly as the trainer did (from the data's shape,
``jaxar.data.sources.describe``), and restores the
newest good checkpoint's weights (the EMA weights when the run kept them). The weights
are read once per process (cached by path) as host arrays, so building a token model
under ``jit`` / ``eval_shape`` reads no file twice.

``code_source(workdir, source, data=..., split=...)`` encodes a finite image split with
the frozen tokenizer ONCE (batched, jitted) and caches the codes and labels in
``workdir/codes/<data>_<split>_step<N>_<hash>_<tag>.npz`` (written to a temporary file
and renamed, so a crash never leaves a partial cache). The cache is keyed by the
checkpoint step, the data name and split (and its resize-and-crop step), a hash of the
tokenizer's run config and the row count; the crop and the row count also name the file
(``<tag>``), so runs that differ in them keep one cache each. A cache whose key or code
count does not match is rebuilt (with a warning line). The token families then train and
evaluate on the cached codes: each image is encoded in its deterministic form
(``source[i]``: the centre crop of a ``data.image_size`` pipeline, as LlamaGen's and VAR's
code extraction), so random crops or flips configured for the split do not reach the
codes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pathlib
import sys
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxar.models.vq import VQ, VQConfig
from jaxar.train import experiments, optim
from jaxar.train import step as step_lib
from jaxar.train.checkpoint import Checkpointer
from jaxar.train.config import from_config_dict

__all__ = [
    "vq_fields", "tokenizer_config", "has_run", "planned_config", "load_tokenizer", "tokenizer_step", "flat_codes",
    "encode_source", "read_codes", "write_codes", "cached_codes", "config_hash", "code_source",
]  # fmt: skip


def vq_fields(info, dtype) -> dict[str, Any]:
    """The vq family's data fields: square image side, channels, classes, dtype."""
    h, w, c = info.image_shape
    if h != w:
        raise ValueError(f"the image tokenizer needs square images; the data's are {h}x{w}")
    return dict(image_size=h, channels=c, num_classes=info.num_classes, dtype=dtype)


def _run_config(workdir: str):
    if not workdir:
        raise ValueError(
            "config.model.tokenizer_workdir='' is required; accepted: the run directory of a "
            "trained tokenizer (e.g. jaxar train --config vq_tokenizer:tiny)"
        )
    path = pathlib.Path(workdir) / "config.json"
    if not path.exists():
        raise ValueError(
            f"config.model.tokenizer_workdir={workdir!r} holds no config.json; accepted: the "
            "run directory of a trained vq tokenizer"
        )
    cfg = from_config_dict(json.loads(path.read_text()))
    if cfg.model.family != "vq":
        raise ValueError(
            f"config.model.tokenizer_workdir={workdir!r} is a {cfg.model.family!r} run; "
            "accepted: a 'vq' family run"
        )
    return cfg


def _vq_config(cfg) -> VQConfig:
    """The VQConfig a ``vq`` run config builds, from its data's shape (nothing is read)."""
    from jaxar.data import sources  # the data layer is imported lazily, as by the trainer

    d = cfg.data
    info = sources.describe(d.name, data_dir=d.data_dir, image=d.image_prep(train=False))
    fields = {**vq_fields(info, jnp.float32), **dict(cfg.model.overrides)}
    return VQConfig.preset(cfg.model.preset, **fields)


def tokenizer_config(workdir: str) -> VQConfig:
    """The VQConfig of the tokenizer trained in ``workdir`` (no weights are read)."""
    return _vq_config(_run_config(workdir))


def has_run(workdir: str) -> bool:
    """Whether ``workdir`` holds a tokenizer run (its ``config.json``)."""
    return bool(workdir) and (pathlib.Path(workdir) / "config.json").is_file()


def planned_config(workdir: str) -> tuple[VQConfig, str]:
    """``(VQConfig, experiment)``: the config the tokenizer run ``workdir`` will have, from
    the experiment its name denotes (the trainer's default run directory is
    ``jaxar_runs/<experiment>_<variant>``, e.g. ``vq_tokenizer_full`` ->
    ``vq_tokenizer:full``). For shapes only (``jaxar compile``): training a token model
    still needs the trained tokenizer.

    Raises:
      ValueError: (one line) the name denotes no vq experiment and variant.
    """
    base = pathlib.Path(workdir).name
    for name in sorted(experiments.names(), key=len, reverse=True):
        if base != name and not base.startswith(name + "_"):
            continue
        variant = base[len(name) + 1 :]
        if variant and variant not in experiments.variants(name):
            continue
        spec = f"{name}:{variant}" if variant else name
        cfg = from_config_dict(experiments.load_config(spec).to_dict())
        if cfg.model.family != "vq":
            break
        return _vq_config(cfg), spec
    raise ValueError(
        f"config.model.tokenizer_workdir={workdir!r} does not exist and its name denotes no "
        "vq experiment; accepted: a trained tokenizer's run directory, or "
        "jaxar_runs/<experiment>_<variant> of a vq experiment (e.g. vq_tokenizer_full)"
    )


@functools.cache
def _weights(workdir: str):
    cfg = _run_config(workdir)
    vq_cfg = tokenizer_config(workdir)
    with jax.ensure_compile_time_eval():
        _, params, model_state, _ = step_lib.split_model(VQ(vq_cfg, rngs=nnx.Rngs(0)))
        state = step_lib.init_state(
            params, optim.make(cfg), seed=cfg.seed, ema=cfg.ema_decay > 0, model_state=model_state
        )
        directory = pathlib.Path(workdir) / "checkpoints"
        if not directory.is_dir():
            raise ValueError(
                f"config.model.tokenizer_workdir={workdir!r} has no checkpoints/ (train it first)"
            )
        ckpt = Checkpointer(directory, read_only=True)
        try:
            restored, _ = ckpt.restore(state)
        finally:
            ckpt.close()
        weights = restored.get("ema", restored["params"])
        if "model_state" in restored:  # vq_ema: the EMA codebook is model state
            weights = nnx.merge_state(weights, restored["model_state"])
        return vq_cfg, jax.tree.map(np.asarray, weights), int(ckpt.restored_step)


def _abs(workdir: str) -> str:
    return str(pathlib.Path(workdir).absolute()) if workdir else workdir


def load_tokenizer(workdir: str) -> VQ:
    """The trained :class:`VQ` of ``workdir`` (a ``vq`` family run)."""
    vq_cfg, weights, _ = _weights(_abs(workdir))
    # the structure only (no eager initialisers: each conv's would compile on its own)
    graphdef, _, rest = nnx.split(
        nnx.eval_shape(lambda: VQ(vq_cfg, rngs=nnx.Rngs(0))), nnx.Param, ...
    )
    if jax.tree.leaves(rest):  # non-parameter state would need its initial values
        model = VQ(vq_cfg, rngs=nnx.Rngs(0))
        nnx.update(model, jax.tree.map(jnp.asarray, weights))
        return model
    return nnx.merge(graphdef, jax.tree.map(jnp.asarray, weights), rest)


def tokenizer_step(workdir: str) -> int:
    """The checkpoint step whose weights :func:`load_tokenizer` returns."""
    return _weights(_abs(workdir))[2]


# ---- the code cache ------------------------------------------------------------------


def flat_codes(ids) -> jax.Array:
    """A tokenizer's codes as int32 (B, L): raster order, scales concatenated for msrq
    (the layout ``batch["codes"]`` of the token families)."""
    if isinstance(ids, list | tuple):
        return jnp.concatenate([jnp.asarray(i, jnp.int32).reshape(i.shape[0], -1) for i in ids], 1)
    ids = jnp.asarray(ids, jnp.int32)
    return ids.reshape(ids.shape[0], -1)


@functools.partial(jax.jit, static_argnums=0)
def _encode(graphdef, state, images):
    return flat_codes(nnx.merge(graphdef, state).encode_ids(images))


def encode_source(tokenizer: VQ, source, *, batch_size: int = 256) -> dict[str, np.ndarray]:
    """``{"codes": int32 (N, L), "label": int32 (N,)}`` of every row of an image
    ``source`` through ``tokenizer`` (one jitted encode per fixed-size batch; the last
    batch is padded by repeating rows, so one compile covers the split)."""
    n = len(source)
    if n == 0:
        raise ValueError(f"{source!r} is empty: nothing to encode")
    graphdef, state = nnx.split(tokenizer)
    b = min(int(batch_size), n)
    codes, labels = [], []
    for lo in range(0, n, b):
        idx = [min(i, n - 1) for i in range(lo, lo + b)]
        rows = [source[i] for i in idx]
        images = np.stack([r["image"] for r in rows])
        out = np.asarray(_encode(graphdef, state, images))[: min(b, n - lo)]
        codes.append(out)
        labels.append(np.asarray([r.get("label", 0) for r in rows[: len(out)]], np.int32))
    return {"codes": np.concatenate(codes), "label": np.concatenate(labels)}


def write_codes(path, arrays: dict[str, np.ndarray], key: dict) -> None:
    """Writes ``arrays`` and ``key`` to ``path`` (.npz) atomically: a temporary file in
    the same folder, then a rename."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, key=np.asarray(json.dumps(key, sort_keys=True)), **arrays)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def read_codes(path, key: dict) -> dict[str, np.ndarray]:
    """The cached ``{"codes", "label"}`` at ``path``.

    Raises:
      ValueError: (one line) the file is unreadable, was written for another key, or
        holds another number of rows / codes per row than ``key`` says.
    """
    try:
        with np.load(path) as f:
            got = json.loads(str(f["key"]))
            arrays = {"codes": f["codes"], "label": f["label"]}
    except Exception as e:  # noqa: BLE001 - truncated, not an npz, missing arrays, ...
        raise ValueError(f"code cache {str(path)!r} is unreadable ({type(e).__name__})") from e
    if got != key:
        diff = sorted(k for k in set(key) | set(got) if key.get(k) != got.get(k))
        raise ValueError(
            f"code cache {str(path)!r} was written for another tokenizer/data "
            f"({', '.join(f'{k}={got.get(k)!r} != {key.get(k)!r}' for k in diff)})"
        )
    want = (key["rows"], key["codes_per_row"])
    if arrays["codes"].shape != want or arrays["label"].shape != want[:1]:
        raise ValueError(
            f"code cache {str(path)!r} holds codes {arrays['codes'].shape}; expected {want}"
        )
    if (
        arrays["codes"].size
        and not 0 <= arrays["codes"].min() <= arrays["codes"].max() < (key["num_codes"])
    ):
        raise ValueError(f"code cache {str(path)!r} holds ids outside [0, {key['num_codes']})")
    return arrays


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "-" for c in name)


def cached_codes(
    tokenizer: VQ, source, *, directory, key: dict, batch_size: int = 256, say=None
) -> tuple[dict[str, np.ndarray], bool]:
    """``(arrays, built)``: the codes of ``source`` read from the cache in ``directory``
    named by ``key`` (data, split, step, config hash; the source's resize-and-crop step
    and row count, which also name the file), or encoded and written there when absent or
    mismatched (``built`` True)."""
    cfg = tokenizer.config
    prep = getattr(source, "prep", None)  # a resize-and-crop step: other crops, other codes
    key = {
        **key,
        **({"prep": repr(prep.deterministic())} if prep is not None else {}),
        "rows": len(source),
        "codes_per_row": int(sum(s * s for s in cfg.scales))
        if cfg.quantizer == "msrq"
        else int(cfg.grid * cfg.grid * (cfg.rq_depth if cfg.quantizer == "rq" else 1)),
        "num_codes": int(cfg.num_codes),
    }
    # the crop and the row count name the file too: runs that differ in them keep their own
    # caches instead of rebuilding each other's in turn
    variant = json.dumps({k: key[k] for k in ("prep", "rows") if k in key}, sort_keys=True)
    tag = hashlib.sha256(variant.encode()).hexdigest()[:8]
    name = (
        f"{_safe(key['data'])}_{_safe(key['split'])}_step{key['step']}_{key['hash'][:12]}_{tag}.npz"
    )
    path = pathlib.Path(directory) / name
    if path.exists():
        try:
            return read_codes(path, key), False
        except ValueError as e:
            (say or _warn)(f"{e}; rebuilding it")
    arrays = encode_source(tokenizer, source, batch_size=batch_size)
    write_codes(path, arrays, key)
    return arrays, True


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def config_hash(workdir: str) -> str:
    """sha256 of the tokenizer run's config.json and the VQConfig rebuilt from it."""
    text = (pathlib.Path(workdir) / "config.json").read_text()
    return hashlib.sha256((text + repr(tokenizer_config(workdir))).encode()).hexdigest()


def code_source(workdir: str, source, *, data: str, split: str, say=None):
    """An :class:`jaxar.data.pipeline.ArraySource` of ``{"codes", "label"}``: the image
    ``source`` (data ``data``, split ``split``) encoded once by the tokenizer trained in
    ``workdir`` and cached under ``workdir/codes/`` (see :func:`cached_codes`)."""
    from jaxar.data import pipeline

    key = dict(data=data, split=split, step=tokenizer_step(workdir), hash=config_hash(workdir))
    arrays, built = cached_codes(
        load_tokenizer(workdir), source, directory=pathlib.Path(workdir) / "codes", key=key,
        say=say,
    )  # fmt: skip
    if built and say is not None:
        say(f"encoded {len(source)} rows of {data}/{split} once; codes cached in {workdir}/codes")
    return pipeline.ArraySource(arrays, name=f"codes:{data}/{split}@step{key['step']}")
