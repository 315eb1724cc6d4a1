"""jobpub: durable delayed publish for MQTT, driven by a PostgreSQL table."""

__version__ = "0.1.0"
