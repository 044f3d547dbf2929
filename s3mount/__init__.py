"""s3mount: mount an S3 bucket with FUSE so that tools which only write files stream into S3."""

from __future__ import annotations

__version__ = "0.1.0"
