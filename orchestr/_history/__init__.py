"""The run history's machinery; its public face is :mod:`orchestr.history`.

Split so that a flow run pays nothing it does not use: :mod:`._recorder` (the state
observer and the one writer thread per process) and :mod:`._values` (what values and
errors become) are imported with the engine and import neither ``sqlite3`` nor
``json``; :mod:`._schema`, :mod:`._writer` and :mod:`._reader` hold the SQL and are
imported by the writer thread, or by whoever reads the history.
"""
