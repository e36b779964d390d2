"""Built-in datasets, each a package that writes a manifest: the core never imports one.

A recipe names one as ``data.dataset`` (with ``data.dataset_options``); ``data.manifest`` is
then written by it when absent. A user's own data needs none: a manifest is enough.
"""
