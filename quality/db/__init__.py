"""Annotation DB: schema, engine and sessions, read-side queries, migrations."""
