"""The data pipeline: corpus sources, tokenizer, the pre-tokenized token store and the training-window order.

`prepare(source, out_dir)` turns a corpus into a token store; training opens it with `TokenStore.open` and
draws windows in the order given by `WindowSampler`.
"""

from cocomix.data.corpus import Document, iter_documents, split_documents
from cocomix.data.prepare_store import prepare
from cocomix.data.sampler import WindowSampler
from cocomix.data.store import TokenStore, check_vocab
from cocomix.data.tokenizer import TextTokenizer, load_tokenizer, train_bpe

__all__ = [
    "Document",
    "TextTokenizer",
    "TokenStore",
    "WindowSampler",
    "check_vocab",
    "iter_documents",
    "load_tokenizer",
    "prepare",
    "split_documents",
    "train_bpe",
]
