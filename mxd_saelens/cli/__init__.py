"""The ``mxd-saelens`` command line: ``main`` (train, cache, eval, demo, upload), ``research``
(probe, steer, dashboard), the shared flag parsing and help."""
