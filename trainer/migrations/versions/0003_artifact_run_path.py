"""Artifacts: their path relative to the runs directory, so a studio that mounts a shared home elsewhere finds them.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL for the rows written before (their absolute path still works on the machine that wrote them)
    # and for files outside the runs directory.
    op.add_column("artifacts", sa.Column("run_path", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("artifacts") as batch:
        batch.drop_column("run_path")
