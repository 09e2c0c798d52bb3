"""FineWeb and FineWeb-Edu (llm.c dev/data/fineweb.py): the sample-10BT / sample-100BT subsets.

The hub's parquet files in sorted order (the order the datasets library loads them), every document
EOT (llama-3: BOS) + tokens of its "text", cut every shard_size tokens into {name}_val_000000.bin
(the first shard) and {name}_train_%06d.bin; name is fineweb or edu_fineweb.
"""

from llmc.core.errors import LlmcError
from llmc.data import PreproConfig, Written
from llmc.data.shards import file_pieces, tokenize, write_sharded
from llmc.data.sources import hub_files, local_files, parquet_rows

REPOS = {"fineweb": "HuggingFaceFW/fineweb", "edu_fineweb": "HuggingFaceFW/fineweb-edu"}


def prepare(cfg: PreproConfig) -> list[Written]:
    if cfg.input is not None:
        files = local_files(cfg.input)
    else:  # sample-10BT lives in sample/10BT/*.parquet
        files = hub_files(REPOS[cfg.name], f"sample/{cfg.version}T/*.parquet")
    tokens = tokenize(file_pieces(files, ("text",)), cfg.workers, parquet_rows(files), cfg.name, cfg.progress,
                      cfg.tokenizer)
    written = write_sharded(tokens, cfg.out_dir, cfg.name, cfg.shard_size, cfg.model_desc)
    if not written:
        raise LlmcError(f"{cfg.input or files[0].parent}: no documents")
    return written
