"""Token data: the shard format (writer, reader), corpus checks, training-window sampler and `prepare` CLI."""

from grokcopy.data.corpus import Corpus, open_corpus
from grokcopy.data.errors import CorpusError, CorpusTooSmallError, DataError, PrepareError
from grokcopy.data.sampler import WindowSampler
from grokcopy.data.shards import ShardFormatError, TokenDataset, token_dtype, write_shards

__all__ = [
    "Corpus", "CorpusError", "CorpusTooSmallError", "DataError", "PrepareError", "ShardFormatError", "TokenDataset",
    "WindowSampler", "open_corpus", "token_dtype", "write_shards",
]
