"""Task runs on a Dask cluster: :class:`DaskTaskRunner`; Dask clients for task and flow
code (collections, futures): :func:`get_dask_client`, :func:`get_async_dask_client`.

Importing this module imports ``distributed`` (the ``dask`` extra:
``pip install 'orchestr[dask]'``); ``import orchestr`` does not.
"""

from .._public import show_public_module as _show_public_module
from ._clients import get_async_dask_client as get_async_dask_client
from ._clients import get_dask_client as get_dask_client
from ._runner import DaskTaskRunner as DaskTaskRunner

__all__ = ["DaskTaskRunner", "get_async_dask_client", "get_dask_client"]

_show_public_module(globals())
