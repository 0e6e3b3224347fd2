"""The errors data/ raises for problems a person can act on: bad input, a bad corpus, a corpus too small.

All derive from `DataError` (a ValueError), so a command line can catch grokcopy's data errors in one
place and print one `error:` line. `ShardFormatError` (data/shards.py) is one of them too.
"""

from __future__ import annotations


class DataError(ValueError):
    """A data problem the message explains: it names the file or flag and what to do."""


class PrepareError(DataError):
    """Bad input to `data.prepare` (a flag, an input file, the output directory): a usage error."""


class CorpusError(DataError):
    """A prepared corpus directory that cannot be trained on as it is (missing, edited, inconsistent)."""


class CorpusTooSmallError(CorpusError):
    """A corpus split holds too few tokens for one training window on every rank."""
