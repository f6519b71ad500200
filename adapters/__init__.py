"""Built-in sciinterp adapters, importable as ``sciinterp_adapters``.

The folder is ``adapters/`` in the repository but installs under the name
``sciinterp_adapters``: a PyPI package called ``adapters`` exists, and a
top-level ``adapters`` module would shadow it (or be shadowed by it).
Nothing here is imported by ``import sciinterp``; each adapter is loaded on
demand through the ``sciinterp.adapters`` entry-point group.
"""
