"""The Ray Serve application: on-demand instruments over HTTP (see docs/serving.md).

`serve run serve.app:app` locally, `serve deploy serve/config.yaml` on a cluster. Generation,
scoring and writing live in `instrumentgen/instruments/` (slices.py); this package is the Ray edge.
"""
