"""Seeds up to 2**32 - 1 (request.MAX_SEED) in `images.seed`: BIGINT on PostgreSQL.

SQLite's INTEGER is already 64-bit, so nothing changes there; on PostgreSQL, INTEGER is 32-bit
signed and would refuse a seed past 2**31 - 1.

Revision ID: 0004_seed_64_bit
Revises: 0003_image_index
Create Date: 2026-12-09
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_seed_64_bit"
down_revision = "0003_image_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("images", "seed", type_=sa.BigInteger, existing_type=sa.Integer, existing_nullable=False)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("images", "seed", type_=sa.Integer, existing_type=sa.BigInteger, existing_nullable=False)
