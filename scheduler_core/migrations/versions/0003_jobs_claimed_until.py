"""carnation_jobs.claimed_until: the latest scheduled run the executing process may start for that job.

Written in the same UPDATE as the next run time, ahead of the run, so claiming a run costs no commit on its start
path. A process taking over after a crash treats runs up to it as possibly started.

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("carnation_jobs", sa.Column("claimed_until", sa.Double, nullable=True))


def downgrade() -> None:
    op.drop_column("carnation_jobs", "claimed_until")
