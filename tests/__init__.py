"""Tests for s3mount, and the SeaweedFS server they run against (tests.seaweed)."""
