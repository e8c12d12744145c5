"""Tests of :mod:`gradtune.workloads`, one file per module."""
