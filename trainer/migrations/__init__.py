"""Alembic migrations of the run store (applied by RunStore on open; no alembic.ini needed)."""
