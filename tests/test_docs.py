"""The docs state what the code does."""

from __future__ import annotations

from pathlib import Path

from s3mount.config import Config
from s3mount.schedule import PartSchedule, describe

ROOT = Path(__file__).resolve().parent.parent


def test_readme_part_size_table_matches_the_schedule() -> None:
    table = describe(PartSchedule(), memory=Config("b", "/m").max_memory)
    assert table in (ROOT / "README.md").read_text()


def test_readme_defaults_match_the_cli() -> None:
    from s3mount.options import mount_parser

    ns = mount_parser().parse_args(["b", "/m"])
    readme = (ROOT / "README.md").read_text()
    assert ns.part_size == 6 << 20 and "| `--part-size N` | `6M` |" in readme
    assert ns.max_memory == 24 << 20 and "| `--max-memory N` | `24M` |" in readme
    assert ns.upload_concurrency == 4 and "| `--upload-concurrency N` | `4` |" in readme
    assert ns.checksum == "auto" and "| `--checksum A` | `auto` |" in readme
    assert ns.metadata_ttl == 1.0 and "| `--metadata-ttl S` | `1` |" in readme


def test_semantics_names_only_tests_that_exist() -> None:
    import re

    text = (ROOT / "docs" / "SEMANTICS.md").read_text()
    named = re.findall(r"`(test_\w+\.py)::(test_\w+)(\*?)`", text)
    assert len(named) > 50
    for file, test, star in named:
        source = (ROOT / "tests" / file).read_text()
        pattern = rf"def {test}\w*\(" if star else rf"def {test}\("
        assert re.search(pattern, source), f"{file}::{test} is named but does not exist"
