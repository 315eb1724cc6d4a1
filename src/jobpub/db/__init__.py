"""The database side, split by concern; the only package that imports psycopg.

database: the pool and error translation; queries: every statement; claim: taking due
rows; complete: writing what became of them; listen: NOTIFY and backlog counts;
admin: migrate and requeue.
"""
