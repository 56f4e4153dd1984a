"""SQLAlchemy models mapping the original toutiao tables, column for column."""

from sqlalchemy import BigInteger, Integer, SmallInteger
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase

# BIGINT UNSIGNED on MySQL/MariaDB as in the original schema; SQLite only
# autoincrements a column declared INTEGER PRIMARY KEY.
ID = BigInteger().with_variant(mysql.BIGINT(unsigned=True), "mysql", "mariadb").with_variant(Integer(), "sqlite")

# Status and enum columns are TINYINT in the original schema.
TINY = SmallInteger().with_variant(mysql.TINYINT(), "mysql", "mariadb")


class Base(DeclarativeBase):
    """Declarative base of every toutiao model."""


from common.models.news import (  # noqa: E402
    Article,
    Attitude,
    Collection,
    Comment,
    CommentLiking,
)
from common.models.user import Relation, User  # noqa: E402

__all__ = [
    "ID",
    "TINY",
    "Base",
    "User",
    "Relation",
    "Article",
    "Collection",
    "Attitude",
    "Comment",
    "CommentLiking",
]
