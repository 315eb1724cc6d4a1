"""Recurring schedules: each occurrence of a `schedules` row becomes one jobs row.

occurrences: when a schedule fires (cron or interval, time zone, catch-up, spread);
materializer: the background task that inserts the coming occurrences ahead of time.
The database side is jobpub.db.schedules, passed in by the composition root.
"""
