"""Token data: the shard format (writer, reader), training-window sampler and `prepare` CLI."""

from grokcopy.data.sampler import WindowSampler
from grokcopy.data.shards import ShardFormatError, TokenDataset, token_dtype, write_shards

__all__ = ["ShardFormatError", "TokenDataset", "WindowSampler", "token_dtype", "write_shards"]
