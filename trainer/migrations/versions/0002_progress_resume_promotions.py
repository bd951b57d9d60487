"""Progress and resume count on runs; promotions (the checkpoint a demo uses).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # ADD COLUMN works on every backend (no table copy); server defaults fill the existing rows
    op.add_column("runs", sa.Column("progress", sa.Float(), nullable=False, server_default=sa.text("0")))
    op.add_column("runs", sa.Column("progress_desc", sa.String(500), nullable=False, server_default=sa.text("''")))
    op.add_column("runs", sa.Column("resume_count", sa.Integer(), nullable=False, server_default=sa.text("0")))
    op.create_table(
        "promotions",
        sa.Column("method", sa.String(100), nullable=False),
        sa.Column("slot", sa.String(250), nullable=False),
        sa.Column("artifact_id", sa.Integer(), nullable=False),
        sa.Column("promoted_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["artifact_id"], ["artifacts.id"], name=op.f("fk_promotions_artifact_id_artifacts"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("method", "slot", name=op.f("pk_promotions")),
    )


def downgrade() -> None:
    op.drop_table("promotions")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("resume_count")
        batch.drop_column("progress_desc")
        batch.drop_column("progress")
