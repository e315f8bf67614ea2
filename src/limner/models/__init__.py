"""limner.models: model families, their networks and weight loading.

The torch version gate runs in ``limner.nn`` (every network imports it) and ``safe_load``;
``request`` is torch-free.
"""
