"""Errors the cycle understands without knowing which library raised them."""


class JobpubError(Exception):
    """Base class for jobpub's own errors."""


class DatabaseUnavailable(JobpubError):
    """The database could not be reached or the connection broke: retry later."""


class SchemaMissing(DatabaseUnavailable):
    """The jobs table or its columns are missing: `jobpub migrate` has not run."""
