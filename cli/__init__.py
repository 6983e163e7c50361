"""The `shardspec` command line: a thin shell over the public API.

This top-level `cli/` folder is installed as `shardspec.cli` (`pyproject.toml`
maps it), so the `shardspec` command is `shardspec.cli.main:main` and
`python -m shardspec.cli.main` runs it. Each command parses its flags, calls
the library and prints; nothing here is imported by the library.
"""
