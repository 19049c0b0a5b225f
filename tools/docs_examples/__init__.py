"""The worked examples of each doc, one module per doc: attention, embeddings, layers, tokenization, training.

Each module's BLOCKS maps a block name to a function that returns the markdown the doc embeds between
`<!-- explain:NAME -->` and `<!-- /explain -->` (see tools.explain).
"""
