"""gradtune's tests. A package, so that test files in sub-folders (``tests/workloads/``) may
share a basename with another test file."""
