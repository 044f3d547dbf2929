"""Every setting of a mount in one frozen dataclass, with every default in one place.

The command line (options.py) takes its defaults from these fields. Also here: the keyfile's
`Credentials` (a field of `Config`) and `mask`, which is how a secret is ever shown.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

# S3's own limits (AWS documentation; SeaweedFS enforces the minimum part size too).
S3_MIN_PART = 5 * MiB
S3_MAX_PART = 5 * GiB
S3_MAX_PARTS = 10_000
S3_MAX_PUT = 5 * GiB
S3_MAX_KEY_BYTES = 1024
S3_MAX_OBJECT = S3_MAX_PARTS * S3_MAX_PART  # 48.8 TiB: the most one multipart upload holds
# Parts per stage of the part schedule after its first stage (schedule.py), at most.
LATER_STAGE_PARTS = 100


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    source: str

    def __repr__(self) -> str:
        return f"Credentials({mask(self.access_key)}, secret hidden, from {self.source})"


def mask(secret: str) -> str:
    return secret[:4] + "*" * max(4, len(secret) - 8) + secret[-4:] if len(secret) > 8 \
        else "*" * len(secret)


@dataclass(frozen=True)
class Config:
    bucket: str
    mountpoint: str
    prefix: str = ""  # "" or ends with "/"
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    keyfile: str | None = None
    # From the keyfile; never printed (repr hides it) nor logged.
    credentials: Credentials | None = dataclasses.field(default=None, repr=False,
                                                        compare=False)

    read_only: bool = False
    foreground: bool = False
    debug: bool = False
    log_file: str | None = None
    allow_other: bool = False

    uid: int = dataclasses.field(default_factory=os.getuid)
    gid: int = dataclasses.field(default_factory=os.getgid)
    file_mode: int = 0o644
    dir_mode: int = 0o755
    dir_suffix: str = "/"

    # Metadata: how long the kernel and we trust what S3 said (seconds). Small, because other
    # clients may write to the bucket; 0 disables caching.
    metadata_ttl: float = 1.0
    # Where a file's mode, owner and times come from: "object" (its metadata, s3fs's and
    # rclone's convention: a HEAD per listed file) or "listing" (what a LIST says: none, no
    # HEAD; the mount's options and Last-Modified), as rclone's --use-server-modtime.
    attrs_from: str = "object"

    # Writes
    part_size: int = 6 * MiB  # the default budget holds four: part 1, one filling, two sent
    part_growth_every: int = 1000  # parts of the first stage (later ones: at most 100)
    max_memory: int = 24 * MiB  # bytes held in part buffers, across all open files
    upload_concurrency: int = 4
    # At start, abort incomplete multipart uploads at least this old (seconds); None: keep.
    abort_stale_uploads: float | None = None
    # Additional checksum (see checksum.py): "auto" = CRC32C only where ETags are no MD5s.
    checksum: str = "auto"
    # How uploads are proven: "auto" = ETags (MD5s) or additional checksums, whichever the
    # server's answers to the probe at mount start can prove; "read-back" also reads every
    # object back after completing it and compares MD5s (works on any server).
    verify: str = "auto"

    # Renames: a directory rename copies every key under it; refused (EXDEV) above this.
    rename_max_keys: int = 10_000

    # Reads
    read_ahead_max: int = 32 * MiB  # per open file
    read_memory: int = 128 * MiB  # prefetched bytes across all open files
    verify_reads: bool = True  # hash whole-object reads and compare with the MD5 (reader.py)

    # Talking to S3
    connect_timeout: float = 5.0
    request_timeout: float = 30.0  # socket read timeout of one request
    retries: int = 8  # attempts after the first, for retryable failures
    read_deadline: float = 60.0  # a read gives up (EIO) after this long
    write_deadline: float = 600.0  # a part upload gives up after this long
    sdk_requests: bool = False  # True: boto3 sends every request (no lean path, wire.py)
    max_connections: int = 16
    stall_warning: float = 5.0  # a request unanswered this long is logged (once) as a stall
    metrics: str | None = None  # HOST:PORT serving Prometheus metrics (metrics.py), or None

    @property
    def listing_attrs(self) -> bool:
        """--attrs-from listing: a listed file is shown as the LIST says, with no HEAD."""
        return self.attrs_from == "listing"
