"""The experiments: ``<name>/config.py`` files whose ``get_config(variant)`` returns an
``ml_collections.ConfigDict`` for ``jaxar train``, and their shared recipes (:mod:`.common`).

Installed as ``jaxar.experiments`` (the wheel maps this folder there), so
``jaxar train --config NAME[:variant]`` finds them without a source checkout; ``jaxar info``
lists them. Each folder's README.md holds its measured results.
"""
