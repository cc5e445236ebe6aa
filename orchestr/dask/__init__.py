"""Task runs on a Dask cluster: :class:`DaskTaskRunner`.

Importing this module imports ``distributed`` (the ``dask`` extra:
``pip install 'orchestr[dask]'``); ``import orchestr`` does not.
"""

from ._runner import DaskTaskRunner as DaskTaskRunner

__all__ = ["DaskTaskRunner"]
