"""The run's config contract: the one check of every entry point (:func:`lungexp.config.check.check`), the
schema it applies (:mod:`lungexp.config.schema`), the typed options it returns, and the config keys of what
the library layers below report by their parameter names (:mod:`lungexp.config.keys`).

Only entry points import this package (each registers :mod:`lungexp.config.store`'s resolvers and nodes when
imported): it sits at the top of the layers. Its modules are imported one by one, so that an entry point's
``--help`` imports nothing slow.
"""
