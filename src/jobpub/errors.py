"""Errors the cycle understands without knowing which library raised them."""


class JobpubError(Exception):
    """Base class for jobpub's own errors."""


class DatabaseError(JobpubError):
    """A statement failed. Retried later: the daemon stays up, /readyz says not ready."""


class DatabaseUnavailable(DatabaseError):
    """The database could not be reached or the connection broke: retry later."""


class SchemaMissing(DatabaseUnavailable):
    """The jobs table or its columns are missing: `jobpub migrate` has not run."""
