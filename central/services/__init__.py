"""Service functions: plain functions over a SQLAlchemy ``Session``.

The REST routers and the SOAP gateway call these same functions; none of them
commits (the caller owns the transaction) except where a docstring says so.
"""
